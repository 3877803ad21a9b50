"""The ``spider`` console command dispatches to each module's ``main``."""

from __future__ import annotations

from omegaconf import OmegaConf

from spider.cli import COMMANDS, main


def test_subcommands_run_the_module_mains(capsys):
    assert set(COMMANDS) == {"fit", "rank", "zoo", "labels", "baselines", "extract", "transfergraph", "model-score"}
    assert main(["fit", "--print-config", "data=tiny"]) == 0
    assert OmegaConf.create(capsys.readouterr().out).data.name == "tiny"
    assert main(["transfergraph", "rank", "--model", "no-such.pt", "--images", "."]) == 2
    assert capsys.readouterr().err.startswith("error: --model: no file no-such.pt")


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'nope'") and err.count("\n") == 1


def test_a_multi_line_error_is_reported_as_its_first_line(capsys, monkeypatch):
    # cli_main: whatever a SpiderError's message holds, a CLI prints one line and exits 2.
    import spider.fit
    from spider.errors import ConfigError

    def fail(cfg):
        raise ConfigError("config key 'x': bad\nTraceback-like detail")

    monkeypatch.setattr(spider.fit, "fit", fail)
    assert main(["fit", "data=tiny"]) == 2
    assert capsys.readouterr().err == "error: config key 'x': bad\n"
