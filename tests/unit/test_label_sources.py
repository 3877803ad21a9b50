"""Fine-tuning bank task splits, label sources, static priors and the scorer's prior term."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spider.datamodules.label_sources import LABEL_SOURCES, baseline_agreement, plus_targets, training_labels
from spider.datamodules.tasks import TaskSpec
from spider.errors import ConfigError, SpiderError
from spider.modules import ReRanker, ScorerInputError, TokenScorer
from spider.priors import PriorInputs, available_priors, history_embedding, list_priors, prior_scores
from spider.datamodules.finetune_bank import FinetuneBank, open_bank
from spider.pipeline.bank import BankSettings, split_task

MODELS = ["a", "b", "c", "d"]


def _spec(i: int) -> TaskSpec:
    return TaskSpec(classes=(("p", 0), ("p", 1 + i)), rows=((0, 1, 2), (3, 4, 5, 6)))


def _cache(n: int = 5) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(n, 4))
    raw = np.stack([truth, -truth, truth + 0.01 * rng.normal(size=(n, 4))], axis=1)  # [N, K=3, M]
    return SimpleNamespace(spec_texts=[_spec(i).to_json() for i in range(n)], scores=rng.normal(size=(n, 4)),
                           raw=raw, baselines=["good", "inverted", "also_good"], models=list(MODELS),
                           truth=truth)


def _bank(cache: SimpleNamespace, k: int = 3) -> FinetuneBank:
    return FinetuneBank([TaskSpec.from_json(t) for t in cache.spec_texts[:k]], list(MODELS),
                        50 + 10 * cache.truth[:k])


# ------------------------------------------------------------------------- bank splits


def test_bank_split_is_deterministic_disjoint_and_covers_every_class():
    images = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    views = {"p": SimpleNamespace(images=images)}
    spec = TaskSpec(classes=(("p", 0), ("p", 1)), rows=((0, 1, 2), (3, 4, 5, 6, 7, 8)))
    a = split_task(spec, views, 7, BankSettings())
    b = split_task(spec, views, 7, BankSettings())
    assert all(np.array_equal(x, y) for x, y in zip(a["train"].images, b["train"].images))
    assert sorted(a["test"].labels.tolist()) == [0, 1, 1] and sorted(a["train"].labels.tolist()) == [0, 0, 1, 1, 1, 1]
    seen = {int(x[0, 0]) for part in ("train", "test") for chunk in a[part].images for x in chunk}
    assert seen == {int(images[r, 0, 0]) for r in range(9)}  # every row once, nothing else
    assert len(a["val"].labels) == 0
    other = split_task(spec, views, 8, BankSettings())  # another task index draws another split
    assert any(not np.array_equal(x, y) for x, y in zip(a["test"].images, other["test"].images))


def test_bank_split_refuses_a_class_of_one_image():
    views = {"p": SimpleNamespace(images=np.zeros((3, 2, 2), np.uint8))}
    with pytest.raises(SpiderError, match="class 1 has 1 image"):
        split_task(TaskSpec(classes=(("p", 0), ("p", 1)), rows=((0, 1), (2,))), views, 0, BankSettings())


def test_bank_split_keeps_at_most_max_per_class_images():
    views = {"p": SimpleNamespace(images=np.arange(40 * 4, dtype=np.uint8).reshape(40, 2, 2))}
    spec = TaskSpec(classes=(("p", 0), ("p", 1)), rows=(tuple(range(20)), tuple(range(20, 23))))
    split = split_task(spec, views, 0, BankSettings(max_per_class=6))
    assert sorted(np.concatenate([split["train"].labels, split["test"].labels]).tolist()) == [0] * 6 + [1] * 3


@pytest.mark.parametrize("kwargs", [{"num_tasks": -1}, {"test_fraction": 0.0}, {"test_fraction": 1.0},
                                    {"max_per_class": 1}])
def test_bank_settings_are_checked(kwargs):
    with pytest.raises(SpiderError):
        BankSettings(**kwargs)


def _write_one_task_spec(folder) -> None:
    """A bank folder's ``tasks.jsonl`` with task0000 only."""
    (folder / "tasks.jsonl").write_text('{"task": "task0000", "spec": %s}\n' % json.dumps(_spec(0).to_json()))


