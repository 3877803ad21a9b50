"""The built zoo a benchmark reads, and the resumable JSON caches of its work folder."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spider.errors import SpiderError
from spider.io import write_json_atomic

__all__ = ["JsonCache", "ReportError", "Zoo", "open_zoo"]


class ReportError(SpiderError):
    """The benchmark cannot be built from the given zoo (missing parts, bad arguments)."""


@dataclass
class Zoo:
    """A built zoo: manifest, recipe, store and ground truth ``truth`` [T, M] (accuracy %) of its
    targets, validation targets first (``targets = val_targets + test_targets``)."""

    root: Path
    manifest: dict[str, Any]
    recipe: Any
    store: Any
    models: list[str]
    val_targets: list[str]
    test_targets: list[str]
    general: str
    truth: np.ndarray
    data_dir: Path | None

    @property
    def name(self) -> str:
        return str(self.manifest["recipe"])

    @property
    def targets(self) -> list[str]:
        return [*self.val_targets, *self.test_targets]

    def stage_targets(self, stage: str) -> list[str]:
        """Targets of ``stage``: "val" (every decision) or "test" (reported only)."""
        return self.val_targets if stage == "val" else self.test_targets


def open_zoo(root: str | Path, data_dir: str | Path | None = None) -> Zoo:
    """Read ``zoo.json``, the store and the ground truth of a built zoo (ReportError if incomplete)."""
    from spider.datamodules.ground_truth_csv import read_ground_truth
    from spider.store import FeatureStore
    from spider.pipeline.build_manifest import read_manifest
    from spider.pipeline.recipes import get_recipe

    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"--zoo-dir: no folder {root} (build it with `spider zoo build minizoo`)")
    manifest = read_manifest(root)
    recipe = get_recipe(manifest["recipe"])
    if recipe.hash != manifest.get("recipe_hash"):
        warnings.warn(f"{root}/zoo.json: built from another version of recipe {recipe.name!r}; "
                      "re-timing uses the current recipe's images", stacklevel=2)
    data = manifest["data"]
    gt_path = Path(data["ground_truth"])
    if not gt_path.is_file():
        raise ReportError(f"{gt_path}: missing; finish the zoo build (spider zoo build {recipe.name})")
    models = list(data["models"])
    test = list(data.get("test_datasets", data.get("target_datasets", [])))
    val = list(data.get("val_datasets") or [])
    truth = read_ground_truth(gt_path).matrix(val + test, models)
    if np.isnan(truth).any():
        t, m = np.argwhere(np.isnan(truth))[0]
        raise ReportError(f"{gt_path}: no accuracy for target {(val + test)[t]!r}, model {models[m]!r}")
    return Zoo(root, manifest, recipe, FeatureStore(data["store"]), models, val, test, data["general"], truth,
               None if data_dir is None else Path(data_dir))


class JsonCache:
    """A JSON dict on disk, rewritten atomically after every ``put`` (so a killed run resumes).

    Values are kept only while ``identity`` (what they depend on: models, host, threads) is
    unchanged; keys name one target each, so adding targets to a zoo keeps the others' values.
    """

    def __init__(self, path: Path, identity: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity, default=str))
        self.values: dict[str, Any] = {}
        try:
            old = json.loads(self.path.read_text())
            if old.get("identity") == self.identity:
                self.values = old.get("values", {})
        except (OSError, ValueError, AttributeError):
            pass

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        write_json_atomic(self.path, {"identity": self.identity, "values": self.values}, indent=1)
