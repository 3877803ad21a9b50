"""Hostile inputs for every registered baseline (issue 7, items 6 and 7).

Every (baseline, degenerate input) pair must give either a finite score -- the same as on the
plain features where the baseline is scale invariant, close to it where an absolute constant of the
published recipe is negligible -- or a one-line BaselineInputError naming the argument and the
condition. Never NaN, never inf, never a raw LinAlgError. Plus the baselines CLI's ``--device``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from spider.baselines import BASELINES, get_baseline, list_baselines, register_baseline, score_models
from spider.baselines.__main__ import main
from spider.baselines.batch import BaselineFailedWarning
from spider.baselines.gbc import gbc_from_features, pca_project
from spider.baselines.logme import _official_fixed_point, logme_spectrum
from spider.baselines.sfda import sfda_from_features
from spider.errors import BaselineInputError
from spider.store import FeatureStore

ALL = list_baselines()
# Scale-dependent by their published recipes (absolute constants): see test_scale_flags_are_the_documented_ones.
SCALE_DEPENDENT = ("gbc", "logme_official", "sfda", "transrate")
# Errors expected when the features are far too small for the constant (scales 1e-4 and 1e-200).
TOO_SMALL = {
    "gbc": r"mean variance .* not above gbc's absolute variance floor",
    "transrate": r"mean variance .* not above transrate's absolute distortion",
    "sfda": r"within-class spread .* not above 0.0001: sfda's absolute shrinkage",
    "logme_official": r"outside the range where the official LogME",
}
SAME = 1e-9  # relative agreement of a scale-invariant score across scales (rounding only)
CLOSE = 1e-3  # a scale-dependent score where its absolute constant is negligible at both scales


def task(n_per_class=20, num_classes=3, dim=6, seed=0):
    """Well separated Gaussian classes (every class has more samples than dims) and source logits."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = 1.5 * rng.normal(size=(num_classes, dim))[y] + rng.normal(size=(len(y), dim))
    logits = rng.normal(size=(len(y), 10))
    logits[np.arange(len(y)), 2 * y] += 3.0
    return x, y, logits


X, Y, LOGITS = task()


def outcome(name, features=X, labels=Y, logits=LOGITS, **options):
    """``("value", v)`` with v a finite float, or ``("error", message)`` for a BaselineInputError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the H-Score tie warning for N <= D + 1
            value = get_baseline(name)(features=features, labels=labels, source_logits=logits, **options)
    except BaselineInputError as err:
        message = str(err)
        assert "\n" not in message and re.match(r"^(features|labels|source_logits): ", message), message
        return "error", message
    assert isinstance(value, float) and math.isfinite(value), (name, value)
    return "value", value


def reads_features(name):
    return "features" in get_baseline(name).needs


def reads_logits(name):
    return "source_logits" in get_baseline(name).needs


def assert_value(result, expected=None, rel=SAME):
    kind, value = result
    assert kind == "value", value
    if expected is not None:
        assert value == pytest.approx(expected, rel=rel, abs=1e-12)


def assert_error(result, pattern):
    kind, message = result
    assert kind == "error", f"expected an error matching {pattern!r}, got the value {message!r}"
    assert re.search(pattern, message), message


# ------------------------------------------------------------------------------- feature scale


def test_scale_flags_are_the_documented_ones():
    assert sorted(n for n in ALL if not get_baseline(n).scale_invariant) == sorted(SCALE_DEPENDENT)


@pytest.mark.parametrize("scale", [1e200, 1e-4, 1e-200])
@pytest.mark.parametrize("name", ALL)
def test_feature_scale(name, scale):
    """Scale-invariant scores agree across scales; the others are close where their constant is
    negligible (1e200) and refuse features far too small for it (1e-4, 1e-200)."""
    plain = outcome(name)
    assert plain[0] == "value"
    result = outcome(name, features=X * scale)
    if get_baseline(name).scale_invariant:
        assert_value(result, plain[1])
    elif name == "logme_official" and scale == 1e-4:
        # The official value itself (checked in test_scale_dependent_scores_are_the_published_values):
        # its start alpha=beta=1 and 11-step cap make it depend on the scale by construction.
        assert_value(result)
    elif scale == 1e200 and name != "logme_official":
        assert_value(result, plain[1], rel=CLOSE)
    else:
        assert_error(result, TOO_SMALL[name])


PUBLISHED_AT = [(name, scale) for name in SCALE_DEPENDENT for scale in (0.05, 1e3)] + [("logme_official", 1e-4)]


@pytest.mark.parametrize(("name", "scale"), PUBLISHED_AT)
def test_scale_dependent_scores_are_the_published_values(name, scale):
    """Rescaling inside (features by 2**-k, constants with them) is exact: the value equals the
    direct computation on the scaled features, where that one does not overflow. At 0.05 SFDA's
    shrinkage exp(-5 lambda) is about 0.98 and GBC's floor is within 50x of the variances."""
    x = torch.from_numpy(X * scale)
    y = torch.from_numpy(Y)
    result = outcome(name, features=X * scale)
    assert result[0] == "value", result
    if name == "gbc":
        direct = gbc_from_features(pca_project(x, 64), y, 3)
    elif name == "sfda":
        direct = sfda_from_features(x, y, 3)
    elif name == "logme_official":
        direct = float((_official_fixed_point(logme_spectrum(x, y, 3)) / len(Y)).mean())
    else:
        direct = _transrate_by_definition(X * scale, Y)
    assert result[1] == pytest.approx(direct, rel=1e-9)


