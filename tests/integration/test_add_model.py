"""``spider zoo add-model`` on a fake-digits zoo: a re-ranker trained on 2 PTMs gets the third.

Every stage runs (the third PTM's features and bank runs were deleted after the build): the new
checkpoint ranks 3 PTMs, the old PTMs' scores and every frozen weight are unchanged, the new token
and projection moved, the derived label cache equals one built from scratch, and the input
checkpoint is untouched.
"""

import numpy as np
import pytest
import torch

from helpers.add_model_support import NEW, OLD, sha256, trained_two_of_three, use_recipe
from spider.datamodules.label_cache import open_label_cache
from spider.modules.scorer_registry import load_scorer
from spider.pipeline.labelling import build_label_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def added(tmp_path_factory):
    from spider.incremental import add_model

    zoo = trained_two_of_three(tmp_path_factory)
    before = sha256(zoo.checkpoint)
    out = tmp_path_factory.mktemp("added") / "three.ckpt"
    with pytest.MonkeyPatch.context() as mp:
        use_recipe(mp, zoo.data_dir)
        report = add_model(zoo.zoo_dir, zoo.checkpoint, NEW, out, epochs=2)
    return zoo, report, before


def test_every_stage_ran(added):
    zoo, report, _ = added
    assert report.extracted == 1 and report.bank_runs == 2 and report.labelled
    assert report.steps == 2 and np.isfinite(report.final_loss)
    assert (zoo.zoo_dir / "store" / NEW / "mnist" / "train").is_dir()


def test_new_checkpoint_ranks_three_with_old_scores_frozen(added, one_torch_thread):
    zoo, report, before = added
    assert sha256(zoo.checkpoint) == before  # the input checkpoint is never rewritten
    old, new = load_scorer(zoo.checkpoint), load_scorer(report.checkpoint)
    assert new.spider_info["model_names"] == [*OLD, NEW] and new.hparams.model_names == [*OLD, NEW]
    assert new.num_models == 3 and len(new.spider_info["model_dims"]) == 3
    for key, value in old.state_dict().items():
        grown = new.state_dict()[key]
        if grown.shape == value.shape:
            assert torch.equal(grown, value), f"{key} changed"
        else:
            assert torch.equal(grown[tuple(slice(0, n) for n in value.shape)], value), f"old rows of {key} changed"
    # the new rows were trained: the token left its start (the mean of the old tokens)
    assert not torch.allclose(new.model_tokens[2], old.model_tokens.mean(0))
    assert not torch.equal(new.specific_bias[2], torch.zeros_like(new.specific_bias[2]))
    torch.manual_seed(0)
    x, mask = torch.randn(4, 5, old.hparams.task_dim), torch.ones(4, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(new(x, mask)[:, :2], old(x, mask))


def test_derived_labels_equal_a_fresh_build(added, tmp_path):
    _, report, _ = added
    derived = open_label_cache(report.label_cache)
    config_path = report.label_cache
    from spider.datamodules.label_cache import LabelConfig, TaskConfig

    identity = derived.identity
    config = LabelConfig(store=str(_store_of(report)), general_encoder=identity["general_encoder"],
                         models=tuple(identity["models"]), pool=tuple(identity["pool"]), split=identity["split"],
                         task=TaskConfig(**identity["task"]), seed=identity["seed"],
                         baselines=tuple(identity["baselines"]), aggregator=identity["aggregator"],
                         shard_size=identity["shard_size"])
    build_label_cache(config, tmp_path / "fresh", derived.num_tasks, progress=False)
    fresh = open_label_cache(tmp_path / "fresh", derived.num_tasks, config)
    assert fresh.config_hash == derived.config_hash and derived.models == [*OLD, NEW], config_path
    np.testing.assert_array_equal(fresh.raw, derived.raw)
    np.testing.assert_array_equal(fresh.scores, derived.scores)


def _store_of(report):
    from pathlib import Path

    from spider.pipeline.build_manifest import read_manifest

    return read_manifest(Path(report.label_cache).parent.parent)["data"]["store"]


def test_bank_table_has_the_new_column(added):
    from spider.datamodules.finetune_bank import open_bank

    zoo, report, _ = added
    bank = open_bank(report.finetune_bank)
    assert bank.models == [*OLD, NEW] and np.isfinite(bank.accuracy).all()
    np.testing.assert_array_equal(bank.accuracy[:, :2], open_bank(zoo.zoo_dir / "bank", OLD).accuracy)
    assert np.isfinite(bank.test_nll).all()
    np.testing.assert_array_equal(bank.test_nll[:, :2], open_bank(zoo.zoo_dir / "bank", OLD).test_nll)
