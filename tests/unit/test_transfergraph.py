"""TransferGraph on a synthetic history: link prediction follows task similarity, save/load, features."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spider.errors import SpiderError
from spider.transfergraph import HParams, PTMMeta, TransferGraph, fit, load
from spider.transfergraph.model import chamfer_similarity, standardise_rows, _unit_sets

MODELS = [f"ptm{i}" for i in range(6)]
META = {m: PTMMeta("convnet" if i % 2 else "vit", "domain_a" if i < 3 else "domain_b", 1000 * (i + 1))
        for i, m in enumerate(MODELS)}
FAST = HParams(dim=8, layers=2, topk=3, steps=150, seed=0)


def _task(rng: np.random.Generator, domain: int, classes: int = 5, dim: int = 12) -> torch.Tensor:
    """Class centres of a task of ``domain`` 0 or 1: every class near that domain's direction."""
    base = np.zeros(dim)
    base[domain * (dim // 2):(domain + 1) * (dim // 2)] = 3.0
    return torch.as_tensor(base + rng.normal(0, 0.5, size=(classes, dim)), dtype=torch.float32)


def history(seed: int = 0, tasks: int = 16):
    """PTMs 0-2 fine-tune best on domain-0 tasks, PTMs 3-5 on domain-1 tasks."""
    rng = np.random.default_rng(seed)
    domains = np.arange(tasks) % 2
    tokens = [_task(rng, int(d), classes=int(rng.integers(3, 8))) for d in domains]
    quality = np.where((np.arange(6)[None] < 3) == (domains[:, None] == 0), 80.0, 50.0)
    accuracy = quality + rng.normal(0, 3, size=quality.shape) + np.arange(6)[None]  # a slight trend within a group
    return SimpleNamespace(models=MODELS, accuracy=accuracy), tokens


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    bank, tokens = history()
    return fit(bank, tokens, META, FAST)


def test_a_new_task_gets_the_ptms_that_did_well_on_similar_tasks(fitted):
    rng = np.random.default_rng(7)
    pred = fitted.predict([_task(rng, 0), _task(rng, 1), _task(rng, 0, classes=9)])
    assert pred.shape == (3, 6) and np.isfinite(pred).all()
    for row, good in ((pred[0], {0, 1, 2}), (pred[1], {3, 4, 5}), (pred[2], {0, 1, 2})):
        assert set(np.argsort(-row)[:3].tolist()) == good


def test_training_lowers_the_loss_and_is_deterministic(fitted):
    bank, tokens = history()
    again = fit(bank, tokens, META, FAST)
    losses = again.train()  # continue training: the loss keeps lower than at the start of the first fit
    rng = np.random.default_rng(1)
    task = [_task(rng, 1)]
    fresh = fit(bank, tokens, META, FAST)
    np.testing.assert_array_equal(fresh.predict(task), fitted.predict(task))
    assert np.mean(losses[-20:]) < 0.5
    assert fitted.info["train_seconds"] > 0


def test_save_and_load_give_the_same_predictions(fitted, tmp_path):
    path = tmp_path / "tg.pt"
    fitted.info["zoo_dir"] = "/somewhere"
    fitted.save(path)
    loaded = load(path)
    assert isinstance(loaded, TransferGraph)
    assert loaded.models == MODELS and loaded.metadata == META and loaded.hparams == FAST
    assert loaded.info["zoo_dir"] == "/somewhere"
    rng = np.random.default_rng(3)
    tasks = [_task(rng, 0), _task(rng, 1, classes=2)]
    np.testing.assert_allclose(loaded.predict(tasks), fitted.predict(tasks), rtol=0, atol=1e-12)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically


def test_targets_are_ranked_independently(fitted):
    rng = np.random.default_rng(5)
    tasks = [_task(rng, 0), _task(rng, 1)]
    together = fitted.predict(tasks)
    alone = np.concatenate([fitted.predict([t]) for t in tasks])
    np.testing.assert_allclose(together, alone, atol=1e-12)
    assert fitted.predict([]).shape == (0, 6)


def test_chamfer_similarity_is_symmetric_and_one_on_identical_sets():
    rng = np.random.default_rng(0)
    tasks = [torch.as_tensor(rng.normal(size=(c, 4))) for c in (2, 5, 3)]
    sets = _unit_sets(tasks, torch.zeros(4, dtype=torch.float64))
    sim = chamfer_similarity(sets, sets)
    torch.testing.assert_close(sim, sim.T)
    torch.testing.assert_close(sim.diagonal(), torch.ones(3, dtype=torch.float64))
    assert (sim <= 1 + 1e-12).all() and (sim >= -1 - 1e-12).all()
    # A set's similarity to a superset of itself is above its similarity to an unrelated set.
    sup = _unit_sets([torch.cat([tasks[0], tasks[1]])], torch.zeros(4, dtype=torch.float64))
    assert chamfer_similarity(sets, sup)[0, 0] > sim[0, 2]


def test_standardised_accuracy_per_task():
    z = standardise_rows(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], dtype=torch.float64))
    torch.testing.assert_close(z[0], torch.tensor([-1.2247, 0.0, 1.2247], dtype=torch.float64), atol=1e-4, rtol=0)
    assert (z[1] == 0).all()


def test_wrong_token_dim_at_prediction_is_one_line(fitted):
    with pytest.raises(SpiderError, match="dim 5, TransferGraph was fitted on .* dim 12") as info:
        fitted.predict([torch.zeros(3, 5)])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("values, fragment", [
    ({"dim": 0}, "dim: expected a positive integer"),
    ({"predictor": "xgboost"}, "predictor: expected one of linear, mlp"),
    ({"lr": float("nan")}, "lr: expected a finite number > 0"),
    ({"query_fraction": 1.0}, r"query_fraction: expected a finite number in \(0, 1\)"),
    ({"layers": True}, "layers: expected a positive integer"),
])
def test_bad_hyperparameters_are_rejected(values, fragment):
    with pytest.raises(SpiderError, match=fragment):
        HParams(**values)
    with pytest.raises(SpiderError, match="unknown setting"):
        HParams.from_dict({"depth": 3})
