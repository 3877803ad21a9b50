"""Extract penultimate features and source-head logits of pre-trained models into the feature store.

Models are either timm architectures with a local checkpoint (weights are never downloaded) or
models registered in :mod:`spider.zoo` (architectures timm lacks). Data is an image folder (one
sub-folder per class), an ``.npz`` with ``x``/``y`` arrays, or a dataset of :mod:`spider.zoo`.
Each image is converted to the model's channels (grey <-> RGB), resized to its input size (no
crop: small images would lose content) and normalised with its mean/std.

One store entry is written per (model, dataset, split), atomically, so an interrupted run leaves
nothing half-written and re-running skips the entries already present (resume).

CLI: ``spider extract`` / ``python -m spider.extract`` (:mod:`spider.extract`).

Python::

    model = load_model("mnist_cnn")                        # a zoo model, verified weights
    source = ImageFolderSource("my_photos/")
    extract_to_store(FeatureStore("features/"), model, source, dataset="photos")
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spider.errors import SpiderError, StoreError
from spider.progress import progress_bar
from spider.store import FeatureStore, StoreEntry, check_id
from spider.zoo import create_zoo_model, get_zoo_model_info, is_zoo_model, list_zoo_models
from spider.zoo.datasets import load_dataset
from spider.zoo.model_registry import load_state_dict_strict

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
# 16-bit grey PNG/TIFF open as I;16*, 16-bit PGM as I: their samples span 0..65535, and
# convert("L") would clip them at 255 instead of scaling them. They are scaled by 255/65535
# (32-bit I images are read as 16-bit: values outside 0..65535 are clipped).
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L"})
MAX_IMAGE_PIXELS = 80_000_000
"""Images with more pixels (width x height, read from the header) are refused before decoding.

