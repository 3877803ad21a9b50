"""Scorer modules: shapes, masking, batched == reference path, training, ReRanker, checkpoints."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from spider.errors import ConfigError
from spider.modules import (
    ReRanker,
    ScorerInputError,
    TokenScorer,
    get_scorer,
    list_scorers,
    register_scorer,
)

M, DG, C = 6, 8, 5
DIMS = [4, 7, 3, 7, 5, 6]
SMALL = dict(dim=16, heads=2, head_hidden=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def toy_tasks(batch=3, classes=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, classes, DG, generator=gen)
    mask = torch.ones(batch, classes, dtype=torch.bool)
    mask[0, 3:] = False
    if batch > 1:
        mask[1, 4:] = False
    return tokens, mask


def toy_specific(tokens_mask, slots=2, seed=1):
    _, mask = tokens_mask
    batch = mask.shape[0]
    gen = torch.Generator().manual_seed(seed)
    models = torch.stack([torch.randperm(M, generator=gen)[:slots] for _ in range(batch)])
    tokens = torch.randn(batch, slots, mask.shape[1], max(DIMS), generator=gen)
    slot_mask = torch.ones(batch, slots, dtype=torch.bool)
    slot_mask[-1, -1] = False
    return models, tokens, slot_mask


def toy_batch(batch=8, seed=0, with_truth=False):
    """Learnable toy episodes: target scores are a fixed linear function of the mean token."""
    tokens, mask = toy_tasks(batch, seed=seed)
    weights = torch.randn(DG, M, generator=torch.Generator().manual_seed(123))
    centre = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    target = centre @ weights
    out = {"task_tokens": tokens, "task_mask": mask, "target_scores": target,
           "model_mask": torch.ones(batch, M, dtype=torch.bool)}
    out["model_mask"][0, 0] = False
    if with_truth:
        out.update(truth=target + 50.0, truth_mask=out["model_mask"].clone(),
                   target_index=torch.arange(batch) % 2)
    return out


# -- registry and construction ----------------------------------------------------------------
def test_registry_has_builtins_and_takes_a_new_subclass():
    assert {"token", "reranker"} <= set(list_scorers())
    assert get_scorer("token") is TokenScorer and get_scorer("reranker") is ReRanker

    @register_scorer("test_token_cosine")
    class CosineTokenScorer(TokenScorer):  # the docstring's worked example
        def embed_tasks(self, task_tokens):
            return super().embed_tasks(F.normalize(task_tokens, dim=-1))

    scorer = get_scorer("test_token_cosine")(num_models=M, task_dim=DG, **SMALL).eval()
    tokens, mask = toy_tasks()
    assert scorer.scorer_name == "test_token_cosine"
    assert torch.allclose(scorer(tokens, mask), scorer(tokens * 10.0, mask), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(dim=10, heads=4), "model.dim"), (dict(depth=0), "model.depth"),
     (dict(scheduler="step"), "model.scheduler"), (dict(model_names=["a"]), "model.model_names")],
)
def test_bad_hyperparameters_raise_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TokenScorer(M, DG, **kwargs)


def test_reranker_rejects_bad_dims_and_mode():
    with pytest.raises(ConfigError, match="model.model_dims"):
        ReRanker(M, DG, model_dims=[4, 4])
    with pytest.raises(ConfigError, match="model.specific_mode"):
        ReRanker(M, DG, model_dims=DIMS, specific_mode="mix")


# -- scoring ----------------------------------------------------------------------------------
def test_forward_shapes_and_input_errors():
    scorer = TokenScorer(M, DG, **SMALL)
    tokens, mask = toy_tasks()
    assert scorer(tokens, mask).shape == (3, M)
    with pytest.raises(ScorerInputError, match="task_tokens: expected last dim 8"):
        scorer(torch.zeros(3, C, DG + 1), mask)
    with pytest.raises(ScorerInputError, match="task_mask: expected a bool tensor"):
        scorer(tokens, mask.float())
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ScorerInputError, match="at least one real class"):
        scorer(tokens, empty)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("mlp_ratio", [2.0, 0.0])
def test_batched_path_equals_reference_paths_for_one_layer(norm_first, mlp_ratio):
    scorer = TokenScorer(M, DG, norm_first=norm_first, mlp_ratio=mlp_ratio, **SMALL).eval()
    tokens, mask = toy_tasks()
    batched = scorer(tokens, mask)
    assert torch.allclose(batched, scorer.forward_reference(tokens, mask), atol=1e-5)
    assert torch.allclose(batched, scorer.forward_reference(tokens, mask, loop=True), atol=1e-5)


def test_padding_classes_change_nothing():
    scorer = TokenScorer(M, DG, depth=2, **SMALL).eval()
    tokens, mask = toy_tasks()
    scores = scorer(tokens, mask)
    noisy = tokens.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), DG) * 100
    noisy[0, 4] = float("nan")
    assert torch.allclose(scores, scorer(noisy, mask), atol=1e-6)
    # the first task alone, without any padding, scores the same as padded in the batch
    real = int(mask[0].sum())
    alone = scorer(tokens[:1, :real], mask[:1, :real])
    assert torch.allclose(scores[:1], alone, atol=1e-5)


def test_gradients_reach_every_parameter():
    scorer = TokenScorer(M, DG, depth=2, **SMALL)
    batch = toy_batch()
    loss = scorer.loss_fn(scorer.score_batch(batch), batch["target_scores"], batch["model_mask"])
    loss.backward()
    missing = [n for n, p in scorer.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


# -- training ---------------------------------------------------------------------------------
def _manual_steps(module, batch, steps=40):
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("loss", ["listwise", "listmle", "listnet", "mse"])
def test_a_few_steps_decrease_the_loss(loss, monkeypatch):
    torch.manual_seed(0)
    scorer = TokenScorer(M, DG, loss=loss, lr=1e-2, dropout=0.0, **SMALL)
    monkeypatch.setattr(scorer, "log", lambda *a, **k: None)  # no Trainer attached
    batch = toy_batch()
    losses = _manual_steps(scorer, batch)
    # ListNet's minimum is the entropy of the target distribution, reached at scores = targets
    floor = scorer.loss_fn(batch["target_scores"], batch["target_scores"], batch["model_mask"])
    floor = floor.item() if loss == "listnet" else 0.0
    assert losses[-1] - floor < 0.7 * (losses[0] - floor)


def test_trainer_fit_logs_metrics_and_checkpoint_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    scorer = TokenScorer(M, DG, lr=1e-2, scheduler="cosine", warmup_steps=2,
                         target_names=["cifar10", "dtd"], **SMALL)
    train = DataLoader([toy_batch(seed=s) for s in range(4)], batch_size=None)
    val = DataLoader([toy_batch(seed=9, with_truth=True)], batch_size=None)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(scorer, train_dataloaders=train, val_dataloaders=val)
    metrics = trainer.callback_metrics
    for key in ["val/wtau_paper", "val/wtau_symmetric", "val/pearson", "val/top1_regret",
                "val/wtau_paper/cifar10", "val/top1_regret/dtd", "val/loss", "train/loss"]:
        assert key in metrics, key
    assert -1.0 <= float(metrics["val/wtau_paper"]) <= 1.0

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["target_names"] == ["cifar10", "dtd"]
    restored = TokenScorer.load_from_checkpoint(path, weights_only=True).eval()
    tokens, mask = toy_tasks()
    assert torch.equal(restored(tokens, mask), scorer.eval()(tokens, mask))


def test_state_dict_round_trip_with_weights_only(tmp_path):
    scorer = ReRanker(M, DG, model_dims=DIMS, specific_mode="append", **SMALL).eval()
    torch.save({"hparams": dict(scorer.hparams), "state_dict": scorer.state_dict()},
               tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    copy = ReRanker(**saved["hparams"]).eval()
    copy.load_state_dict(saved["state_dict"])
    tokens, mask = toy_tasks()
    specific = toy_specific((tokens, mask))
    assert torch.equal(copy(tokens, mask, *specific), scorer(tokens, mask, *specific))


# -- ReRanker ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["replace", "append"])
def test_reranker_specific_path_equals_reference_and_touches_only_its_pairs(mode):
    scorer = ReRanker(M, DG, model_dims=DIMS, specific_mode=mode, **SMALL).eval()
    tokens, mask = toy_tasks()
    models, specific, slot_mask = toy_specific((tokens, mask))
    general = scorer(tokens, mask)
    mixed = scorer(tokens, mask, models, specific, slot_mask)
    reference = scorer.forward_reference(tokens, mask, models, specific, slot_mask)
    assert torch.allclose(mixed, reference, atol=1e-5)
    assert torch.allclose(general, scorer.forward_reference(tokens, mask, loop=True), atol=1e-5)
    touched = torch.zeros_like(general, dtype=torch.bool)
    for b in range(models.shape[0]):
        touched[b, models[b][slot_mask[b]]] = True
    assert torch.equal(mixed[~touched], general[~touched])
    assert torch.all(mixed[touched] != general[touched])

    # padded slots, padded classes and feature entries beyond dims[m] are ignored
    noisy = specific.clone()
    noisy[~slot_mask] = float("nan")
    noisy[0][:, 3:] = 1e6
    for b in range(models.shape[0]):
        for s in range(models.shape[1]):
            noisy[b, s, :, DIMS[models[b, s]]:] = 1e6
    assert torch.allclose(scorer(tokens, mask, models, noisy, slot_mask), mixed, atol=1e-5)
    # narrower tokens are zero-padded to Dmax
    trimmed = specific[..., :5].clone()
    wide = F.pad(trimmed, (0, max(DIMS) - 5))
    assert torch.allclose(scorer(tokens, mask, models, trimmed, slot_mask),
                          scorer(tokens, mask, models, wide, slot_mask))


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_reranker_trains_with_specific_tokens(mode, monkeypatch):
    torch.manual_seed(0)
    scorer = ReRanker(M, DG, model_dims=DIMS, specific_mode=mode, lr=1e-2, dropout=0.0, **SMALL)
    monkeypatch.setattr(scorer, "log", lambda *a, **k: None)
    batch = toy_batch()
    models, specific, slot_mask = toy_specific((batch["task_tokens"], batch["task_mask"]))
    batch.update(specific_models=models, specific_tokens=specific, specific_mask=slot_mask)
    before = scorer.specific_weight.detach().clone()
    losses = _manual_steps(scorer, batch, steps=30)
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.equal(before, scorer.specific_weight)
    # rows beyond a model's feature width never move away from zero
    assert torch.all(scorer.specific_weight[~scorer.specific_dim_mask] == 0)


def test_reranker_rejects_bad_specific_inputs():
    scorer = ReRanker(M, DG, model_dims=DIMS, **SMALL)
    tokens, mask = toy_tasks()
    models, specific, slot_mask = toy_specific((tokens, mask))
    duplicate = models.clone()
    duplicate[0, 1] = duplicate[0, 0]
    with pytest.raises(ScorerInputError, match="appears twice"):
        scorer(tokens, mask, duplicate, specific, slot_mask)
    with pytest.raises(ScorerInputError, match="model indices in"):
        scorer(tokens, mask, models + M, specific, slot_mask)
    with pytest.raises(ScorerInputError, match="specific_tokens: expected shape"):
        scorer(tokens, mask, models, specific[:, :, :2], slot_mask)
    with pytest.raises(ScorerInputError, match="specific_tokens: required"):
        scorer(tokens, mask, models)


def test_rerank_rescores_the_general_top_k_and_fuses_the_scores():
    torch.manual_seed(3)
    scorer = ReRanker(M, DG, model_dims=DIMS, rerank_weight=0.5, **SMALL).train()
    tokens, mask = toy_tasks(batch=1)
    calls = []

    def specific_tokens_fn(indices):
        calls.append(indices.tolist())
        gen = torch.Generator().manual_seed(7)
        return torch.randn(len(indices), C, max(DIMS), generator=gen) * 3

    result = scorer.rerank(tokens[0], mask[0], 3, specific_tokens_fn)
    assert scorer.training  # mode restored
    general_order = torch.argsort(result.general_scores, descending=True).tolist()
    assert calls == [general_order[:3]]
    order = result.order.tolist()
    assert sorted(order) == list(range(M))
    assert torch.all(result.scores[result.order[:-1]] >= result.scores[result.order[1:]])  # one scale
    assert result.rescored.sum() == 3 and set(torch.nonzero(result.rescored).flatten().tolist()) == set(general_order[:3])
    # Not re-scored: the general z-score; re-scored: half of it plus half of the specific z-score.
    scorer.eval()
    general = result.general_scores
    z = (general - general.mean()) / general.std(unbiased=False)
    unchanged = ~result.rescored
    assert torch.allclose(result.scores[unchanged], z[unchanged], atol=1e-6)
    top = torch.tensor(general_order[:3])
    specific = scorer(tokens[:1], mask[:1], top[None], specific_tokens_fn(top)[None])[0, top]
    expected = 0.5 * z[top] + 0.5 * (specific - general.mean()) / general.std(unbiased=False)
    assert torch.allclose(result.scores[top], expected, atol=1e-5)

    plain = scorer.rerank(tokens[0], None if mask[0].all() else mask[0], 0, specific_tokens_fn)
    assert plain.order.tolist() == general_order and len(calls) == 2
    everything = scorer.rerank(tokens[0], mask[0], 99, specific_tokens_fn)
    assert len(calls[-1]) == M and bool(everything.rescored.all())


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_reranker_with_two_layers_ignores_padding_and_keeps_other_pairs(mode):
    scorer = ReRanker(M, DG, model_dims=DIMS, specific_mode=mode, depth=2, **SMALL).eval()
    tokens, mask = toy_tasks()
    models, specific, slot_mask = toy_specific((tokens, mask))
    mixed = scorer(tokens, mask, models, specific, slot_mask)
    noisy_tokens, noisy_specific = tokens.clone(), specific.clone()
    noisy_tokens[~mask] = 1e3
    noisy_specific[0][:, 3:] = float("nan")
    assert torch.allclose(scorer(noisy_tokens, mask, models, noisy_specific, slot_mask), mixed,
                          atol=1e-5)
    general = scorer(tokens, mask)
    untouched = torch.ones_like(general, dtype=torch.bool)
    for b in range(models.shape[0]):
        untouched[b, models[b][slot_mask[b]]] = False
    assert torch.equal(mixed[untouched], general[untouched])
