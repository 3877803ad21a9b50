"""``zoo.json`` paths: written relative to the zoo folder, resolved against wherever it is read,
so a moved or copied zoo refers to its own files; older absolute manifests read as written."""

import json
import shutil

import pytest

from spider.errors import SpiderError
from spider.pipeline.build_manifest import read_manifest, zoo_manifest
from spider.pipeline.recipes import get_recipe


def test_written_relative_and_resolved_where_read(tmp_path, monkeypatch):
    from spider.pipeline import build_manifest

    monkeypatch.setattr(build_manifest, "param_counts", lambda recipe, out: {})  # (loads every PTM)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    manifest = zoo_manifest(get_recipe("tiny"), zoo)
    assert manifest["data"]["store"] == "store" and manifest["data"]["ground_truth"] == "ground_truth.csv"
    assert manifest["general"]["checkpoint"] == "checkpoints/general/model.pth"
    assert all(not str(m["checkpoint"]).startswith(str(tmp_path)) for m in manifest["models"])
    (zoo / "zoo.json").write_text(json.dumps(manifest))
    moved = tmp_path / "elsewhere" / "zoo"
    shutil.copytree(zoo, moved)
    read = read_manifest(moved)
    assert read["data"]["store"] == str(moved.resolve() / "store")
    assert read["data"]["label_cache"] == str(moved.resolve() / "labels")
    assert read["general"]["checkpoint"] == str(moved.resolve() / "checkpoints" / "general" / "model.pth")
    timm = [m for m in read["models"] if m["kind"] == "timm"]
    assert timm and all(m["checkpoint"].startswith(str(moved.resolve())) for m in timm)


def test_old_absolute_manifest_read_as_written(tmp_path):
    (tmp_path / "zoo.json").write_text(json.dumps({"recipe": "tiny", "data": {"store": "/data/zoo/store"}}))
    assert read_manifest(tmp_path)["data"]["store"] == "/data/zoo/store"


def test_odd_entries_are_left_to_their_readers(tmp_path):
    (tmp_path / "zoo.json").write_text(json.dumps({"models": 3, "general": "x", "alternatives": [1],
                                                   "data": {"store": "store", "ground_truth": 5}}))
    read = read_manifest(tmp_path)
    assert read["data"] == {"store": str(tmp_path.resolve() / "store"), "ground_truth": 5} and read["models"] == 3


@pytest.mark.parametrize("text", ["[1, 2]", "{not json"])
def test_bad_manifest_is_one_line_error(tmp_path, text):
    (tmp_path / "zoo.json").write_text(text)
    with pytest.raises(SpiderError, match="zoo.json"):
        read_manifest(tmp_path)
