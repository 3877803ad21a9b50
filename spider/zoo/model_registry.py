"""Registry of zoo models whose architectures timm does not have (timm's ``register_model`` style).

A zoo model is registered with a factory ``fn(checkpoint: Path | None) -> ZooNet`` (``None``:
random initialisation where the architecture allows it) and a :class:`ZooModelInfo` saying where
its weights live (relative to the shared data folder) and how it expects its input.

Example:
    >>> from spider.zoo import create_zoo_model, get_zoo_model_info
    >>> info = get_zoo_model_info("mnist_cnn")           # input 28x28 grey, 128-d features
    >>> model = create_zoo_model("mnist_cnn")             # verified weights, eval mode
    >>> features, logits = model.features_and_logits(x)   # x float [N, 1, 28, 28], normalised
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spider.errors import SpiderError
from spider.registry import Registry
from spider.zoo.manifest import data_file


class ZooNet(nn.Module):
    """A network exposing its penultimate features and source-head logits.

    Subclasses implement :meth:`features_and_logits`; inputs are float ``[N, C, H, W]`` already
    resized to the model's input size and normalised with its mean/std.
    """

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, C, H, W]`` -> (features ``[N, D]``, logits ``[N, num_classes]``)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, D]`` (the input of the source classifier, pooled)."""
        return self.features_and_logits(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Source-head logits ``[N, num_classes]`` (before softmax)."""
        return self.features_and_logits(x)[1]


@dataclass(frozen=True)
class ZooModelInfo:
    """What a caller needs to feed a zoo model and interpret its outputs."""

    name: str
    checkpoint: str  # path relative to the shared data folder (spider.paths.data_dir())
    input_size: tuple[int, int]  # (height, width) in pixels
    in_chans: int  # 1 = grey, 3 = RGB
    mean: tuple[float, ...]  # per channel, on [0, 1] pixel values
    std: tuple[float, ...]
    feature_dim: int
    num_classes: int
    source: str  # dataset the model was trained on
    class_names: tuple[str, ...] = ()
    family: str = ""
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class ZooModelSpec:
    info: ZooModelInfo
    factory: Callable[[Path | None], ZooNet]


ZOO_MODELS: Registry[ZooModelSpec] = Registry("zoo model")


def register_zoo_model(
    name: str,
    *,
    checkpoint: str,
    input_size: tuple[int, int],
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    feature_dim: int,
    num_classes: int,
    source: str,
    class_names: tuple[str, ...] = (),
    family: str = "",
    interpolation: str = "bilinear",
) -> Callable[[Callable[[Path | None], ZooNet]], Callable[[Path | None], ZooNet]]:
    """Decorator registering a factory ``fn(checkpoint_path | None) -> ZooNet`` as ``name``."""
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"zoo model {name!r}: mean/std need {in_chans} values")
    if class_names and len(class_names) != num_classes:
        raise ValueError(f"zoo model {name!r}: {len(class_names)} class names for {num_classes}")
    info = ZooModelInfo(name, checkpoint, tuple(input_size), in_chans, tuple(mean), tuple(std),
                        feature_dim, num_classes, source, tuple(class_names), family,
                        interpolation)

    def decorator(factory: Callable[[Path | None], ZooNet]) -> Callable[[Path | None], ZooNet]:
        ZOO_MODELS.add(name, ZooModelSpec(info, factory), family=family, source=source)
        return factory

    return decorator


def list_zoo_models(pattern: str = "*") -> list[str]:
    return ZOO_MODELS.list(pattern)


def is_zoo_model(name: str) -> bool:
    return name in ZOO_MODELS


def get_zoo_model_info(name: str) -> ZooModelInfo:
    return ZOO_MODELS.get(name).info


def create_zoo_model(
    name: str, *, pretrained: bool = True, data_dir: str | Path | None = None,
    verify: bool = True, checkpoint: str | Path | None = None,
) -> ZooNet:
    """Build zoo model ``name`` in eval mode, with its real weights when ``pretrained``.

    The registered checkpoint is looked up under ``data_dir`` (default ``SPIDER_DATA_DIR`` /
    ``../shared/data``) and, when ``verify``, checked against the sha256 in ``MANIFEST.md``.
    ``checkpoint`` loads another file of the same architecture instead (no checksum to check).

    Raises:
        RegistryError: unknown name.  DataFileError: missing or corrupted checkpoint.
    """
    spec = ZOO_MODELS.get(name)
    if checkpoint is not None:
        path: Path | None = Path(checkpoint)
        if not path.is_file():
            raise SpiderError(f"checkpoint {path} for zoo model {name!r} does not exist")
    else:
        path = data_file(spec.info.checkpoint, data_dir, verify=verify) if pretrained else None
    model = spec.factory(path)
    return model.eval()


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.th`` file, unwrapped from ``{"state_dict": ...}`` and with a
    DataParallel ``module.`` prefix removed. Never unpickles arbitrary objects."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise SpiderError(f"cannot read checkpoint {path}: {type(err).__name__}") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SpiderError(f"checkpoint {path} holds {type(obj).__name__}, expected a state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error naming ``path``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
        raise SpiderError(
            f"checkpoint {path} does not fit {type(model).__name__}: {detail[:200]}"
        ) from None