def test_open_bank_rejects_missing_and_non_finite_files(tmp_path):
    with pytest.raises(SpiderError, match="accuracy.csv"):
        open_bank(tmp_path)
    _write_one_task_spec(tmp_path)
    (tmp_path / "accuracy.csv").write_text("dataset,model,accuracy\ntask0000,a,50\ntask0000,b,nan\n")
    with pytest.raises(SpiderError, match="not finite"):
        open_bank(tmp_path)
    (tmp_path / "accuracy.csv").write_text("dataset,model,accuracy\ntask0000,a,50\ntask0001,b,40\n")
    with pytest.raises(SpiderError, match="no spec"):
        open_bank(tmp_path)
    (tmp_path / "accuracy.csv").write_text("dataset,model,accuracy\ntask0000,a,50\ntask0000,b,40\n")
    bank = open_bank(tmp_path, ["b", "a"])
    assert bank.models == ["b", "a"] and bank.accuracy.tolist() == [[40.0, 50.0]]
    with pytest.raises(SpiderError, match="no column"):
        open_bank(tmp_path, ["z"])


# ------------------------------------------------------------------------- label sources


def test_copeland_source_is_the_cache():
    cache = _cache()
    labels = training_labels("copeland", cache)
    assert labels.spec_texts == cache.spec_texts and np.array_equal(labels.scores, cache.scores)


def test_finetune_source_uses_the_bank_tasks_only():
    cache = _cache()
    labels = training_labels("finetune", cache, _bank(cache))
    assert labels.spec_texts == cache.spec_texts[:3]
    assert np.array_equal(labels.scores, 50 + 10 * cache.truth[:3])


def test_plus_targets_appends_each_target_copies_times_after_the_labels():
    cache = _cache()
    labels = training_labels("finetune", cache, _bank(cache))
    specs, truth = [_spec(7).to_json(), _spec(8).to_json()], np.array([[1.0, 2, 3, np.nan], [4, 3, 2, 1]])
    out = plus_targets(labels, specs, truth, 2)
    assert out.spec_texts == labels.spec_texts + specs + specs and out.source == "finetune"
    np.testing.assert_array_equal(out.scores, np.concatenate([labels.scores, truth, truth]))
    assert len(labels.spec_texts) == 3  # the input is not changed


@pytest.mark.parametrize("specs, truth, copies, message", [
    ([], np.zeros((0, 4)), 1, "needs validation targets"),
    (["x"], np.zeros((1, 4)), 0, "expected an integer >= 1"),
    (["x"], np.zeros((1, 3)), 1, r"shape \(1, 3\), expected \(1, 4\)"),
])
def test_plus_targets_refuses_bad_input(specs, truth, copies, message):
    cache = _cache()
    with pytest.raises(ConfigError, match=message):
        plus_targets(training_labels("copeland", cache), specs, truth, copies)


def test_finetune_nll_source_orders_by_lowest_test_cross_entropy():
    cache = _cache()
    bank = _bank(cache)
    nll = np.exp(-cache.truth[:3])  # lower for the better PTMs
    labels = training_labels("finetune_nll", cache, FinetuneBank(bank.specs, bank.models, bank.accuracy, nll))
    assert labels.spec_texts == cache.spec_texts[:3] and labels.source == "finetune_nll"
    assert np.array_equal(labels.scores, -nll)
    assert (np.argsort(labels.scores, 1) == np.argsort(cache.truth[:3], 1)).all()
    with pytest.raises(ConfigError, match="no test_nll.csv"):
        training_labels("finetune_nll", cache, bank)  # a bank built before the measure was recorded