def _transrate_by_definition(x, y, eps=1e-4):
    def rate(z):
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]

    xc = x - x.mean(axis=0)
    return rate(xc) - np.mean([rate(xc[y == c]) for c in np.unique(y)])


def test_logme_official_rescaling_keeps_the_dropped_logdet_terms():
    """N < D: the official code drops D - N log-det terms, whose log c must survive the rescaling."""
    x, y, _ = task(n_per_class=4, num_classes=3, dim=20, seed=3)
    for scale in (1e-3, 1e4):
        xs = torch.from_numpy(x * scale)
        direct = float((_official_fixed_point(logme_spectrum(xs, torch.from_numpy(y), 3)) / len(y)).mean())
        assert get_baseline("logme_official")(features=x * scale, labels=y) == pytest.approx(direct, rel=1e-9)


# ------------------------------------------------------------------------- degenerate features

CONSTANT_FEATURES = np.full_like(X, 0.1)  # 0.1 * N / N != 0.1: centring leaves rounding noise
CONSTANT_ERRORS = {
    "gbc": r"variance floor",
    "transrate": r"distortion",
    "lfc": r"kernel F F\^T is constant to rounding",
    "sfda": r"no within-class variance",
    "nleep": r"no variance",
    "knn": r"constant after centring",
}


@pytest.mark.parametrize("name", ALL)
def test_constant_features(name):
    result = outcome(name, features=CONSTANT_FEATURES)
    if name in CONSTANT_ERRORS:
        assert_error(result, CONSTANT_ERRORS[name])
    elif name in ("hscore", "hscore_reg"):
        assert_value(result, 0.0)  # no feature covariance explains nothing
    else:
        assert_value(result)


ONE_PER_CLASS = [0, 20, 40]
ONE_PER_CLASS_ERRORS = {"sfda": r"no within-class variance", "nleep": r"N=3 samples .* needs N >= 5"}


@pytest.mark.parametrize("name", ALL)
def test_one_sample_per_class(name):
    result = outcome(name, features=X[ONE_PER_CLASS], labels=Y[ONE_PER_CLASS], logits=LOGITS[ONE_PER_CLASS])
    if name in ONE_PER_CLASS_ERRORS:
        assert_error(result, ONE_PER_CLASS_ERRORS[name])
    else:
        assert_value(result)


REPEATED = np.tile(ONE_PER_CLASS, 20)  # three distinct rows, one per class, each repeated 20 times
REPEATED_ERRORS = {"logme": r"exactly with rank 3 < N=60 .* evidence is unbounded", "sfda": r"no within-class variance"}


@pytest.mark.parametrize("name", ALL)
def test_three_rows_repeated_one_per_class(name):
    result = outcome(name, features=X[REPEATED], labels=Y[REPEATED], logits=LOGITS[REPEATED])
    if name in REPEATED_ERRORS:
        assert_error(result, REPEATED_ERRORS[name])
    else:
        assert_value(result)


@pytest.mark.parametrize("name", ALL)
def test_three_rows_repeated_with_mixed_labels(name):
    labels = np.random.default_rng(1).permutation(Y)  # every distinct row carries every class
    assert_value(outcome(name, features=X[REPEATED], labels=labels, logits=LOGITS[REPEATED]))


