"""Pre-train small timm models on real datasets, so the mini zoo has PTMs of families the real
weights of the shared data folder lack (ResNet, EfficientNet, ConvNeXt, ViT, MambaOut, ...).

A :class:`PretrainSpec` names a timm architecture, the datasets it learns (their union: labels of
the second dataset follow those of the first, and so on) and its native input (channels, size,
mean/std). Training feeds images through :func:`spider.pipeline.extract.preprocess` with the very settings
extraction will use later, so a checkpoint always sees its own normalisation.

Outputs, per spec, under ``<out>/<spec.id>/``:

* ``model.pth`` - the state dict (plain tensors: ``torch.load(..., weights_only=True)`` reads it,
  and so does ``timm.create_model(arch, num_classes=K, in_chans=C, checkpoint_path=...)``);
* ``config.json`` - written last: architecture, classes, native input (timm ``pretrained_cfg``
  style), the spec, its hash, held-out accuracy and the CPU/wall seconds spent.

A spec whose ``config.json`` exists with the same hash is not trained again (resume/idempotence);
a changed spec is retrained.

Example:
    >>> spec = PretrainSpec("test_vit.mnist", "test_vit", ("mnist",), in_chans=1, input_size=32,
    ...                     mean=(0.5,), std=(0.5,), epochs=2, max_per_source=5000)
    >>> result = pretrain(spec, "artifacts/minizoo/checkpoints")
    >>> model = load_pretrained(spec, "artifacts/minizoo/checkpoints")   # a PreparedModel
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spider.errors import SpiderError
from spider.io import write_bytes_atomic, write_json_atomic
from spider.progress import progress_bar
from spider.schedules import WarmupCosine

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.pth"


@dataclass(frozen=True)
class PretrainSpec:
    """One timm model pre-trained by us.

    ``sources`` are :mod:`spider.zoo` dataset names; each contributes its ``train`` split (or, for
    datasets shipped as one ``all`` split, all but ``holdout_fraction`` of every class), at most
    ``max_per_source`` images (seeded draw). ``epochs=0`` keeps the seeded random initialisation
    (a random-init encoder for ablations). Sizes are pixels; ``mean``/``std`` have ``in_chans``
    values on ``[0, 1]`` pixels.
    """

    id: str
    arch: str
    sources: tuple[str, ...]
    in_chans: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    epochs: int = 5
    lr: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    max_per_source: int | None = None
    holdout_fraction: float = 0.1
    eval_per_source: int = 2000
    flip: bool = False  # random horizontal flips (natural photos only; never digits/characters)
    seed: int = 0
    timm_kwargs: tuple[tuple[str, Any], ...] = ()  # extra timm.create_model arguments
    description: str = ""
    # ``((source, (class, ...)), ...)``: train on these classes of a source only (the others whole),
    # so that a PTM pre-trained on a pool dataset never sees the classes held out for targets.
    source_classes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise SpiderError(f"pretrain spec {self.id!r}: in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise SpiderError(f"pretrain spec {self.id!r}: mean/std need {self.in_chans} values")
        if not self.sources:
            raise SpiderError(f"pretrain spec {self.id!r}: no source datasets")
        if self.epochs < 0:
            raise SpiderError(f"pretrain spec {self.id!r}: epochs must be >= 0, got {self.epochs}")
        unknown = sorted({name for name, _ in self.source_classes} - set(self.sources))
        if unknown:
            raise SpiderError(f"pretrain spec {self.id!r}: source_classes names {unknown}, not among its "
                              f"sources {list(self.sources)}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["timm_kwargs"] = dict(self.timm_kwargs)
        if not self.source_classes:  # absent when unused: earlier specs (and their checkpoints) keep their hash
            del data["source_classes"]
        return data

    @property
    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PretrainResult:
    spec: PretrainSpec
    checkpoint: Path
    num_classes: int
    holdout_accuracy: float | None  # % on held-out images of the sources (None for epochs=0)
    cpu_seconds: float
    wall_seconds: float
    skipped: bool = False  # True when an up-to-date checkpoint was found
    log: list[dict[str, float]] = field(default_factory=list)


# ------------------------------------------------------------------------------------ data


@dataclass
class _LabelledImages:
    images: list[np.ndarray]  # per source: uint8 [n, H, W] or [n, H, W, 3]
    labels: list[np.ndarray]  # per source: int64 [n], already offset into the union's classes


def source_splits(spec: PretrainSpec, data_dir: str | Path | None = None
                  ) -> tuple[_LabelledImages, _LabelledImages, int]:
    """(train, held-out, number of union classes) for ``spec.sources``.

    Held-out images come from the official test split where there is one, else from the rows of
    each class kept out of training (``holdout_fraction``); at most ``eval_per_source`` per source.
    """
    from spider.zoo.datasets import DATASETS, load_dataset

    rng = np.random.default_rng([spec.seed, 7])
    train = _LabelledImages([], [])
    held = _LabelledImages([], [])
    offset = 0
    kept_classes = dict(spec.source_classes)
    for name in spec.sources:
        splits = DATASETS.get(name).splits
        if "train" in splits:
            data = _keep_classes(load_dataset(name, "train", data_dir=data_dir), kept_classes.get(name), spec)
            train_rows = np.arange(len(data))
            test = load_dataset(name, "test", data_dir=data_dir) if "test" in splits else None
            test = _keep_classes(test, kept_classes.get(name), spec) if test is not None else None
            held_images, held_labels = (test.images, test.labels) if test is not None else (None, None)
        else:
            data = _keep_classes(load_dataset(name, splits[0], data_dir=data_dir), kept_classes.get(name), spec)
            train_rows, held_rows = _holdout_rows(data.labels, spec.holdout_fraction, rng)
            held_images, held_labels = data.images[held_rows], data.labels[held_rows]
        if spec.max_per_source is not None and len(train_rows) > spec.max_per_source:
            train_rows = np.sort(rng.choice(train_rows, spec.max_per_source, replace=False))
        train.images.append(data.images[train_rows])
        train.labels.append(data.labels[train_rows] + offset)
        if held_images is not None and len(held_labels):
            keep = np.arange(len(held_labels))
            if len(keep) > spec.eval_per_source:
                keep = np.sort(rng.choice(keep, spec.eval_per_source, replace=False))
            held.images.append(held_images[keep])
            held.labels.append(held_labels[keep] + offset)
        offset += len(data.class_names)
    return train, held, offset


def _keep_classes(data, classes: tuple[int, ...] | None, spec: PretrainSpec):
    """``data`` restricted to ``classes`` (relabelled ``0..k-1`` in that order); all when None."""
    if classes is None:
        return data
    from spider.zoo.datasets import ArrayDataset

    kept = np.asarray(classes, dtype=np.int64)
    if len(kept) == 0 or len(set(kept.tolist())) != len(kept) or kept.min() < 0 or kept.max() >= len(data.class_names):
        raise SpiderError(f"pretrain spec {spec.id!r}: source_classes of {data.name!r} must be distinct class "
                          f"indices in [0, {len(data.class_names)}), got {list(classes)}")
    rows = np.flatnonzero(np.isin(data.labels, kept))
    relabel = np.full(len(data.class_names), -1, dtype=np.int64)
    relabel[kept] = np.arange(len(kept))
    return ArrayDataset(data.name, data.split, data.images[rows], relabel[data.labels[rows]],
                        tuple(data.class_names[int(c)] for c in kept))


def _holdout_rows(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, held = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(rows) * fraction)) if fraction > 0 else 0
        held.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


# ----------------------------------------------------------------------------------- model


def prepared_model(spec: PretrainSpec, checkpoint: str | Path | None = None, num_classes: int | None = None):
    """The spec's model as a :class:`spider.pipeline.extract.PreparedModel` (native size and mean/std).

    Without ``checkpoint`` the weights are timm's initialisation (seed the RNG first).
    """
    from spider.pipeline.extract import load_model

    if spec.timm_kwargs:
        raise SpiderError(f"pretrain spec {spec.id!r}: timm_kwargs are not supported by "
                          f"spider.pipeline.extract.load_model; use an architecture's defaults")
    return load_model(spec.arch, checkpoint=checkpoint, num_classes=num_classes, in_chans=spec.in_chans,
                      input_size=(spec.input_size, spec.input_size), mean=spec.mean, std=spec.std)


def checkpoint_path(out: str | Path, spec: PretrainSpec) -> Path:
    return Path(out) / spec.id / WEIGHTS_NAME


def read_config(out: str | Path, spec: PretrainSpec) -> dict | None:
    """The ``config.json`` of ``spec`` under ``out`` if it is complete and up to date, else None."""
    path = Path(out) / spec.id / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if config.get("spec_hash") != spec.hash or not checkpoint_path(out, spec).is_file():
        return None
    return config


def is_pretrained(out: str | Path, spec: PretrainSpec) -> bool:
    return read_config(out, spec) is not None


def load_pretrained(spec: PretrainSpec, out: str | Path):
    """A trained spec's model (PreparedModel, eval mode) from its checkpoint under ``out``."""
    config = read_config(out, spec)
    if config is None:
        raise SpiderError(f"{Path(out) / spec.id}: no up-to-date checkpoint of {spec.id!r} "
                          f"(run `python -m spider.zoo build` first)")
    return prepared_model(spec, checkpoint_path(out, spec), num_classes=int(config["num_classes"]))