def test_open_bank_reads_the_test_cross_entropy_when_present(tmp_path):
    _write_one_task_spec(tmp_path)
    (tmp_path / "accuracy.csv").write_text("dataset,model,accuracy\ntask0000,a,50\ntask0000,b,40\n")
    assert open_bank(tmp_path).test_nll is None
    (tmp_path / "test_nll.csv").write_text("dataset,model,test_nll\ntask0000,a,0.5\ntask0000,b,inf\n")
    with pytest.raises(SpiderError, match="test_nll.csv:3: test_nll 'inf' is not finite"):
        open_bank(tmp_path)
    (tmp_path / "test_nll.csv").write_text("dataset,model,accuracy\ntask0000,a,0.5\n")
    with pytest.raises(SpiderError, match="header lacks column.s. test_nll"):
        open_bank(tmp_path)
    (tmp_path / "test_nll.csv").write_text("dataset,model,test_nll\ntask0000,a,0.5\n")
    with pytest.raises(SpiderError, match=r"test_nll.csv: no column for model\(s\) \['b'\]"):
        open_bank(tmp_path)
    (tmp_path / "test_nll.csv").write_text("dataset,model,test_nll\ntask0000,a,0.5\ntask0001,b,0.7\n")
    with pytest.raises(SpiderError, match="tasks differ"):
        open_bank(tmp_path)
    (tmp_path / "test_nll.csv").write_text("dataset,model,test_nll\ntask0000,a,0.5\ntask0000,b,0.75\n")
    bank = open_bank(tmp_path, ["b", "a"])
    assert bank.test_nll.tolist() == [[0.75, 0.5]] and bank.accuracy.tolist() == [[40.0, 50.0]]


def test_mixed_source_replaces_bank_tasks_and_repeats_them():
    cache = _cache()
    labels = training_labels("mixed", cache, _bank(cache), mixed_weight=3)
    assert len(labels.spec_texts) == 5 + 2 * 3
    assert np.array_equal(labels.scores[:3], 50 + 10 * cache.truth[:3])
    assert np.array_equal(labels.scores[3:5], cache.scores[3:5])
    assert labels.spec_texts[5:8] == cache.spec_texts[:3] and np.array_equal(labels.scores[8:], labels.scores[:3])
    with pytest.raises(ConfigError, match="mixed_weight"):
        training_labels("mixed", cache, _bank(cache), mixed_weight=0)


def test_selected_source_keeps_agreeing_baselines():
    cache = _cache()
    agreement = baseline_agreement(cache, _bank(cache))
    assert agreement["good"] == pytest.approx(1.0) and agreement["inverted"] == pytest.approx(-1.0)
    labels = training_labels("selected", cache, _bank(cache), selected_members=3)
    assert set(labels.members) == {"good", "also_good"}
    # the aggregate of the chosen members orders every task like the agreeing baselines
    for i in range(5):
        assert np.argmax(labels.scores[i]) == np.argmax(cache.truth[i])


@pytest.mark.parametrize("source", [s for s in LABEL_SOURCES if s != "copeland"])
def test_sources_needing_the_bank_say_so(source):
    with pytest.raises(ConfigError, match="fine-tuning bank"):
        training_labels(source, _cache(), None)


def test_a_bank_of_other_tasks_is_refused():
    cache = _cache()
    bank = _bank(cache)
    shuffled = FinetuneBank(bank.specs[::-1], bank.models, bank.accuracy)
    with pytest.raises(ConfigError, match="first tasks of the label cache"):
        training_labels("finetune", cache, shuffled)
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        training_labels("nope", cache, bank)


# ------------------------------------------------------------------------- static priors


def test_priors_score_what_they_say():
    labels = np.array([[1.0, np.nan, 3.0], [3.0, 2.0, np.nan]])
    bank = np.array([[50.0, 70.0, 60.0]])
    inputs = PriorInputs(["x", "y", "z"], labels, bank, {"x": 10, "y": 1000, "z": 100})
    assert prior_scores("label_mean", inputs).tolist() == [2.0, 2.0, 3.0]  # NaN = no label
    assert prior_scores("finetune_mean", inputs).tolist() == [50.0, 70.0, 60.0]
    assert prior_scores("param_count", inputs).tolist() == pytest.approx([1.0, 3.0, 2.0])
    assert available_priors(inputs) == ["finetune_mean", "label_mean", "param_count"]  # no domains
    assert list_priors() == ["finetune_mean", "finetune_ood_mean", "label_mean", "param_count"]


