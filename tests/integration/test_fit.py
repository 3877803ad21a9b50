"""``spider.fit``: training end to end on a tiny synthetic zoo, resume, checkpoint validation."""

from __future__ import annotations

import json

import pytest
import torch

from spider.config import load_saved
from spider.errors import ConfigError
from spider.fit import fit
from spider.modules.scorer_registry import CHECKPOINT_KEY, load_scorer
from spider.train import validate_checkpoint

# Cheapest baselines: the fit machinery, not the baselines, is under test here.
BASELINES = ["leep", "nce"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One synthetic zoo + label cache for every run of this module."""
    return tmp_path_factory.mktemp("fit-cache")


@pytest.fixture(scope="module")
def tiny(compose_config, cache_dir):
    """``tiny(run_dir, *overrides)``: the real ``data=tiny`` config, CPU, cheapest baselines."""
    return lambda run_dir, *extra: compose_config(
        "data=tiny", "logger=none", f"data.cache_dir={cache_dir}", f"run_dir={run_dir}",
        f"data.baselines=[{','.join(BASELINES)}]", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "trainer.accelerator=cpu", *extra)


@pytest.fixture(scope="module")
def trained(cache_dir, tmp_path_factory, tiny):
    run_dir = tmp_path_factory.mktemp("run")
    result = fit(tiny(run_dir, "trainer.max_epochs=2"))
    return run_dir, result


def test_fit_returns_metrics_and_writes_the_run_dir(trained):
    run_dir, result = trained
    assert result["epochs"] == 2 and result["episodes_per_second"] > 0
    # val/* from the validation target only, test/* from the test targets only.
    for key in ("val/wtau_paper", "val/wtau_symmetric", "val/wtau_paper/val0", "val/pearson"):
        assert key in result["val"]
    assert not any("target" in key for key in result["val"])
    for key in ("test/wtau_paper", "test/wtau_paper/target0", "test/wtau_symmetric/target1"):
        assert key in result["test"]
    assert not any("val0" in key for key in result["test"])
    val, test = result["tables"]["val"], result["tables"]["test"]
    assert set(test) == {"wtau_paper", "wtau_symmetric", "top1_regret"}
    # Rows: the scorer, every baseline and their aggregate, every available static prior.
    assert list(test["wtau_paper"]) == ["scorer", *BASELINES, "copeland", "label_mean"]
    assert test["top1_regret"]["scorer"]["mean"] == pytest.approx(result["test"]["test/top1_regret"], abs=1e-6)
    assert set(test["wtau_paper"]["scorer"]) == {"target0", "target1", "mean"}
    assert set(val["wtau_paper"]["scorer"]) == {"val0", "mean"}
    # The tables' scorer rows are the same weighted tau the module logged.
    assert val["wtau_paper"]["scorer"]["mean"] == pytest.approx(result["val"]["val/wtau_paper"], abs=1e-6)
    assert test["wtau_paper"]["scorer"]["mean"] == pytest.approx(result["test"]["test/wtau_paper"], abs=1e-6)
    assert test["wtau_symmetric"]["scorer"]["target1"] == pytest.approx(
        result["test"]["test/wtau_symmetric/target1"], abs=1e-6)

    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["val"] == pytest.approx(result["val"]) and saved["test"] == pytest.approx(result["test"])
    assert load_saved(run_dir / "config.yaml").trainer.max_epochs == 2


def test_checkpoint_loads_with_weights_only(trained):
    run_dir, _ = trained
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    info = state[CHECKPOINT_KEY]
    assert info["scorer"] == "token" and info["model_names"] == ["ptm00", "ptm01", "ptm02", "ptm03"]
    model = load_scorer(run_dir / "checkpoints" / "last.ckpt")
    tokens, mask = torch.randn(2, 3, info["general_dim"]), torch.ones(2, 3, dtype=torch.bool)
    assert model(tokens, mask).shape == (2, 4)


def test_validating_the_checkpoint_reproduces_the_fit_metrics(trained, cache_dir, tiny):
    run_dir, result = trained
    again = validate_checkpoint(tiny(run_dir), run_dir / "checkpoints" / "last.ckpt")
    assert again["val"] == pytest.approx(result["val"], abs=1e-6)
    assert again["test"] == pytest.approx(result["test"], abs=1e-6)
    assert (run_dir / "metrics-validate.json").is_file()


def test_existing_run_needs_resume_or_overwrite(trained, cache_dir, tiny):
    run_dir, _ = trained
    with pytest.raises(ConfigError, match="resume=true"):
        fit(tiny(run_dir))


def test_resume_gives_the_weights_of_an_uninterrupted_run(cache_dir, tmp_path, tiny):
    # Dropout is on: the per-batch reseeding must make the resumed run repeat its masks.
    common = ("model.dropout=0.2", "results_table=false")
    fit(tiny(tmp_path / "straight", "trainer.max_epochs=3", *common))
    fit(tiny(tmp_path / "resumed", "trainer.max_epochs=1", *common))
    after_one = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = fit(tiny(tmp_path / "resumed", "trainer.max_epochs=3", "resume=true", *common))
    assert resumed["epochs"] == 3

    def weights(name):
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    straight, interrupted = weights("straight"), weights("resumed")
    assert straight.keys() == interrupted.keys()
    for key in straight:
        assert torch.equal(straight[key], interrupted[key]), key
    # Not vacuous: epochs 2-3 changed the weights.
    assert any(not torch.equal(after_one[k], straight[k]) for k in straight)


def test_csv_logger_writes_metrics(cache_dir, tmp_path, tiny):
    fit(tiny(tmp_path / "csv", "logger=csv", "trainer.max_epochs=1", "results_table=false"))
    files = list((tmp_path / "csv" / "csv").rglob("metrics.csv"))
    assert files and "train/loss" in files[0].read_text().splitlines()[0]


def test_scorer_fields_it_does_not_take_are_rejected(cache_dir, tmp_path, tiny):
    with pytest.raises(ConfigError, match="'model.specific_mode': scorer 'token' does not take it"):
        fit(tiny(tmp_path / "bad", "model.specific_mode=append"))


PLUGIN = '''
import torch.nn.functional as F
from spider.modules import TokenScorer, register_scorer

@register_scorer("token_cosine_test")
class CosineTokenScorer(TokenScorer):
    """Token scorer on L2-normalised class centres (the README's worked example)."""

    def embed_tasks(self, task_tokens):
        return super().embed_tasks(F.normalize(task_tokens, dim=-1))
'''


def test_a_scorer_registered_in_a_user_module_is_trained_by_name(cache_dir, tmp_path, monkeypatch, tiny):
    (tmp_path / "my_scorers_test.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = fit(tiny(tmp_path / "plugin", "imports=[my_scorers_test]",
                      "model.scorer=token_cosine_test", "trainer.max_epochs=1",
                      "results_table=false"))
    model = load_scorer(result["checkpoint"])
    assert type(model).__name__ == "CosineTokenScorer"


def test_a_checkpoint_of_an_unregistered_scorer_names_the_module_and_imports_nothing(trained, tmp_path):
    run_dir, _ = trained
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "imported"
    (tmp_path / "evil_scorers_test.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    state[CHECKPOINT_KEY] = dict(state[CHECKPOINT_KEY], scorer="never_registered", module="evil_scorers_test",
                                 imports=["evil_scorers_test"])
    torch.save(state, tmp_path / "other.ckpt")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError) as info:
            load_scorer(tmp_path / "other.ckpt")
    finally:
        sys.path.remove(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and "'never_registered' is not registered" in message and "evil_scorers_test" in message
    assert not marker.exists()  # the module named in the file was not imported


def test_without_validation_targets_val_metrics_are_skipped_with_a_warning(cache_dir, tmp_path, capsys, tiny):
    result = fit(tiny(tmp_path / "noval", "data.val_datasets=[]", "trainer.max_epochs=1"))
    assert result["val"] == {} and result["tables"]["val"] == {}
    assert "test/wtau_paper" in result["test"]  # test targets are never used in val's place
    assert "warning: no validation targets" in capsys.readouterr().err


def test_unimportable_plugin_module_is_a_config_error(cache_dir, tmp_path, tiny):
    with pytest.raises(ConfigError, match="imports: cannot import module 'no_such_module_xyz'"):
        fit(tiny(tmp_path / "noplugin", "imports=[no_such_module_xyz]"))


def test_a_prior_on_an_unbuilt_label_cache_is_computed_from_the_built_cache(cache_dir, tmp_path, tiny):
    # The prior reads the label cache; a fresh cache must be built before the scorer is made.
    from spider.datamodules.label_cache import open_label_cache
    from spider.modules.token_scorer import standardise
    from spider.priors import PriorInputs, label_mean

    labels = tmp_path / "labels"
    cfg = tiny(tmp_path / "prior", f"data.label_cache={labels}", "model.prior=label_mean",
               "trainer.max_epochs=1", "results_table=false")
    result = fit(cfg)
    model = load_scorer(result["checkpoint"])
    cache = open_label_cache(labels, cfg.data.num_label_tasks)
    assert list(cache.models) == list(model.hparams.model_names)
    expected = standardise(label_mean(PriorInputs(cache.models, cache.scores)).tolist(), len(cache.models))
    assert torch.allclose(model.model_prior, expected)


def test_a_rank_prior_is_stored_with_the_spread_of_the_last_epoch(cache_dir, tmp_path, tiny):
    from spider.datamodules.label_cache import open_label_cache
    from spider.modules.token_scorer import standardise
    from spider.priors import PriorInputs, label_mean

    labels = tmp_path / "labels"
    cfg = tiny(tmp_path / "rank-prior", f"data.label_cache={labels}", "data.rank_prior=label_mean",
               "data.rank_prior_weight=0.5", "data.ensemble_rank_prior_weight=0.25", "trainer.max_epochs=1",
               "results_table=false")
    model = load_scorer(fit(cfg)["checkpoint"])
    assert model.hparams.ensemble_rank_prior_weight == 0.25  # what spider rank uses for a seed ensemble
    cache = open_label_cache(labels, cfg.data.num_label_tasks)
    expected = standardise(label_mean(PriorInputs(cache.models, cache.scores)).tolist(), len(cache.models))
    assert torch.allclose(model.rank_prior, expected) and model.rank_prior_weight == 0.5
    assert float(model.score_spread) > 0  # measured while training, so the prior has a scale


@pytest.mark.parametrize("extra, message", [
    (["data.rank_prior=finetune_ood_mean"], "config key 'data.rank_prior': static prior: no fine-tuning bank"),
    (["data.rank_prior=label_mean", "model.prior=label_mean"], "data.rank_prior': expected null when model.prior"),
    (["data.rank_prior=label_mean", "data.rank_prior_weight=1.0"], "data.rank_prior_weight': expected a float in"),
    (["data.rank_prior=label_mean", "data.ensemble_rank_prior_weight=-0.5"],
     "data.ensemble_rank_prior_weight': expected a float in \\[0, 1\\) or null"),
])
def test_bad_rank_priors_are_config_errors(cache_dir, tmp_path, tiny, extra, message):
    with pytest.raises(ConfigError, match=message):
        fit(tiny(tmp_path / "bad-rank-prior", *extra, "trainer.max_epochs=1"))


@pytest.mark.parametrize("value, message", [
    ("0.2", "'data.history_tokens': needs a fine-tuning bank"),  # the synthetic zoo has none
    ("-0.2", "'data.history_tokens': expected a finite float > 0 or null"),
    ("nan", "'data.history_tokens': expected a finite float > 0 or null"),
])
def test_history_tokens_need_a_bank_and_a_positive_std(trained, tmp_path, tiny, value, message):
    with pytest.raises(ConfigError, match=message):
        fit(tiny(tmp_path / "history", f"data.history_tokens={value}", "trainer.max_epochs=1"))
    assert not (tmp_path / "history" / "checkpoints").exists()


def test_a_fit_that_trains_on_its_validation_targets_reports_no_val_metrics(trained, tmp_path, tiny, capsys):
    result = fit(tiny(tmp_path / "valtasks", "data.val_targets_as_tasks=3", "trainer.max_epochs=1"))
    assert result["val"] == {} and result["tables"]["val"] == {}  # trained on: they judge nothing
    assert "test/wtau_paper" in result["test"] and not any("val0" in key for key in result["test"])
    assert "val/* metrics are skipped, and this fit decides nothing" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'data.val_targets_as_tasks': expected an int >= 0"):
        fit(tiny(tmp_path / "valtasks-bad", "data.val_targets_as_tasks=-1", "trainer.max_epochs=1"))


def test_a_checkpoint_with_a_non_finite_weight_is_refused(trained, tmp_path):
    run_dir, result = trained
    state = torch.load(result["checkpoint"], weights_only=True)
    state["state_dict"]["model_tokens"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.ckpt")
    with pytest.raises(ConfigError, match="weight 'model_tokens' holds non-finite values"):
        load_scorer(tmp_path / "nan.ckpt")
