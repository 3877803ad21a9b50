"""The fine-tuning bank: real fine-tuning of every PTM on sampled pool tasks.

The paper supervises its ranker with Copeland labels of cheap proxies because fine-tuning every
PTM on every training task was too expensive at its scale. On this zoo one fine-tuning run costs a
few CPU seconds, so the bank measures what the labels only estimate: the fine-tuned test accuracy
of each PTM on the first ``num_tasks`` training tasks of the label cache (same task specs, so a
bank row and a label row describe the same task). It is the supervision of ``label_source``
``finetune``/``mixed`` and the history behind the fine-tuning static prior.

Protocol (cheaper than the targets', documented and measured by :func:`protocol_agreement`): each
class of a task (at most ``max_per_class`` of its images) is split into train and test rows
(``test_fraction``, seeded per task and class),
the whole PTM plus a new head is fine-tuned with :func:`spider.pipeline.finetune.finetune` at one
learning rate and one seed (no validation split: with one learning rate nothing is selected).
Runs are cached one JSON file each (``<out>/bank/runs``), so a killed build resumes.

Output: ``<out>/bank/accuracy.csv`` (``dataset,model,accuracy`` with ``dataset = task<i>``),
``<out>/bank/test_nll.csv`` (``dataset,model,test_nll``: the same runs' mean test cross-entropy,
label source ``finetune_nll``) and ``<out>/bank/tasks.jsonl`` (the task specs, one per line, in
bank order).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spider.datamodules.finetune_bank import BANK_MEASURES, task_id
from spider.errors import SpiderError
from spider.io import write_text_if_changed
from spider.pipeline.finetune import FinetuneConfig


def _bank_finetune() -> FinetuneConfig:
    return FinetuneConfig(lrs=(3e-3,), seeds=(0,), epochs=3)


@dataclass(frozen=True)
class BankSettings:
    """How many label-cache tasks get fine-tuned, and how (see the module docstring)."""

    num_tasks: int = 0  # 0: no bank (a recipe sets its own size)
    test_fraction: float = 1 / 3
    # At most this many images of a class take part (seeded draw; None = all): bounds the cost.
    max_per_class: int | None = None
    seed: int = 0
    finetune: FinetuneConfig = field(default_factory=_bank_finetune)

    def __post_init__(self) -> None:
        if self.num_tasks < 0:
            raise SpiderError(f"bank.num_tasks: expected >= 0, got {self.num_tasks}")
        if self.max_per_class is not None and self.max_per_class < 2:
            raise SpiderError(f"bank.max_per_class: expected >= 2 or None, got {self.max_per_class}")
        if not 0.0 < self.test_fraction < 1.0:
            raise SpiderError(f"bank.test_fraction: expected a value in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class _View:
    """Images and labels of one part of a bank task (the fields fine-tuning reads)."""

    images: list[np.ndarray]  # one uint8 chunk per class (sizes may differ between chunks)
    labels: np.ndarray
    class_names: tuple[str, ...]


def split_task(spec: Any, pool_views: Mapping[str, Any], index: int, settings: BankSettings) -> dict[str, _View]:
    """``{"train", "val", "test"}`` views of bank task ``index`` (``val`` is empty).

    ``spec`` is a :class:`spider.datamodules.tasks.TaskSpec` whose rows index the stored split of
    each pool dataset, which lists the images of ``pool_views[dataset]`` in the same order.
    """
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for k, ((dataset, _), rows) in enumerate(zip(spec.classes, spec.rows)):
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) < 2:
            raise SpiderError(f"bank task {index}: class {k} has {len(rows)} image(s); need 2 to split")
        order = np.random.default_rng([settings.seed, index, k]).permutation(rows)
        if settings.max_per_class is not None:
            order = order[:settings.max_per_class]
        n_test = min(len(rows) - 1, max(1, int(round(len(rows) * settings.test_fraction))))
        for part, chosen in (("test", order[:n_test]), ("train", order[n_test:])):
            parts[part][0].append(np.asarray(pool_views[dataset].images)[np.sort(chosen)])
            parts[part][1].append(np.full(len(chosen), k, dtype=np.int64))
    names = tuple(f"{d}:{c}" for d, c in spec.classes)
    # Images stay one chunk per class: datasets of a task differ in size and channels, and each
    # chunk is brought to the PTM's own input by its preprocessing.
    views = {part: _View(x, np.concatenate(y), names) for part, (x, y) in parts.items()}
    views["val"] = _View([], np.zeros(0, dtype=np.int64), names)
    return views


def bank_jobs(specs: Sequence[Any], refs: Sequence[Any], settings: BankSettings) -> list:
    """One :class:`~spider.pipeline.finetune.GroundTruthJob` per (task, PTM), without images (the
    build gives the jobs with missing runs their :func:`split_task` views)."""
    from spider.pipeline.finetune import GroundTruthJob

    jobs = []
    for i, spec in enumerate(specs):
        # "measures": what a run records (runs cached before test_nll was recorded are redone).
        identity = {"spec": spec.to_json(), "test_fraction": settings.test_fraction, "seed": settings.seed,
                    "max_per_class": settings.max_per_class, "measures": list(BANK_MEASURES)}
        cost = float(spec.num_samples)
        jobs += [GroundTruthJob(task_id(i), None, ref, identity=identity,
                                cost=cost * (4.0 if ref.kind == "zoo" else 1.0)) for ref in refs]
    return jobs


def write_specs(path: Path, specs: Sequence[Any]) -> None:
    write_text_if_changed(path, "".join(json.dumps({"task": task_id(i), "spec": s.to_json()}) + "\n"
                                         for i, s in enumerate(specs)))


def protocol_agreement(ground_truth_runs: str | os.PathLike, truth: Any, lr: float, seed: int) -> dict[str, float]:
    """How well one run at (``lr``, ``seed``) ranks the PTMs like the full protocol, per target.

    ``ground_truth_runs`` is ``<zoo>/ground_truth/runs`` (one JSON per run); ``truth`` a
    :class:`~spider.datamodules.ground_truth_csv.GroundTruth` of the full protocol. Returns
    ``{target: weighted tau (paper protocol) of the single run's test accuracies vs truth}``.
    """
    from spider.metrics.functional import weighted_tau

    root = Path(ground_truth_runs)
    out = {}
    for i, target in enumerate(truth.datasets):
        cheap = []
        for model in truth.models:
            path = root / target / model / f"lr{lr:g}_seed{seed}.json"
            try:
                cheap.append(float(json.loads(path.read_text())["test_accuracy"]))
            except (OSError, ValueError, KeyError):
                cheap.append(np.nan)
        cheap = np.asarray(cheap)
        if np.isfinite(cheap).all():
            out[target] = float(weighted_tau(preds=cheap, target=truth.accuracy[i]))
    return out


def settings_dict(settings: BankSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
