"""TransferGraph's inputs read from a built zoo: the fine-tuning bank over pool tasks, the bank
tasks' general-encoder tokens from the store, and PTM metadata from ``zoo.json`` and the recipe.

Only the pool tasks' history is read: the targets' ground truth (validation or test) never is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spider.errors import ConfigError, SpiderError
from spider.transfergraph.model import HParams, PTMMeta, TransferGraph, fit

__all__ = ["ZooHistory", "fit_zoo", "ptm_metadata", "zoo_history"]


@dataclass
class ZooHistory:
    """What :func:`spider.transfergraph.fit` needs, for one zoo."""

    bank: Any  # FinetuneBank, columns in the zoo's model order
    tokens: list[torch.Tensor]  # [C_k, D] per bank task
    metadata: dict[str, PTMMeta]
    info: dict[str, Any]  # zoo folder, general encoder id and weights


def ptm_metadata(manifest: dict[str, Any]) -> dict[str, PTMMeta]:
    """Family, source domain and parameter count of every PTM of a zoo manifest: zoo models from
    their registry entry, timm models pre-trained here from the recipe's pre-training spec."""
    from spider.pipeline.recipes import get_recipe
    from spider.zoo import get_zoo_model_info

    pretrained = {spec.id: spec for spec in get_recipe(manifest["recipe"]).pretrained}
    out = {}
    for entry in manifest.get("models", []):
        ptm, params = entry.get("id"), entry.get("params")
        if not isinstance(params, int) or isinstance(params, bool) or params < 1:
            raise ConfigError(f"zoo.json: model {ptm!r} has no parameter count (rebuild the zoo's manifest)")
        if entry.get("kind") == "zoo":
            info = get_zoo_model_info(entry["model"])
            out[ptm] = PTMMeta(info.family or entry["model"], info.source, params)
        elif ptm in pretrained:
            out[ptm] = PTMMeta(pretrained[ptm].arch, "+".join(pretrained[ptm].sources), params)
        else:
            raise ConfigError(f"zoo.json: model {ptm!r} is in neither the zoo registry nor recipe "
                              f"{manifest['recipe']!r}'s pre-trained models")
    return out


def zoo_history(zoo_dir: str | os.PathLike) -> ZooHistory:
    """Read a built zoo's fine-tuning bank, its tasks' general-encoder tokens and PTM metadata.

    Raises:
        SpiderError: no manifest, no bank (recipe without ``bank.num_tasks``), non-finite
            accuracies, missing store entries (one line naming the file or entry).
    """
    from spider.datamodules.finetune_bank import open_bank
    from spider.datamodules.label_cache import task_array
    from spider.datamodules.tokens import class_centres
    from spider.pipeline.build_manifest import read_manifest
    from spider.store import FeatureStore

    zoo_dir = Path(zoo_dir)
    manifest = read_manifest(zoo_dir)
    try:
        data, general = manifest["data"], manifest["general"]
        models, bank_dir, general_id = list(data["models"]), data.get("finetune_bank"), data["general"]
        store = FeatureStore(data["store"])
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{zoo_dir / 'zoo.json'}: no valid 'data'/'general' entries ({err})") from None
    if not bank_dir:
        raise ConfigError(f"{zoo_dir / 'zoo.json'}: the zoo has no fine-tuning bank (its recipe sets "
                          "bank.num_tasks = 0); TransferGraph learns from that history")
    bank = open_bank(bank_dir, models)
    tokens = []
    for i, spec in enumerate(bank.specs):
        try:
            features = task_array(store, general_id, spec)
        except (KeyError, IndexError, OSError) as err:
            raise SpiderError(f"store {store.root}: cannot read bank task {i}'s features under {general_id} "
                              f"({type(err).__name__}: {err})") from None
        tokens.append(class_centres(features, spec.labels(), spec.num_classes).float())
    info = {"zoo_dir": str(zoo_dir.resolve()), "recipe": manifest.get("recipe"), "general": general_id,
            "general_weights": general.get("weights", "") if isinstance(general, dict) else ""}
    return ZooHistory(bank, tokens, ptm_metadata(manifest), info)


def fit_zoo(zoo_dir: str | os.PathLike, hparams: HParams | None = None) -> TransferGraph:
    """:func:`spider.transfergraph.fit` on a built zoo's history (:func:`zoo_history`)."""
    history = zoo_history(zoo_dir)
    return fit(history.bank, history.tokens, history.metadata, hparams, info=history.info)