def test_out_of_domain_prior_leaves_out_each_ptms_home_tasks():
    # Bank tasks: two of digits (pool dataset "d"), one of photos ("p"), one of both.
    bank = np.array([[90.0, 50.0, 60.0], [80.0, 40.0, 70.0], [20.0, 60.0, 65.0], [70.0, 50.0, 30.0]])
    inputs = PriorInputs(["digit_cnn", "photo_cnn", "new"], bank_accuracy=bank,
                         bank_datasets=[["d"], ["d"], ["p"], ["d", "p"]],
                         dataset_domains={"d": "digits", "p": "photos"},
                         model_domains={"digit_cnn": ["digits"], "photo_cnn": ["photos"]})
    # digit_cnn: the photo task only; photo_cnn: the two digit tasks; "new" (sources unknown): all.
    assert prior_scores("finetune_ood_mean", inputs).tolist() == [20.0, 45.0, 56.25]
    assert prior_scores("finetune_mean", inputs)[0] == 65.0  # its home tasks lift the plain mean
    generalist = PriorInputs(["both"], bank_accuracy=bank[:, :1], bank_datasets=[["d"], ["d"], ["p"], ["d", "p"]],
                             dataset_domains={"d": "digits", "p": "photos"}, model_domains={"both": ["digits", "photos"]})
    assert prior_scores("finetune_ood_mean", generalist).tolist() == [65.0]  # no task outside: all count
    with pytest.raises(ConfigError, match="no source domain for pool datasets \\['p'\\]"):
        prior_scores("finetune_ood_mean", PriorInputs(["x"], bank_accuracy=bank[:, :1],
                                                      bank_datasets=[["d"], ["d"], ["p"], ["d"]],
                                                      dataset_domains={"d": "digits"}))


def test_priors_without_their_inputs_are_unavailable():
    inputs = PriorInputs(["x", "y"], labels=np.array([[1.0, np.nan]]))
    assert available_priors(inputs) == []  # y has no label, no bank, no parameter counts
    with pytest.raises(ConfigError, match="no fine-tuning bank"):
        prior_scores("finetune_mean", inputs)


def test_history_embedding_starts_ptms_that_fine_tune_alike_close():
    # PTMs 0 and 1 fine-tune alike on every task, 2 is their opposite, 3 flat at each task's mean.
    bank = np.array([[90.0, 88.0, 50.0, 70.0], [40.0, 42.0, 80.0, 60.0], [75.0, 77.0, 55.0, 66.0],
                     [np.nan, np.nan, np.nan, np.nan],  # a task without runs says nothing
                     [60.0, 60.0, 60.0, 60.0]])  # nor does one that tells no PTM apart
    out = history_embedding(bank, dim=6, std=0.2)
    assert out.shape == (4, 6) and out.std() == pytest.approx(0.2)
    assert np.allclose(out[:, 3:], 0.0)  # 3 informative tasks: rank 3 at most
    dist = lambda i, j: float(np.linalg.norm(out[i] - out[j]))  # noqa: E731
    assert dist(0, 1) < 0.2 * dist(0, 2)
    assert np.allclose(history_embedding(bank[:3], dim=6, std=0.2), out)
    # A missing run counts as the task's mean: it moves that PTM, never makes NaN.
    gappy = bank[:3].copy()
    gappy[0, 3] = np.nan
    assert np.isfinite(history_embedding(gappy, dim=2, std=1.0)).all()
    assert np.allclose(history_embedding(bank[3:], dim=2, std=1.0), 0.0)  # nothing to learn from


@pytest.mark.parametrize("bank, dim, std, message", [
    (np.ones(4), 2, 0.2, "expected bank accuracies \\[tasks, PTMs\\]"),
    (np.array([[1.0, np.inf]]), 2, 0.2, "infinite accuracy"),
    (np.ones((2, 2)), 0, 0.2, "dim >= 1"),
    (np.ones((2, 2)), 2, float("nan"), "std > 0"),
])
def test_history_embedding_refuses_bad_input(bank, dim, std, message):
    with pytest.raises(ConfigError, match=message):
        history_embedding(bank, dim, std)


