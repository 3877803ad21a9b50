"""Properties of leep, nce, gbc, sfda, lfc, pactran_dir, nleep and the batch helpers that the
reference cases do not pin down: no mutation, torch input, label-id and sample-order invariance,
sensible ordering on toy tasks, input errors, and agreement of the batch API with single calls."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from spider.baselines import get_baseline, score_models, score_tasks
from spider.baselines.batch import BaselineFailedWarning
from spider.baselines.gbc import pca_project
from spider.baselines.nce import nce_from_pseudo_labels
from spider.errors import BaselineInputError, RegistryError

MINE = ["leep", "nce", "gbc", "sfda", "lfc", "pactran_dir", "nleep"]
DETERMINISTIC = [name for name in MINE if name != "nleep"]


def toy_task(n=240, d=24, c=4, cs=30, separation=2.0, seed=0):
    """Features whose first c dims carry the class (scaled by ``separation``) and source logits
    whose class-specific source units light up with the same strength."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n // c)
    rng.shuffle(y)
    x = rng.normal(size=(n, d))
    x[:, :c] += separation * np.eye(c)[y]
    logits = rng.normal(size=(n, cs))
    logits[np.arange(n), (y * 7) % cs] += separation * 2
    return x.astype(np.float32), y.astype(np.int64), logits.astype(np.float32)


def call(name, x, y, logits, **kw):
    return get_baseline(name)(features=x, labels=y, source_logits=logits, **kw)


@pytest.fixture(scope="module")
def task():
    return toy_task()


@pytest.mark.parametrize("name", MINE)
def test_does_not_mutate_inputs(name, task):
    x, y, logits = task
    copies = [a.copy() for a in task]
    call(name, x, y, logits)
    for before, after in zip(copies, task):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", MINE)
def test_torch_input_matches_numpy(name, task):
    x, y, logits = task
    xt, yt, lt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy()), torch.from_numpy(logits.copy())
    value = call(name, xt, yt, lt)
    assert isinstance(value, float)
    assert value == pytest.approx(call(name, x, y, logits), rel=1e-12)
    assert torch.equal(xt, torch.from_numpy(x)) and torch.equal(lt, torch.from_numpy(logits))


@pytest.mark.parametrize("name", MINE)
def test_label_values_do_not_matter(name, task):
    x, y, logits = task
    relabelled = np.array([40, 3, 17, 9])[y]  # a gap-ridden, unsorted renaming of the classes
    assert call(name, x, relabelled, logits) == pytest.approx(call(name, x, y, logits), rel=1e-10)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_sample_order_does_not_matter(name, task):
    x, y, logits = task
    perm = np.random.default_rng(1).permutation(len(y))
    assert call(name, x[perm], y[perm], logits[perm]) == pytest.approx(call(name, x, y, logits), rel=1e-9)


@pytest.mark.parametrize("name", MINE)
def test_clearly_better_inputs_score_higher(name):
    good, bad = toy_task(separation=3.0, seed=2), toy_task(separation=0.0, seed=2)
    assert call(name, *good) > call(name, *bad)


def test_nleep_is_reproducible_per_seed(task):
    x, y, logits = task
    first = call("nleep", x, y, logits, seed=3)
    assert call("nleep", x, y, logits, seed=3) == first
    # A different initialisation moves the score a little, not its order of magnitude.
    assert abs(call("nleep", x, y, logits, seed=4) - first) < 0.2 * abs(first)
    assert not get_baseline("nleep").deterministic
    assert all(get_baseline(n).deterministic for n in DETERMINISTIC)


@pytest.mark.parametrize("name", ["leep", "nce", "pactran_dir"])
def test_source_probs_equal_softmax_of_logits(name, task):
    x, y, logits = task
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    via_probs = get_baseline(name)(labels=y, source_probs=probs)
    assert via_probs == pytest.approx(get_baseline(name)(labels=y, source_logits=logits), rel=1e-12)