def _with(array, row, col, value):
    out = array.copy()
    out[row, col] = value
    return out


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ALL)
def test_non_finite_features(name, bad):
    result = outcome(name, features=_with(X, 5, 2, bad))
    if reads_features(name):
        assert_error(result, r"^features: contains NaN or Inf in 1 of 60 rows$")
    else:
        assert_value(result, outcome(name)[1])  # the features are not read


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", ALL)
def test_non_finite_logits(name, bad):
    result = outcome(name, logits=_with(LOGITS, 7, 1, bad))
    if reads_logits(name):
        assert_error(result, r"^source_logits: contains NaN or Inf in 1 of 60 rows$")
    else:
        assert_value(result, outcome(name)[1])


@pytest.mark.parametrize("name", [n for n in ALL if reads_features(n)])
def test_float32_overflow_is_named(name):
    result = outcome(name, features=X * 1e200, dtype="float32")
    assert_error(result, r"^features: values up to .* overflow torch.float32; compute in float64$")


# ------------------------------------------------------------------- non-finite results


@pytest.fixture
def nan_baseline(monkeypatch):
    """A baseline registered only for this test whose score is NaN."""
    monkeypatch.setattr(BASELINES, "_items", dict(BASELINES._items))
    monkeypatch.setattr(BASELINES, "_meta", dict(BASELINES._meta))

    @register_baseline("hostile_nan")
    def hostile_nan(*, features, labels, source_logits=None):
        return float(np.log(-np.ones(1))[0]) if len(labels) else 0.0

    return hostile_nan


def test_non_finite_score_is_an_error_naming_the_baseline(nan_baseline):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's log(-1)
        with pytest.raises(BaselineInputError, match=r"^hostile_nan: the score is nan"):
            get_baseline("hostile_nan")(features=X, labels=Y)
        with pytest.raises(BaselineInputError, match=r"^hostile_nan: the score is nan"):
            nan_baseline(features=X, labels=Y)  # the module-level name is checked too
        failed = r"'hostile_nan' failed on model 'm': hostile_nan: the score is nan"
        with pytest.warns(BaselineFailedWarning, match=failed):
            scores = score_models(Y, {"m": {"features": X}}, ["hostile_nan", "lfc"])
    assert math.isnan(scores[0, 0]) and math.isfinite(scores[1, 0])


# ------------------------------------------------------------------------------ --device


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    FeatureStore(root).write("m", "toy", "train", features=X.astype(np.float32), labels=Y,
                             logits=LOGITS.astype(np.float32))
    return root


def _cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


CUDA_COUNT = torch.cuda.device_count() if torch.cuda.is_available() else 0
BAD_DEVICES = [
    ("bogus", r"--device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got 'bogus'"),
    ("meta", r"--device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'"),
    ("", r"--device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got ''"),
    (f"cuda:{CUDA_COUNT + 7}", r"--device: 'cuda:\d+' requested but (this machine has no usable CUDA|only cuda:0)"),
]
if CUDA_COUNT == 0:
    BAD_DEVICES.append(("cuda", r"--device: 'cuda' requested but this machine has no usable CUDA device; use 'cpu'"))


@pytest.mark.parametrize(("device", "pattern"), BAD_DEVICES, ids=[d or "empty" for d, _ in BAD_DEVICES])
def test_cli_bad_device_is_one_line(store_root, capsys, device, pattern):
    code, out, err = _cli(["--store", store_root, "--dataset", "toy", "--baselines", "lfc", "--device", device], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and re.match(r"^error: " + pattern, err), err


def test_cli_cpu_device_works(store_root, capsys):
    code, out, err = _cli(["--store", store_root, "--dataset", "toy", "--baselines", "lfc", "--device", "cpu",
                           "--json", "-"], capsys)
    assert code == 0 and '"lfc"' in out and err == ""


def test_cli_bad_device_in_a_real_process_has_no_traceback(store_root):
    bad = "bogus" if CUDA_COUNT else "cuda"
    proc = subprocess.run(
        [sys.executable, "-m", "spider.baselines", "--store", str(store_root), "--dataset", "toy", "--device", bad],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --device: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_library_device_is_checked_before_scoring():
    with pytest.raises(BaselineInputError, match=r"^device: expected 'cpu', 'cuda', 'cuda:N' or 'mps', got 'bogus'$"):
        score_models(Y, {"m": {"features": X}}, ["lfc"], device="bogus")
