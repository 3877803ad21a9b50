"""Composition, overrides and validation of the ``spider.fit`` configuration (spider.config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from spider.config import GROUPS, FitConfig, as_config, compose, config_dir, default_config, load_saved, to_yaml
from spider.errors import ConfigError
from spider.fit import main


def test_default_composition_uses_the_files_named_in_fit_yaml(compose_config):
    cfg = compose_config()
    assert cfg.data.name == "minizoo"
    assert cfg.model.scorer == "token"
    assert cfg.logger.name == "wandb" and cfg.logger.offline is True
    # run_dir interpolates the chosen group names and is resolved in place.
    assert cfg.run_dir == "runs/minizoo-token"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_file_composes(group):
    for path in sorted((config_dir() / group).glob("*.yaml")):
        cfg = compose([f"{group}={path.stem}"])
        assert cfg[group].name == path.stem


def test_group_choice_then_field_overrides(compose_config):
    cfg = compose_config("model.lr=0.5", "data=tiny", "trainer.devices=2", "data.models=[a,b]", "seed=7")
    assert cfg.data.name == "tiny" and cfg.data.batch_size == 4  # from configs/data/tiny.yaml
    assert cfg.model.lr == 0.5 and isinstance(cfg.model.lr, float)
    assert cfg.trainer.devices == 2 and cfg.data.models == ["a", "b"] and cfg.seed == 7


def test_group_file_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((config_dir() / "data" / "tiny.yaml").read_text() + "batch_size: 3\nnum_label_tasks: 5\n")
    cfg = compose([f"data={path}"])
    assert cfg.data.batch_size == 3 and cfg.data.num_label_tasks == 5 and cfg.data.name == "mine"


def test_a_group_file_extends_another_and_states_only_what_differs(tmp_path):
    zoo40, mini = compose(["data=zoo40"]), compose(["data=minizoo"])
    assert (zoo40.data.zoo, zoo40.data.name) == ("zoo40", "zoo40")
    differing = {k for k in mini.data if k not in ("zoo", "name") and zoo40.data[k] != mini.data[k]}
    stated = set(OmegaConf.load(config_dir() / "data" / "zoo40.yaml")) - {"extends", "zoo"}
    assert differing == stated  # every other field is the mini zoo's
    path = tmp_path / "mine.yaml"
    path.write_text("extends: tiny\nbatch_size: 3\n")
    cfg = compose([f"data={path}"])
    assert cfg.data.batch_size == 3 and cfg.data.num_label_tasks == compose(["data=tiny"]).data.num_label_tasks
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="'extends' must name another data file without a cycle"):
        compose([f"data={loop}"])


def test_a_group_file_that_leaves_a_field_unset_is_an_error(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("batch_size: 3\n")
    with pytest.raises(ConfigError, match=r"^config key 'data\.general': no value"):
        compose([f"data={path}"])


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.lrr=1", ["'model.lrr'", "model.lr"]),
        ("foo=1", ["'foo'", "known keys"]),
        ("data.synthetic.nope=3", ["'data.synthetic.nope'"]),
    ],
)
def test_unknown_keys_are_rejected_with_their_name(override, fragments):
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert "\n" not in message and message.startswith("unknown config key")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("model.lr=abc", "model.lr", "float"),
        ("data.batch_size=1.5", "data.batch_size", "int"),
        ("trainer.deterministic=maybe", "trainer.deterministic", "bool"),
        ("data.synthetic.num_models=x", "data.synthetic.num_models", "int"),
        ("trainer.gradient_clip_val=abc", "trainer.gradient_clip_val", "float or null"),
        ("data.baselines=3", "data.baselines", "list of str"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(override, key, expected):
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert "\n" not in message
    assert f"'{key}'" in message and f"expected {expected}" in message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["lr"], "expected key=value"),
        (["data=nope"], "available: "),
        (["logger.name=tensorboard"], "'logger.name'"),
        (["model.dropout=1.5"], "'model.dropout'"),
        (["trainer.devices=many"], "'trainer.devices'"),
        (["data.batch_size=0"], "'data.batch_size'"),
        (["data.class_keep=0"], "'data.class_keep'"),
        (["data.class_keep=nan"], "'data.class_keep'"),
        # the shipped minizoo data config sets a rank prior: a trained-with prior must clear it
        (["data=minizoo", "model.prior=finetune_mean"], "'data.rank_prior': expected null when model.prior"),
    ],
)
def test_bad_values_and_overrides(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        compose(overrides)
    assert fragment in str(info.value)


def test_a_missing_config_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no fit.yaml"):
        compose([], root=tmp_path)


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_schema_defaults_never_compete_with_the_yaml_files():
    """A schema default is MISSING or "not set" (None / empty), and no YAML file of its group
    contradicts a non-MISSING one it leaves in place; so the YAML files are the only source."""
    schema = dict(_leaves(OmegaConf.to_container(default_config())))
    for key, value in schema.items():
        assert value in ("???", None, [], {}), f"{key} has a schema default {value!r}"
    for group in GROUPS:
        for path in sorted((config_dir() / group).glob("*.yaml")):
            composed = dict(_leaves(OmegaConf.to_container(compose([f"{group}={path.stem}"]))))
            assert "???" not in composed.values(), path


def test_cli_python_dict_and_compose_resolve_the_same_config(capsys):
    from spider.config import as_config

    assert main(["--print-config"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed == compose([]) == as_config({}) == as_config(FitConfig()) == as_config(None)
    assert as_config({"model": {"scorer": "reranker"}}).model.specific_mode is None  # not the reranker file's
    assert compose(["model=reranker"]).model.specific_mode == "append"
    assert as_config({"trainer": {"max_epochs": 3}}).data.name == "minizoo"


def test_unknown_group_in_defaults_is_rejected(tmp_path):
    (tmp_path / "fit.yaml").write_text("defaults:\n  optimizer: adam\n")
    with pytest.raises(ConfigError, match="unknown group 'optimizer'"):
        compose([], root=tmp_path)


def test_saved_config_round_trips(tmp_path):
    cfg = compose(["data=tiny", "model.dim=32", "trainer.devices=auto"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert load_saved(path) == cfg


def test_as_config_accepts_dataclass_and_dict():
    assert as_config(FitConfig()).model.lr == compose().model.lr
    assert as_config({"model": {"lr": 0.25}}).model.lr == 0.25
    with pytest.raises(ConfigError, match="'model.depth'"):
        as_config({"model": {"depth": "deep"}})


def test_cli_print_config(capsys):
    assert main(["--print-config", "data=tiny", "model.lr=0.125"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.lr == 0.125 and printed.data.name == "tiny"
    assert main(["print_config=true", "seed=3"]) == 0
    assert OmegaConf.create(capsys.readouterr().out).seed == 3


@pytest.mark.parametrize("argv", [["model.lrr=1"], ["model.lr=abc"], ["--bogus"], ["data=nope"]])
def test_cli_bad_config_exits_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_config_files_exist_for_the_readme_examples():
    root = config_dir()
    for name in ("fit.yaml", "data/synthetic.yaml", "data/tiny.yaml", "model/token.yaml", "model/reranker.yaml",
                 "trainer/default.yaml", "trainer/ddp.yaml", "logger/wandb.yaml", "logger/csv.yaml",
                 "logger/none.yaml"):
        assert (root / name).is_file(), name
    assert Path(root).name == "configs"
