"""Training tasks, their labels, ground truth and the episode DataModule.

* :mod:`~spider.datamodules.tasks` - :class:`TaskSpec` and the deterministic :class:`TaskSampler`.
* :mod:`~spider.pipeline.labelling` - the label cache (``python -m spider.labels build``).
* :mod:`~spider.datamodules.ground_truth_csv` - the targets' ground-truth CSV.
* :mod:`~spider.datamodules.tokens` - :func:`class_centres`, the task tokens.
* :mod:`~spider.datamodules.episodes` - :class:`EpisodeDataModule` (imports Lightning; loaded lazily).
"""

from spider.datamodules.ground_truth_csv import GroundTruth, GroundTruthError, read_ground_truth, write_ground_truth
from spider.datamodules.tasks import TASK_PRESETS, ClassIndex, TaskConfig, TaskSampler, TaskSpec, check_disjoint
from spider.datamodules.tokens import class_centres

__all__ = [
    "TASK_PRESETS",
    "ClassIndex",
    "EpisodeDataModule",
    "GroundTruth",
    "GroundTruthError",
    "TaskConfig",
    "TaskSampler",
    "TaskSpec",
    "check_disjoint",
    "class_centres",
    "read_ground_truth",
    "write_ground_truth",
]


def __getattr__(name: str):
    # Lightning is slow to import; only code that wants the DataModule pays for it.
    if name == "EpisodeDataModule":
        from spider.datamodules.episodes import EpisodeDataModule

        return EpisodeDataModule
    raise AttributeError(f"module 'spider.datamodules' has no attribute {name!r}")
