"""``<zoo>/zoo.json``: what a zoo build holds, with the ``data`` keys a fit reads (written by
:func:`spider.pipeline.build.build_zoo`, read by the training entry and ``spider rank``).

Paths inside the zoo folder are written relative to it and resolved against the folder the
manifest is read from, so a zoo can be moved or copied (to a cluster's scratch disk, say) and
still refers to its own store, checkpoints and caches. Manifests of older builds hold absolute
paths; they are read as written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from spider.errors import SpiderError
from spider.io import write_text_atomic, write_text_if_changed
from spider.pipeline.recipe import GENERAL_ID, ZooRecipe, timm_ref

__all__ = ["MANIFEST", "SPLIT", "label_models", "param_counts", "read_manifest", "write_manifest", "zoo_manifest"]

MANIFEST = "zoo.json"


SPLIT = "train"


def label_models(recipe: ZooRecipe) -> list[str]:
    """PTM order of the label cache: sorted, as the datamodule's default (every stored model but
    the general encoder) lists them, so a fit that leaves ``models`` unset reuses this cache."""
    return sorted(recipe.ptm_ids())


def param_counts(recipe: ZooRecipe, out: Path, data_dir=None) -> dict[str, int]:
    """Parameter count of every PTM (metadata for the ``param_count`` prior), cached in
    ``<out>/ptm_params.json`` by what identifies each PTM's weights; PTMs whose checkpoint does
    not exist yet are left out."""
    path = out / "ptm_params.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    counts, changed = {}, False
    for ref in recipe.ptm_refs(out / "checkpoints"):
        key = f"{ref.id}|{ref.weights}"
        if key not in cached:
            if ref.kind == "timm" and not Path(ref.checkpoint).is_file():
                continue
            try:
                module = ref.load(data_dir).module
            except (OSError, SpiderError):
                continue
            cached[key] = int(sum(p.numel() for p in module.parameters()))
            changed = True
        counts[ref.id] = cached[key]
    if changed:
        write_text_if_changed(path, json.dumps(cached, indent=1, sort_keys=True))
    return counts


def _path_slots(manifest: dict[str, Any]) -> list[tuple[dict, str]]:
    """(container, key) of every path the manifest holds (data paths, PTM and encoder checkpoints,
    alternative stores); entries of the wrong type are skipped (their readers report them)."""
    def dicts(value: Any) -> list:
        return [v for v in value if isinstance(v, dict)] if isinstance(value, (list, tuple)) else []

    alternatives = manifest.get("alternatives")
    alternatives = dicts(list(alternatives.values())) if isinstance(alternatives, dict) else []
    slots = [(manifest.get("data"), k) for k in ("store", "ground_truth", "label_cache", "finetune_bank")]
    slots += [(r, "checkpoint") for r in [*dicts(manifest.get("models")), manifest.get("general"),
                                          *(a.get("encoder") for a in alternatives)]]
    slots += [(a, "store") for a in alternatives]
    return [(c, k) for c, k in slots if isinstance(c, dict) and isinstance(c.get(k), str)]


def _relative_to(manifest: dict[str, Any], root: Path) -> dict[str, Any]:
    for container, key in _path_slots(manifest):
        path = Path(container[key])
        if path.is_absolute() and path.is_relative_to(root):
            container[key] = path.relative_to(root).as_posix()
    return manifest


def zoo_manifest(recipe: ZooRecipe, out: Path) -> dict[str, Any]:
    """What ``out`` holds, with a ``data`` section of :class:`spider.config.DataConfig` keys."""
    checkpoints = out / "checkpoints"
    root = out.resolve()
    settings = dataclasses.asdict(recipe.labels)
    params = param_counts(recipe, out)
    data = {
        "store": str(root / "store"), "ground_truth": str(root / "ground_truth.csv"),
        "label_cache": str(root / "labels"), "general": GENERAL_ID, "models": label_models(recipe),
        "pool_datasets": [p.id for p in recipe.pool], "val_datasets": [t.id for t in recipe.val_targets],
        "test_datasets": [t.id for t in recipe.targets],
        "finetune_bank": str(root / "bank") if recipe.bank.num_tasks else None,
        "split": SPLIT, "target_split": SPLIT,
    }
    data |= {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
    return _relative_to({
        "recipe": recipe.name, "recipe_hash": recipe.hash, "description": recipe.description,
        "models": [dict(r.to_dict(), params=params.get(r.id)) for r in recipe.ptm_refs(checkpoints)],
        "general": dict(recipe.general_ref(checkpoints).to_dict(), description=recipe.general.description),
        "alternatives": {name: {"store": str(root / "alternatives" / name / "store"),
                                "encoder": timm_ref(spec, checkpoints, GENERAL_ID).to_dict(),
                                "description": spec.description}
                         for name, spec in recipe.general_alternatives},
        "pool": [dataclasses.asdict(p) for p in recipe.pool],
        "targets": [dataclasses.asdict(t) for t in recipe.targets],
        "val_targets": [dataclasses.asdict(t) for t in recipe.val_targets],
        "bank": dataclasses.asdict(recipe.bank),
        "finetune": dataclasses.asdict(recipe.finetune),
        "data": data,
    }, root)


def read_manifest(out: str | Path) -> dict[str, Any]:
    """``<out>/zoo.json`` with its relative paths resolved against ``out``."""
    path = Path(out) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpiderError(f"{path} not found: build the zoo first (python -m spider.zoo build)") from None
    except ValueError as err:
        raise SpiderError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise SpiderError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    root = Path(out).resolve()
    for container, key in _path_slots(manifest):
        if not Path(container[key]).is_absolute():
            container[key] = str(root / container[key])
    return manifest


def write_manifest(out: Path, manifest: dict[str, Any], report: Any) -> None:
    """Write ``<out>/zoo.json`` with ``report``'s stages (a :class:`~spider.pipeline.build.BuildReport`),
    leaving an unchanged file alone."""
    path = out / MANIFEST
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    manifest = json.loads(json.dumps(manifest, default=str))  # tuples -> lists, as read back
    if old is not None and not report.computed and {k: v for k, v in old.items() if k != "last_build"} == manifest:
        return  # nothing changed: leave the file (and its timestamp) alone
    manifest = dict(manifest, last_build=[dataclasses.asdict(s) for s in report.stages])
    write_text_atomic(path, json.dumps(manifest, indent=1, default=str))