def test_leep_drops_source_classes_without_mass(task):
    _, y, logits = task
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    padded = np.concatenate([probs[:, :5], np.zeros((len(y), 3)), probs[:, 5:]], axis=1)
    value = get_baseline("leep")(labels=y, source_probs=padded)
    assert math.isfinite(value)
    assert value == pytest.approx(get_baseline("leep")(labels=y, source_probs=probs), rel=1e-14)


def test_leep_of_a_perfect_source_head_is_zero():
    y = np.repeat(np.arange(3), 4)
    probs = np.eye(3)[y]
    assert get_baseline("leep")(labels=y, source_probs=probs) == pytest.approx(0.0, abs=1e-15)


def test_nce_hand_values():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert nce_from_pseudo_labels(y.clone(), 3, y, 3) == pytest.approx(0.0, abs=1e-15)  # z determines y
    z = torch.zeros(6, dtype=torch.int64)  # uninformative z: NCE = -H(Y) = -log 3
    assert nce_from_pseudo_labels(z, 5, y, 3) == pytest.approx(-math.log(3), rel=1e-14)


def test_lfc_closed_form_equals_the_n_by_n_definition():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(60, 9)), 0) + 0.5
    y = rng.choice([2, 5, 11], size=60)
    kernel = x @ x.T
    kernel -= kernel.mean()
    agree = np.where(y[:, None] == y[None, :], 1.0, -1.0)
    agree -= agree.mean()
    brute = (kernel * agree).sum() / np.sqrt((kernel**2).sum() * (agree**2).sum())
    assert get_baseline("lfc")(features=x, labels=y) == pytest.approx(brute, rel=1e-12)


def test_gbc_pca_keeps_the_principal_subspace():
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)))
    full = pca_project(x, 12)
    # Projecting on every axis is a rotation of the centred data: inner products survive.
    centred = x - x.mean(0)
    torch.testing.assert_close(full @ full.T, centred @ centred.T)
    assert pca_project(x, 100).shape == (40, 12)  # capped at min(N, D)
    assert pca_project(x.T.contiguous(), 5).shape == (12, 5)  # N < D path
    assert 1 <= pca_project(x, 0.5).shape[1] < 12  # variance fraction


def test_gbc_bounds(task):
    x, y, _ = task
    value = get_baseline("gbc")(features=x, labels=y)
    assert -4 * 3 <= value <= 0
    assert get_baseline("gbc")(features=x, labels=y, pca_dim=None, gaussian="diagonal") <= 0


def test_sfda_is_a_mean_probability(task):
    x, y, _ = task
    assert 0 < get_baseline("sfda")(features=x, labels=y) <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"labels": np.zeros(240, dtype=np.int64)}, "at least 2"),
        ({"labels": np.arange(239) % 4}, "rows"),
        ({"features": np.full((240, 24), np.nan)}, "NaN"),
    ],
)
@pytest.mark.parametrize("name", ["gbc", "sfda", "lfc", "nleep"])
def test_feature_baselines_reject_bad_input(name, kwargs, match, task):
    x, y, _ = task
    inputs = {"features": x, "labels": y, **kwargs}
    with pytest.raises(BaselineInputError, match=match):
        get_baseline(name)(**inputs)


@pytest.mark.parametrize("name", ["leep", "nce", "pactran_dir"])
def test_logit_baselines_reject_bad_input(name, task):
    _, y, logits = task
    with pytest.raises(BaselineInputError, match="exactly one"):
        get_baseline(name)(labels=y)
    with pytest.raises(BaselineInputError, match="exactly one"):
        get_baseline(name)(labels=y, source_logits=logits, source_probs=logits)
    with pytest.raises(BaselineInputError, match="rows"):
        get_baseline(name)(labels=y[:-1], source_logits=logits)
    with pytest.raises(BaselineInputError):
        get_baseline(name)(labels=y, source_probs=np.abs(logits))  # rows do not sum to 1