Below PIL's own bomb threshold (89.5 M), so PIL never warns about an image this module accepts.
"""
DECODE_MAX_SIDE = 1024
"""Each side of an image is reduced to at most this many pixels on decode (JPEG: by libjpeg's
draft mode, so the full image is never held; others: right after decoding). Models take far
smaller inputs and :func:`preprocess` resizes every image to the model's size without cropping,
so this bounds memory without changing what the model sees beyond resampling differences."""
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


class ExtractError(SpiderError):
    """Bad input to feature extraction (model, checkpoint, image folder or array file)."""


# --------------------------------------------------------------------------------------- models

@dataclass
class PreparedModel:
    """A model in eval mode plus how to feed it and read it.

    ``run(x)`` maps normalised float ``[N, in_chans, H, W]`` to (features ``[N, D]``, logits
    ``[N, Cs]`` or ``None`` for a model without a classifier).
    """

    name: str
    module: nn.Module
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    in_chans: int
    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    info: dict[str, Any] = field(default_factory=dict)  # provenance kept in the store manifest


def load_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    data_dir: str | Path | None = None,
) -> PreparedModel:
    """A zoo model (by registered name) or a timm architecture with a local checkpoint.

    For timm, ``num_classes`` defaults to the size of the checkpoint's classifier and the input
    size/normalisation come from ``timm.data.resolve_model_data_config`` unless overridden
    (``input_size``, ``mean``, ``std``; ``in_chans`` for grey models). ``checkpoint=None`` keeps
    timm's random initialisation (for tests; real weights are never downloaded).
    """
    if model_kind(name) == "zoo":
        return _load_zoo_model(name, checkpoint, data_dir, input_size, mean, std)
    return _load_timm_model(name, checkpoint, num_classes, in_chans, input_size, mean, std)


def model_kind(name: str) -> str:
    """``"zoo"`` or ``"timm"``; ExtractError for a name neither knows."""
    if is_zoo_model(name):
        return "zoo"
    import timm

    if timm.is_model(name):
        return "timm"
    raise ExtractError(
        f"unknown model {name!r}: neither a zoo model ({', '.join(list_zoo_models())}) "
        f"nor a timm architecture"
    )


def _load_zoo_model(name, checkpoint, data_dir, input_size, mean, std) -> PreparedModel:
    info = get_zoo_model_info(name)
    model = create_zoo_model(name, data_dir=data_dir, checkpoint=checkpoint)
    return PreparedModel(
        name=name, module=model, run=model.features_and_logits, in_chans=info.in_chans,
        input_size=tuple(input_size or info.input_size),
        mean=_per_channel(mean or info.mean, info.in_chans, "mean"),
        std=_per_channel(std or info.std, info.in_chans, "std"),
        interpolation=info.interpolation,
        info={"kind": "zoo", "checkpoint": str(checkpoint or info.checkpoint),
              "source": info.source, "source_classes": list(info.class_names)},
    )


def _load_timm_model(name, checkpoint, num_classes, in_chans, input_size, mean, std) -> PreparedModel:
    import timm
    import timm.data

    state = None
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise ExtractError(f"checkpoint {path} does not exist")
        try:
            state = timm.models.load_state_dict(str(path), weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure to unpickle means a bad file
            raise ExtractError(f"cannot read checkpoint {path}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0][:120] if str(err) else ''}") from None
    kwargs: dict[str, Any] = {}
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    model = timm.create_model(name, pretrained=False, **kwargs)
    if state is not None and num_classes is None:
        num_classes = _checkpoint_num_classes(model, state)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    if state is not None:
        load_state_dict_strict(model, state, Path(checkpoint))
    model.eval()
    config = timm.data.resolve_model_data_config(model)
    chans = in_chans or int(config["input_size"][0])
    size = tuple(input_size) if input_size else tuple(int(s) for s in config["input_size"][1:])
    has_head = model.num_classes > 0

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        spatial = model.forward_features(x)
        features = model.forward_head(spatial, pre_logits=True)
        if features.dim() > 2:  # heads without pooling: average the remaining positions
            features = features.flatten(2).mean(2) if features.dim() == 4 else features.flatten(1)
        return features, (model.forward_head(spatial) if has_head else None)

    return PreparedModel(
        name=name, module=model, run=run, in_chans=chans, input_size=size,
        mean=_per_channel(mean or config["mean"], chans, "mean"),
        std=_per_channel(std or config["std"], chans, "std"),
        interpolation=str(config.get("interpolation", "bilinear")),
        info={"kind": "timm", "checkpoint": str(checkpoint) if checkpoint else None,
              "num_classes": model.num_classes},
    )


def _checkpoint_num_classes(model: nn.Module, state: dict) -> int | None:
    """Rows of the checkpoint's classifier weight (timm names it in ``pretrained_cfg``)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    for prefix in filter(None, names):
        weight = state.get(f"{prefix}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


def _per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:  # an RGB statistic for a grey model: use the channel average
        return (sum(values) / len(values),)
    raise ExtractError(f"{what}: expected 1 or {channels} values, got {len(values)}")


# ---------------------------------------------------------------------------------------- data

class ImageSource(Protocol):
    """Images with integer labels; rows keep a fixed order (store row i = sample i)."""

    labels: np.ndarray  # int64 [N]
    class_names: tuple[str, ...]
    sample_ids: np.ndarray  # [N] int or str
    description: str

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray | list[np.ndarray]:
        """uint8 images ``[B, H, W]`` / ``[B, H, W, C]``, or a list of ``[H, W(, C)]``."""
        ...


class ArraySource:
    """In-memory images: uint8 ``[N, H, W]`` (grey) or ``[N, H, W, C]`` (C = 1 or 3), or float
    in ``[0, 1]``; ``labels`` int ``[N]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None,
                 sample_ids: np.ndarray | None = None, description: str = "arrays") -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        where = description
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ExtractError(f"{where}: x must be [N, H, W] or [N, H, W, 1|3], got {list(images.shape)}")
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise ExtractError(f"{where}: x must be uint8 or float in [0, 1], got {images.dtype}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != images.shape[0]:
            raise ExtractError(f"{where}: y must be int [{images.shape[0]}], got {labels.dtype}{list(labels.shape)}")
        if images.shape[0] == 0:
            raise ExtractError(f"{where}: no images")
        if labels.min() < 0:
            raise ExtractError(f"{where}: y holds negative labels")
        self.images = images
        self.labels = labels.astype(np.int64)
        count = int(self.labels.max()) + 1
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(count))
        if len(self.class_names) < count:
            raise ExtractError(f"{where}: {len(self.class_names)} class names for labels up to {count - 1}")
        self.sample_ids = np.arange(len(labels), dtype=np.int64) if sample_ids is None else np.asarray(sample_ids)
        self.description = description

    @classmethod
    def from_npz(cls, path: str | Path) -> ArraySource:
        """``.npz`` with ``x`` and ``y`` (and optional ``class_names``, ``sample_ids``)."""
        path = Path(path)
        if not path.is_file():
            raise ExtractError(f"array file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                missing = [k for k in ("x", "y") if k not in arrays.files]
                if missing:
                    raise ExtractError(f"{path}: missing array {missing[0]!r} (expected x and y)")
                extra = {k: arrays[k] for k in ("class_names", "sample_ids") if k in arrays.files}
                x, y = arrays["x"], arrays["y"]
        except ExtractError:
            raise
        except Exception as err:  # noqa: BLE001 - zip/pickle/format errors all mean a bad file
            raise ExtractError(f"cannot read array file {path}: {type(err).__name__}") from None
        names = [str(n) for n in extra["class_names"]] if "class_names" in extra else None
        return cls(x, y, names, extra.get("sample_ids"), description=str(path))

    @classmethod
    def from_zoo_dataset(cls, name: str, split: str, data_dir: str | Path | None = None) -> ArraySource:
        data = load_dataset(name, split, data_dir=data_dir)
        return cls(data.images, data.labels, data.class_names, description=f"{name}:{split}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.images[start:stop]


class EmptyClassFolderWarning(UserWarning):
    """A class sub-folder of an image folder holds no image; the class is left out."""


class ImageFolderSource:
    """``root/<class>/<image>``: classes are the sorted sub-folder names; images are read with
    PIL (via torchvision's list of extensions) in sorted order. A class folder without images is
    left out with an :class:`EmptyClassFolderWarning` naming it. Images are decoded as described
    at :data:`MAX_IMAGE_PIXELS` and :data:`DECODE_MAX_SIDE`."""

    def __init__(self, root: str | Path) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.root = Path(root)
        if not self.root.is_dir():
            raise ExtractError(f"image folder {self.root} does not exist")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files: list[Path] = []
        labels: list[int] = []
        kept: list[str] = []
        empty: list[str] = []
        for name in classes:
            found = sorted(p for p in (self.root / name).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if found:
                labels += [len(kept)] * len(found)
                files += found
                kept.append(name)
            else:
                empty.append(name)
        if not files:
            raise ExtractError(
                f"no images found in {self.root} (expected one sub-folder per class holding "
                f"{'/'.join(sorted(IMG_EXTENSIONS))} files)"
            )
        if empty:  # one warning for all of them: a folder may hold many empty classes
            shown = ", ".join(map(repr, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
            warnings.warn(f"image folder {self.root}: class folder{'s' if len(empty) > 1 else ''} {shown} "
                          f"hold{'' if len(empty) > 1 else 's'} no image and {'are' if len(empty) > 1 else 'is'} "
                          "left out", EmptyClassFolderWarning, stacklevel=2)
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(kept)
        self.sample_ids = np.asarray([p.relative_to(self.root).as_posix() for p in files])
        self.description = str(self.root)

    def check(self) -> None:
        """Open every file's header so a broken image fails before any computation."""
        for path in self.files:
            _open_image(path, load=False)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        return [_open_image(p) for p in self.files[start:stop]]


def _open_image(path: Path, load: bool = True) -> np.ndarray | None:
    """uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` with each side at most :data:`DECODE_MAX_SIDE`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the pixel limit below is ours; PIL's warning would be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_large(path, width, height)
                if not load:
                    image.verify()
                    return None
                return _decode(image)
    except Image.DecompressionBombError:  # over PIL's own hard limit: refused before the header check
        raise _too_large(path, None, None) from None
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        raise ExtractError(f"unreadable image {path}: {type(err).__name__}") from None


def _too_large(path: Path, width: int | None, height: int | None) -> ExtractError:
    size = f"{width}x{height} = {width * height:,} pixels" if width else "more pixels than PIL allows"
    return ExtractError(f"image {path} is too large ({size}; at most {MAX_IMAGE_PIXELS:,} pixels "
                        "are read): downscale it first")


def _decode(image) -> np.ndarray:
    from PIL import Image

    grey = image.mode in _GREY_MODES
    width, height = image.size
    cap = (min(width, DECODE_MAX_SIDE), min(height, DECODE_MAX_SIDE))
    if cap != image.size:
        image.draft("L" if grey else "RGB", cap)  # JPEG decodes at 1/2, 1/4 or 1/8 size; others ignore it
    if image.mode not in _WIDE_MODES:
        image = image.convert("L" if grey else "RGB")
    if image.size != cap:
        # box-reduce by an integer factor first (cheap), then antialiased bilinear; 16-bit images are
        # reduced before scaling so that the full-size image is never copied at a wider type
        image = image.resize(cap, Image.Resampling.BILINEAR, reducing_gap=3.0)
    if image.mode in _WIDE_MODES:
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 0 -> 0, 65535 -> 255, rounded
    return np.asarray(image, dtype=np.uint8)


# ------------------------------------------------------------------------------- preprocessing

def preprocess(images: np.ndarray | Sequence[np.ndarray], model: PreparedModel) -> torch.Tensor:
    """uint8 (or [0, 1] float) images -> normalised float ``[B, in_chans, H, W]`` for ``model``."""
    if isinstance(images, np.ndarray):
        return _preprocess_batch(images, model)
    return torch.cat([_preprocess_batch(image[None], model) for image in images])


def _preprocess_batch(images: np.ndarray, model: PreparedModel) -> torch.Tensor:
    x = torch.from_numpy(np.array(images, copy=True))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    channels = x.shape[1]
    if channels != model.in_chans:
        if channels == 1:
            x = x.expand(-1, model.in_chans, -1, -1)
        elif channels == 3 and model.in_chans == 1:
            x = (x * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ExtractError(f"cannot convert {channels}-channel images for a "
                               f"{model.in_chans}-channel model {model.name!r}")
    if tuple(x.shape[2:]) != tuple(model.input_size):
        mode = model.interpolation if model.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        smooth = mode != "nearest"
        x = F.interpolate(x, size=tuple(model.input_size), mode=mode,
                          align_corners=False if smooth else None, antialias=smooth).clamp_(0.0, 1.0)
    mean = torch.tensor(model.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.std).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


# ---------------------------------------------------------------------------------- extraction

@dataclass
class Extraction:
    features: np.ndarray  # float32 [N, D]
    logits: np.ndarray | None  # float32 [N, Cs]


def extract(
    model: PreparedModel, source: ImageSource, *, batch_size: int = 128,
    device: str | torch.device | None = None, amp: bool = False, progress: bool = True,
    description: str | None = None,
) -> Extraction:
    """Run ``model`` over every image of ``source`` in order (``torch.inference_mode``)."""
    if batch_size < 1:
        raise ExtractError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module = model.module.to(device).eval()
    use_amp = amp and device.type == "cuda"
    features, logits = [], []
    total = len(source)
    with torch.inference_mode(), progress_bar(total, description or model.name, progress) as advance:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            x = preprocess(source.read(start, stop), model).to(device, non_blocking=True)
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                feats, head = model.run(x)
            features.append(feats.float().cpu().numpy())
            if head is not None:
                logits.append(head.float().cpu().numpy())
            advance(stop - start)
    module.to("cpu")
    return Extraction(np.concatenate(features), np.concatenate(logits) if logits else None)




def extract_to_store(
    store: FeatureStore, model: PreparedModel, source: ImageSource, *, dataset: str,
    split: str = "train", model_id: str | None = None, batch_size: int = 128,
    device: str | torch.device | None = None, amp: bool = False, progress: bool = True,
    overwrite: bool = False,
) -> tuple[StoreEntry, bool]:
    """Extract ``source`` with ``model`` into ``store`` as (model_id, dataset, split).

    Returns ``(entry, skipped)``; an existing entry is kept (resume) unless ``overwrite``. The
    sample ids are checked against other models' entries of the same (dataset, split), which
    must list the same samples in the same order.
    """
    model_id = check_id("model", model_id or model.name)
    check_id("dataset", dataset)
    check_id("split", split)
    if store.has(model_id, dataset, split) and not overwrite:
        return store.entry(model_id, dataset, split), True
    _check_same_samples(store, dataset, split, source)
    if isinstance(source, ImageFolderSource):
        source.check()
    result = extract(model, source, batch_size=batch_size, device=device, amp=amp,
                     progress=progress, description=f"{model_id} on {dataset}/{split}")
    info = dict(model.info, model=model.name, input_size=list(model.input_size),
                in_chans=model.in_chans, mean=list(model.mean), std=list(model.std),
                interpolation=model.interpolation, data=source.description, amp=bool(amp))
    entry = store.write(model_id, dataset, split, features=result.features, labels=source.labels,
                        logits=result.logits, sample_ids=source.sample_ids,
                        class_names=list(source.class_names), info=info, overwrite=overwrite)
    return entry, False


def _check_same_samples(store: FeatureStore, dataset: str, split: str, source: ImageSource) -> None:
    for other in store.models():
        if not store.has(other, dataset, split):
            continue
        ids = store.entry(other, dataset, split).sample_ids()
        if ids is None:
            continue
        if ids.shape != source.sample_ids.shape or not np.array_equal(ids.astype(str), source.sample_ids.astype(str)):
            raise StoreError(
                f"{store.path(other, dataset, split)}: lists different samples than "
                f"{source.description} (entries of one dataset/split must share rows; use another --dataset id)"
            )
        return
