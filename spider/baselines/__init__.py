"""Transferability baselines: forward-based scores of how well a PTM suits a task.

Importing this package registers every built-in baseline.

Feature scale (``Baseline.scale_invariant``, also shown by ``python -m spider.baselines --list``):
``logme``, ``hscore``, ``hscore_reg``, ``lfc``, ``nleep`` and ``knn`` give the same score when every feature
is multiplied by one c > 0, for features from about 1e-300 to 1e300 (``leep``, ``nce`` and
``pactran_dir`` read only the source logits). ``gbc`` (variance floor 1e-4), ``transrate``
(distortion 1e-4), ``sfda`` (shrinkage exp(-5 lambda)) and ``logme_official`` (start alpha=beta=1,
guard 1e-5, 11 steps) keep the absolute constants of their published recipes: they return the
published value at any magnitude without overflow, but it depends on the scale. They reject
features too small for their constant (mean variance, or for sfda the top within-class
eigenvalue, at most 1e-4), and ``logme_official`` features beyond about 1e+-150. Degenerate inputs
give a one-line :class:`~spider.errors.BaselineInputError`; no baseline returns NaN or inf.

Scores that need the network, not only its stored features (``lgc``: per-sample gradients), live in
a sibling registry (:mod:`spider.baselines.model_scores`, ``list_model_scores()``); the baselines
above and ``DEFAULT_BASELINES`` are unaffected.
"""

from spider.baselines.baseline_registry import (  # noqa: F401
    BASELINES,
    Baseline,
    get_baseline,
    list_baselines,
    register_baseline,
)

# Built-in baselines register themselves on import (added by their modules below).
from spider.baselines import gbc, leep, lfc, nce, nleep, pactran, sfda  # noqa: E402,F401
from spider.baselines import hscore, knn, logme, transrate  # noqa: E402,F401
from spider.baselines.batch import score_models, score_tasks  # noqa: E402,F401

# Scores that need the model itself (per-sample gradients), in their own registry: see model_scores.
from spider.baselines.model_scores import (  # noqa: E402,F401
    MODEL_SCORES,
    ModelScore,
    get_model_score,
    list_model_scores,
    register_model_score,
)
from spider.baselines import lgc  # noqa: E402,F401
