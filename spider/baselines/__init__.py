"""Transferability baselines: forward-based scores of how well a PTM suits a task.

Importing this package registers every built-in baseline.
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
from spider.baselines import hscore, logme, transrate  # noqa: E402,F401
from spider.baselines.batch import score_models, score_tasks  # noqa: E402,F401