# -------------------------------------------------------------------------------- training


def pretrain(spec: PretrainSpec, out: str | Path, *, data_dir: str | Path | None = None,
             progress: bool = True, threads: int | None = None) -> PretrainResult:
    """Train ``spec`` (unless an up-to-date checkpoint exists) and save it under ``out/spec.id``.

    Whole-network training from timm's initialisation: AdamW, linear warm-up then cosine decay,
    label smoothing, batches drawn without replacement each epoch (seeded).
    """
    from spider.pipeline.extract import preprocess

    config = read_config(out, spec)
    if config is not None:
        return PretrainResult(spec, checkpoint_path(out, spec), int(config["num_classes"]),
                              config.get("holdout_accuracy"), 0.0, 0.0, skipped=True)
    if threads:
        torch.set_num_threads(threads)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    train, held, num_classes = source_splits(spec, data_dir)
    torch.manual_seed(spec.seed)
    prepared = prepared_model(spec, num_classes=num_classes)
    model = prepared.module
    log: list[dict[str, float]] = []
    if spec.epochs > 0:
        log = _train(spec, prepared, train, num_classes, progress, preprocess)
    accuracy = _accuracy(prepared, held, preprocess) if held.labels and spec.epochs > 0 else None
    target = Path(out) / spec.id
    target.mkdir(parents=True, exist_ok=True)
    weights = checkpoint_path(out, spec)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(weights, lambda f: torch.save(state, f))
    _check_timm_reload(spec, weights, num_classes, model)
    result = PretrainResult(spec, weights, num_classes, accuracy, time.process_time() - cpu0,
                            time.perf_counter() - wall0, log=log)
    write_json_atomic(target / CONFIG_NAME, _config_json(spec, prepared, result, train), indent=1, sort_keys=True)
    return result


