"""Reading and writing the ground-truth CSV of the targets."""

from __future__ import annotations

import numpy as np
import pytest

from spider.datamodules.ground_truth_csv import GroundTruth, GroundTruthError, read_ground_truth, write_ground_truth
from spider.errors import SpiderError


def _write(tmp_path, text: str):
    path = tmp_path / "gt.csv"
    path.write_text(text)
    return path


def test_reads_matrix_in_file_order_with_nan_for_missing_pairs(tmp_path):
    path = _write(tmp_path, "model,dataset,accuracy,note\n"
                            "r50,pets,91.5,x\n"
                            "d201,pets,92.25,\n"
                            "r50,dtd,70\n\n")  # extra columns may be left off; (dtd, d201) unknown
    truth = read_ground_truth(path)
    assert truth.datasets == ["pets", "dtd"] and truth.models == ["r50", "d201"]
    np.testing.assert_array_equal(truth.accuracy, [[91.5, 92.25], [70.0, np.nan]])
    np.testing.assert_array_equal(truth.matrix(["dtd", "cars"], ["d201", "r50", "vit"]),
                                  [[np.nan, 70.0, np.nan], [np.nan, np.nan, np.nan]])


@pytest.mark.parametrize("text, message", [
    ("dataset,model,acc\npets,r50,1\n", r"gt.csv:1: header lacks column\(s\) accuracy"),
    ("dataset,model,accuracy\npets,r50,high\n", r"gt.csv:2: accuracy 'high' is not a number"),
    ("dataset,model,accuracy\npets,r50,nan\n", r"gt.csv:2: accuracy 'nan' is not finite"),
    ("dataset,model,accuracy\npets,r50,1\ndtd,r50,2\npets,r50,3\n",
     r"gt.csv:4: duplicate row for dataset 'pets', model 'r50' \(first on line 2\)"),
    ("dataset,model,accuracy\n,r50,1\n", r"gt.csv:2: empty dataset or model"),
    ("", r"gt.csv:1: empty file"),
    ("accuracy,dataset,model\n1,pets\n", r"gt.csv:2: expected at least 3 columns"),
    ("dataset,model,accuracy\n", r"gt.csv: no data rows"),
])
def test_malformed_files_give_one_line_errors_naming_file_and_line(tmp_path, text, message):
    with pytest.raises(GroundTruthError, match=message) as err:
        read_ground_truth(_write(tmp_path, text))
    assert isinstance(err.value, SpiderError) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(GroundTruthError, match="not found"):
        read_ground_truth(tmp_path / "absent.csv")


def test_write_then_read_roundtrips(tmp_path):
    truth = GroundTruth(["a", "b"], ["m1", "m2", "m3"], np.array([[1.5, np.nan, 3.0], [0.1, 0.2, 1 / 3]]))
    path = write_ground_truth(tmp_path / "out.csv", truth)
    again = read_ground_truth(path)
    assert again.datasets == truth.datasets and sorted(again.models) == truth.models
    # bit-exact (floats written by repr); unknown pairs stay unknown
    np.testing.assert_array_equal(again.matrix(truth.datasets, truth.models), truth.accuracy)
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(GroundTruthError, match="shape"):
        write_ground_truth(tmp_path / "bad.csv", GroundTruth(["a"], ["m"], np.zeros((2, 1))))