def test_option_errors(task):
    x, y, _ = task
    with pytest.raises(BaselineInputError, match="gaussian"):
        get_baseline("gbc")(features=x, labels=y, gaussian="full")
    with pytest.raises(BaselineInputError, match="pca_dim"):
        get_baseline("gbc")(features=x, labels=y, pca_dim=0)
    with pytest.raises(BaselineInputError, match="num_components"):
        get_baseline("nleep")(features=x, labels=y, num_components=10_000)


# ------------------------------------------------------------------------------------ batch API


def zoo(seeds=(0, 1, 2)):
    """Three models of the same 240 samples (same labels), of decreasing quality."""
    y = toy_task(seed=9)[1]
    inputs = {}
    for name, sep in zip(("strong", "medium", "weak"), (3.0, 1.0, 0.0)):
        x, _, logits = toy_task(separation=sep, seed=9)
        inputs[name] = {"features": x, "source_logits": logits}
    return y, inputs


def test_score_models_matches_single_calls():
    y, inputs = zoo()
    names = ["leep", "gbc", "lfc"]
    scores = score_models(y, inputs, names)
    assert scores.shape == (3, 3) and scores.dtype == np.float64
    for k, name in enumerate(names):
        for j, arrays in enumerate(inputs.values()):
            assert scores[k, j] == pytest.approx(call(name, arrays["features"], y, arrays["source_logits"]), rel=1e-12)
    assert (np.argmax(scores, axis=1) == 0).all()  # the strong model wins under every baseline


def test_score_models_failures_are_nan_with_a_warning():
    y, inputs = zoo()
    inputs["no_logits"] = {"features": inputs["weak"]["features"]}
    broken = inputs["weak"]["features"].copy()
    broken[0, 0] = np.nan
    inputs["broken"] = {"features": broken, "source_logits": inputs["weak"]["source_logits"]}
    with pytest.warns(BaselineFailedWarning) as record:
        scores = score_models(y, inputs, ["leep", "gbc"])
    assert np.isnan(scores[0, 3]) and not np.isnan(scores[1, 3])  # leep needs logits
    assert not np.isnan(scores[0, 4]) and np.isnan(scores[1, 4])  # gbc reads the NaN features
    assert np.isfinite(scores[:, :3]).all()
    messages = " | ".join(str(w.message) for w in record)
    assert "no_logits" in messages and "broken" in messages


def test_score_models_rejects_bad_calls():
    y, inputs = zoo()
    with pytest.raises(RegistryError, match="nonexistent"):
        score_models(y, inputs, ["leep", "nonexistent"])
    with pytest.raises(BaselineInputError, match="at least 2"):
        score_models(np.zeros_like(y), inputs, ["gbc"])
    with pytest.raises(BaselineInputError, match="unknown key"):
        score_models(y, {"m": {"features": inputs["weak"]["features"], "logits": None}}, ["gbc"])
    with pytest.raises(BaselineInputError, match="options"):
        score_models(y, inputs, ["gbc"], options={"lfc": {}})
    with pytest.raises(BaselineInputError, match="regression"):
        score_models(np.ones((len(y), 2)), inputs, ["gbc"])


def test_score_models_passes_options_and_device():
    y, inputs = zoo()
    scores = score_models(y, inputs, ["gbc"], options={"gbc": {"pca_dim": 5}}, device="cpu")
    expected = call("gbc", inputs["weak"]["features"], y, None, pca_dim=5)
    assert scores[0, 2] == pytest.approx(expected, rel=1e-12)