def _train(spec, prepared, train: _LabelledImages, num_classes: int, progress: bool, preprocess) -> list[dict]:
    model = prepared.module.train()
    images = train.images
    labels = np.concatenate(train.labels)
    # (source index, row in that source) of every training image, so batches can mix sources of
    # different image shapes: each source is preprocessed separately, then concatenated.
    where = np.concatenate([np.stack([np.full(len(l), s), np.arange(len(l))], 1)
                            for s, l in enumerate(train.labels)])
    steps_per_epoch = max(1, len(labels) // spec.batch_size)
    total = steps_per_epoch * spec.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(max(1, total // 20), total))
    generator = np.random.default_rng([spec.seed, 11])
    log = []
    with progress_bar(total, f"pretrain {spec.id}", progress) as advance:
        for epoch in range(spec.epochs):
            order = generator.permutation(len(labels))
            seen, loss_sum, correct = 0, 0.0, 0
            for step in range(steps_per_epoch):
                batch = order[step * spec.batch_size:(step + 1) * spec.batch_size]
                x = _batch(images, where[batch], prepared, preprocess)
                if spec.flip:
                    flip = torch.from_numpy(generator.random(len(batch)) < 0.5)
                    x = torch.where(flip[:, None, None, None], x.flip(3), x)
                y = torch.from_numpy(labels[batch])
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=spec.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                seen += len(batch)
                loss_sum += float(loss.detach()) * len(batch)
                correct += int((logits.argmax(1) == y).sum())
                advance(1)
            log.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": 100.0 * correct / seen})
    model.eval()
    return log


def _batch(images: list[np.ndarray], where: np.ndarray, prepared, preprocess) -> torch.Tensor:
    """Preprocessed ``[B, C, H, W]`` of the rows ``where[:, 1]`` of sources ``where[:, 0]``."""
    parts, positions = [], []
    for source in np.unique(where[:, 0]):
        pick = np.flatnonzero(where[:, 0] == source)
        parts.append(preprocess(images[source][where[pick, 1]], prepared))
        positions.append(pick)
    x = torch.cat(parts)
    order = np.argsort(np.concatenate(positions), kind="stable")
    return x[torch.from_numpy(order)]


@torch.inference_mode()
def _accuracy(prepared, held: _LabelledImages, preprocess, batch_size: int = 512) -> float:
    model = prepared.module.eval()
    correct = total = 0
    for images, labels in zip(held.images, held.labels):
        for start in range(0, len(labels), batch_size):
            x = preprocess(images[start:start + batch_size], prepared)
            pred = model(x).argmax(1).numpy()
            correct += int((pred == labels[start:start + batch_size]).sum())
            total += len(pred)
    return 100.0 * correct / max(total, 1)


def _check_timm_reload(spec: PretrainSpec, weights: Path, num_classes: int, model: torch.nn.Module) -> None:
    """Load the saved file back through timm's ``checkpoint_path`` and compare outputs."""
    import timm

    reloaded = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes, in_chans=spec.in_chans,
                                 checkpoint_path=str(weights)).eval()
    x = torch.randn(2, spec.in_chans, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        same = torch.allclose(reloaded(x), model.eval()(x), atol=1e-5, rtol=1e-4)
    if not same:
        raise SpiderError(f"{weights}: timm checkpoint_path reload of {spec.arch!r} gives other outputs")


def _config_json(spec: PretrainSpec, prepared, result: PretrainResult, train: _LabelledImages) -> dict:
    return {
        "architecture": spec.arch,
        "num_classes": result.num_classes,
        "in_chans": spec.in_chans,
        "pretrained_cfg": {"input_size": [spec.in_chans, spec.input_size, spec.input_size],
                           "mean": list(prepared.mean), "std": list(prepared.std),
                           "interpolation": prepared.interpolation, "crop_pct": 1.0},
        "sources": list(spec.sources),
        "train_images": int(sum(len(l) for l in train.labels)),
        "holdout_accuracy": result.holdout_accuracy,
        "cpu_seconds": round(result.cpu_seconds, 1),
        "wall_seconds": round(result.wall_seconds, 1),
        "log": result.log,
        "spec": spec.to_dict(),
        "spec_hash": spec.hash,
    }


# ------------------------------------------------------------------------------- helpers