def test_model_tokens_start_where_told_and_refuse_bad_values():
    scorer = TokenScorer(3, 8, dim=4)
    start = np.arange(12, dtype=np.float64).reshape(3, 4)
    scorer.start_model_tokens(start)
    assert torch.equal(scorer.model_tokens.detach(), torch.as_tensor(start, dtype=torch.float32))
    assert scorer.model_tokens.requires_grad  # still trained from there
    with pytest.raises(ScorerInputError, match="model tokens: expected shape \\[3, 4\\]"):
        scorer.start_model_tokens(np.zeros((4, 4)))
    with pytest.raises(ScorerInputError, match="model tokens: expected finite values"):
        scorer.start_model_tokens(np.full((3, 4), np.nan))


# ------------------------------------------------------------------------- scorer prior term


def _tokens(b=3, c=5, dg=8):
    torch.manual_seed(0)
    return torch.randn(b, c, dg), torch.ones(b, c, dtype=torch.bool)


def test_prior_term_adds_the_standardised_prior_with_its_weight():
    x, mask = _tokens()
    plain = TokenScorer(4, 8, dim=16, dropout=0.0).eval()
    with_prior = TokenScorer(4, 8, dim=16, dropout=0.0, model_prior=[1.0, 2.0, 3.0, 4.0], prior_scale=2.0).eval()
    with_prior.load_state_dict(plain.state_dict(), strict=False)
    z = torch.tensor([1.0, 2.0, 3.0, 4.0])
    z = (z - z.mean()) / z.std(unbiased=False)
    assert torch.allclose(with_prior(x, mask) - plain(x, mask), 2.0 * z.expand(3, 4), atol=1e-5)
    assert torch.allclose(with_prior(x, mask), with_prior.forward_reference(x, mask), atol=1e-5)
    assert "model_prior" not in plain.state_dict()  # old checkpoints keep their keys


def test_reranker_keeps_the_prior_on_reranked_models():
    x, mask = _tokens(b=2)
    model = ReRanker(4, 8, model_dims=[6, 6, 6, 6], dim=16, dropout=0.0, model_prior=[0.0, 5.0, 1.0, 2.0]).eval()
    models = torch.tensor([[1, 2], [0, 3]])
    tokens = torch.randn(2, 2, 5, 6)
    fast = model(x, mask, models, tokens)
    slow = model.forward_reference(x, mask, models, tokens)
    assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("prior", [[1.0, 2.0], [1.0, float("nan"), 2.0, 3.0]])
def test_bad_priors_are_refused(prior):
    with pytest.raises(ScorerInputError, match="model_prior"):
        TokenScorer(4, 8, dim=16, model_prior=prior)


# ------------------------------------------------------------------------- seed ensembles


def test_ensemble_averages_standardised_member_scores():
    from spider.modules.ensemble import ScorerEnsemble, standardise_scores

    x, mask = _tokens()
    members = [TokenScorer(4, 8, dim=16, dropout=0.0).eval() for _ in range(3)]
    for i, m in enumerate(members):  # members on very different scales
        with torch.no_grad():
            m.head[-1].weight.mul_(10.0 ** i)
    ensemble = ScorerEnsemble(members).eval()
    expected = torch.stack([standardise_scores(m(x, mask)) for m in members]).mean(0)
    assert torch.allclose(ensemble(x, mask), expected)
    z = standardise_scores(members[2](x, mask))
    assert torch.allclose(z.mean(-1), torch.zeros(3), atol=1e-5) and torch.allclose(z.std(-1, unbiased=False), torch.ones(3))
    assert ensemble.num_models == 4 and int(ensemble.hparams.task_dim) == 8


def test_ensemble_refuses_members_of_another_zoo():
    from spider.modules.ensemble import ScorerEnsemble

    with pytest.raises(ConfigError, match="member 1 ranks another zoo"):
        ScorerEnsemble([TokenScorer(4, 8, dim=16), TokenScorer(5, 8, dim=16)])
    with pytest.raises(ConfigError, match="at least one"):
        ScorerEnsemble([])