def test_score_tasks_equals_score_models_per_task():
    y, inputs = zoo()
    rng = np.random.default_rng(5)
    tasks = [rng.choice(len(y), size=80, replace=False) for _ in range(3)]
    tasks.append(np.flatnonzero(np.isin(y, [1, 3])))  # a task with a subset of the classes
    seen = []
    out = score_tasks(y, inputs, tasks, ["nce", "sfda"], progress=lambda done, total: seen.append((done, total)))
    assert out.shape == (4, 2, 3)
    for t, rows in enumerate(tasks):
        sub = {m: {k: v[rows] for k, v in a.items()} for m, a in inputs.items()}
        np.testing.assert_allclose(out[t], score_models(y[rows], sub, ["nce", "sfda"]), rtol=1e-12)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_score_tasks_names_the_bad_task():
    y, inputs = zoo()
    with pytest.raises(BaselineInputError, match=r"tasks\[1\].*at least 2"):
        score_tasks(y, inputs, [np.arange(10), np.flatnonzero(y == 0)], ["lfc"])
    with pytest.raises(BaselineInputError, match=r"tasks\[0\]"):
        score_tasks(y, inputs, [np.array([0, len(y)])], ["lfc"])


def test_score_tasks_warns_and_continues():
    y, inputs = zoo()
    inputs = {"strong": inputs["strong"], "plain": {"features": inputs["weak"]["features"]}}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = score_tasks(y, inputs, [np.arange(120)], ["leep", "lfc"])
    assert np.isnan(out[0, 0, 1]) and np.isfinite(out[0, 1]).all()
    assert any(issubclass(w.category, BaselineFailedWarning) for w in record)


# ----------------------------------------------------------------------- reference extras


def _case(reference_dir, name):
    root = reference_dir / "metric_cases"
    scores = json.loads((root / "reference_scores.json").read_text())["cases"][name]
    return dict(np.load(root / scores["file"], allow_pickle=False)), scores["scores"]


def test_leep_underflow_case_without_nan(reference_dir):
    arrays, scores = _case(reference_dir, "edge_prob_underflow")
    assert math.isnan(scores["leep/official"]["value"])  # the reference's own failure
    value = get_baseline("leep")(labels=arrays["labels"], source_probs=arrays["source_probs_f32"])
    assert value == pytest.approx(-0.0866012873, rel=1e-9)
    # From the logits (float64 softmax, no exact zeros) the value agrees to well within 1e-6.
    assert get_baseline("leep")(labels=arrays["labels"], source_logits=arrays["source_logits"]) == pytest.approx(
        value, rel=1e-6
    )


@pytest.mark.parametrize("case", ["small_s0", "edge_n_lt_d", "edge_rank_deficient"])
@pytest.mark.parametrize("gaussian", ["spherical", "diagonal"])
def test_gbc_without_pca_matches_transfergraph(reference_dir, case, gaussian):
    arrays, scores = _case(reference_dir, case)
    value = get_baseline("gbc")(features=arrays["features"], labels=arrays["labels"], pca_dim=None, gaussian=gaussian)
    assert value == pytest.approx(scores[f"gbc/transfergraph_{gaussian}_nopca"]["value"], rel=1e-6)


def test_pactran_label_gap_differs_from_reference_by_the_class_count(reference_dir):
    # The reference divides by N * (max label + 1); we remap labels and divide by N * C.
    arrays, scores = _case(reference_dir, "edge_label_gap")
    y = arrays["labels"]
    ours = get_baseline("pactran_dir")(labels=y, source_logits=arrays["source_logits"])
    num_classes, id_range = len(np.unique(y)), int(y.max()) + 1
    assert num_classes < id_range
    assert -ours * num_classes / id_range == pytest.approx(scores["pactran_dir/mptms_raw"]["value"], rel=1e-6)


@pytest.mark.parametrize("name", MINE)
def test_declared_empty_class_is_rejected(name, task):
    x, y, logits = task
    with pytest.raises(BaselineInputError, match="no samples"):
        call(name, x, y, logits, num_classes=5)
    assert call(name, x, y, logits, num_classes=4) == call(name, x, y, logits)


def test_progress_bar_runs(capsys):
    y, inputs = zoo()
    assert np.isfinite(score_models(y, inputs, ["lfc"], progress=True)).all()
    assert np.isfinite(score_tasks(y, inputs, [np.arange(60)], ["lfc"], progress=True)).all()
