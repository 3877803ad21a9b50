"""Transferability baselines: forward-based scores of how well a PTM suits a task.

Importing this package registers every built-in baseline.
"""

from spider.baselines.registry import (  # noqa: F401
    BASELINES,
    Baseline,
    get_baseline,
    list_baselines,
    register_baseline,
)

# Built-in baselines register themselves on import (added by their modules below).
