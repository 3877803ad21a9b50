"""A distributed zoo build started from a broken launcher environment: one line, exit 2, no output."""

from __future__ import annotations

import pytest
from helpers.distributed_support import SLURM, TORCHRUN, launcher_env  # noqa: F401 - a fixture

from spider.errors import SpiderError
from spider.pipeline.distributed import detect
from spider.zoo.__main__ import main


@pytest.mark.parametrize("variables, message", [
    ({**SLURM, "SLURM_NTASKS_PER_NODE": None}, r"^SLURM environment: .*--ntasks-per-node"),
    ({**SLURM, "SLURM_PROCID": "x"}, r"^slurm environment: missing or non-integer variable"),
    ({**SLURM, "SLURM_PROCID": "7"}, r"^slurm environment: rank 7 outside world size 4$"),
    ({**TORCHRUN, "WORLD_SIZE": "two"}, r"^torchrun environment: missing or non-integer variable"),
    ({**TORCHRUN, "RANK": "-1"}, r"^torchrun environment: rank -1 outside world size 2$"),
])
def test_bad_launcher_variables_are_one_line_errors(launcher_env, variables, message):
    launcher_env({k: v for k, v in variables.items() if v is not None})
    with pytest.raises(SpiderError, match=message) as err:
        detect()
    assert "\n" not in str(err.value)


def test_the_cli_exits_2_before_writing_anything(launcher_env, tmp_path, capsys):
    launcher_env({**SLURM, "SLURM_PROCID": "9"})
    out = tmp_path / "zoo"
    assert main(["build", "tiny", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "error: slurm environment: rank 9 outside world size 4\n"
    assert not out.exists()
