"""Torch port of Keras 2 functional models stored as ``.hdf5`` (the mini/big/tiny XCEPTION faces).

The architecture is rebuilt from the JSON in the file's ``model_config`` attribute and the weights
are read with h5py; TensorFlow is never imported. Keras conventions handled here:

* channels_last weights: conv kernels are HWIO (torch wants OIHW), depthwise kernels are
  ``(kh, kw, in, multiplier)``, dense kernels are ``(in, out)``;
* ``padding="same"`` pads ``total = max((ceil(n/s) - 1) * s + k_eff - n, 0)`` pixels with the
  extra pixel at the bottom/right (asymmetric when ``total`` is odd, e.g. stride 2 on even sizes);
  max pooling pads with ``-inf`` so padding never wins;
* BatchNormalization epsilon (and center/scale) come from each layer's config;
* Flatten follows channels_last order.

The tensors inside the port are NCHW; the input is float ``[N, C, H, W]`` (for the face models
``[N, 1, 64, 64]`` holding ``x / 255 * 2 - 1``). Features are the global average of the input of
the last weighted layer (the classifier); logits are the input of the final softmax.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spider.errors import SpiderError
from spider.zoo.model_registry import ZooNet, register_zoo_model

FER_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
GENDERS = ("woman", "man")


class KerasPortError(SpiderError):
    """A Keras file uses something this port does not support, or its weights do not fit."""


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "softmax": lambda x: torch.softmax(x, dim=1),  # channel axis of NCHW / [N, C]
}


def _activation(name: str, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise KerasPortError(f"layer {layer!r}: activation {name!r} is not supported") from None


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of Keras/TensorFlow ``"same"`` along one spatial axis."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride, dilation=(1, 1), value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _check_channels_last(cfg: dict, layer: str) -> None:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise KerasPortError(f"layer {layer!r}: only channels_last models are supported")


class KerasConv2D(nn.Module):
    """Conv2D / SeparableConv2D / DepthwiseConv2D with Keras padding and fused activation."""

    def __init__(self, kind: str, cfg: dict, in_channels: int, layer: str) -> None:
        super().__init__()
        _check_channels_last(cfg, layer)
        self.kind = kind
        self.kernel = _pair(cfg["kernel_size"])
        self.stride = _pair(cfg.get("strides", 1))
        self.dilation = _pair(cfg.get("dilation_rate", 1))
        self.padding = cfg.get("padding", "valid")
        if self.padding not in ("same", "valid"):
            raise KerasPortError(f"layer {layer!r}: padding {self.padding!r} is not supported")
        self.activation = _activation(cfg.get("activation", "linear"), layer)
        use_bias = bool(cfg.get("use_bias", True))
        if kind == "Conv2D":
            self.out_channels = int(cfg["filters"])
            self.conv = nn.Conv2d(in_channels, self.out_channels, self.kernel, self.stride,
                                  dilation=self.dilation, bias=use_bias)
            self.pointwise = None
        else:
            multiplier = int(cfg.get("depth_multiplier", 1))
            depth_out = in_channels * multiplier
            separable = kind == "SeparableConv2D"
            self.conv = nn.Conv2d(in_channels, depth_out, self.kernel, self.stride,
                                  dilation=self.dilation, groups=in_channels,
                                  bias=use_bias and not separable)
            self.out_channels = int(cfg["filters"]) if separable else depth_out
            self.pointwise = (nn.Conv2d(depth_out, self.out_channels, 1, bias=use_bias)
                              if separable else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = _pad_same(x, self.kernel, self.stride, self.dilation)
        x = self.conv(x)
        if self.pointwise is not None:
            x = self.pointwise(x)
        return self.activation(x)

    def load_keras(self, weights: dict[str, np.ndarray], layer: str) -> None:
        def tensor(key: str) -> torch.Tensor:
            return _weight(weights, key, layer)

        if self.kind == "Conv2D":
            _copy(self.conv.weight, tensor("kernel").permute(3, 2, 0, 1), layer)
            bias_owner = self.conv
        else:
            depthwise = tensor("depthwise_kernel")  # (kh, kw, in, multiplier)
            kh, kw, cin, mult = depthwise.shape
            # Keras orders depthwise outputs as in_channel * multiplier + m, as torch groups do.
            _copy(self.conv.weight, depthwise.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw),
                  layer)
            if self.pointwise is not None:
                _copy(self.pointwise.weight, tensor("pointwise_kernel").permute(3, 2, 0, 1), layer)
                bias_owner = self.pointwise
            else:
                bias_owner = self.conv
        if bias_owner.bias is not None:
            _copy(bias_owner.bias, tensor("bias"), layer)


class KerasBatchNorm(nn.BatchNorm2d):
    def __init__(self, cfg: dict, channels: int, layer: str) -> None:
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 3):  # the channel axis of channels_last
            raise KerasPortError(f"layer {layer!r}: BatchNormalization axis {axis} not supported")
        super().__init__(channels, eps=float(cfg.get("epsilon", 1e-3)))
        self.center = bool(cfg.get("center", True))
        self.scale = bool(cfg.get("scale", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # after Flatten/Dense: [N, C]
            return super().forward(x[:, :, None, None])[:, :, 0, 0]
        return super().forward(x)

    def load_keras(self, weights: dict[str, np.ndarray], layer: str) -> None:
        _copy(self.running_mean, _weight(weights, "moving_mean", layer), layer)
        _copy(self.running_var, _weight(weights, "moving_variance", layer), layer)
        if self.scale:  # otherwise gamma stays 1 (not stored)
            _copy(self.weight, _weight(weights, "gamma", layer), layer)
        if self.center:  # otherwise beta stays 0
            _copy(self.bias, _weight(weights, "beta", layer), layer)


class KerasDense(nn.Linear):
    def __init__(self, cfg: dict, in_features: int, layer: str) -> None:
        super().__init__(in_features, int(cfg["units"]), bias=bool(cfg.get("use_bias", True)))
        self.activation = _activation(cfg.get("activation", "linear"), layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(super().forward(x))

    def load_keras(self, weights: dict[str, np.ndarray], layer: str) -> None:
        _copy(self.weight, _weight(weights, "kernel", layer).T, layer)
        if self.bias is not None:
            _copy(self.bias, _weight(weights, "bias", layer), layer)


class KerasPool2D(nn.Module):
    def __init__(self, kind: str, cfg: dict, layer: str) -> None:
        super().__init__()
        _check_channels_last(cfg, layer)
        self.kind = kind
        self.kernel = _pair(cfg.get("pool_size", 2))
        self.stride = _pair(cfg.get("strides") or self.kernel)
        self.padding = cfg.get("padding", "valid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "MaxPooling2D":
            if self.padding == "same":
                x = _pad_same(x, self.kernel, self.stride, value=-math.inf)
            return F.max_pool2d(x, self.kernel, self.stride)
        if self.padding != "same":
            return F.avg_pool2d(x, self.kernel, self.stride)
        # TensorFlow averages over the real pixels only: divide by the pooled count of ones.
        ones = _pad_same(torch.ones_like(x[:1, :1]), self.kernel, self.stride)
        sums = F.avg_pool2d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)
        return sums / F.avg_pool2d(ones, self.kernel, self.stride)


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)


def _weight(weights: dict[str, np.ndarray], key: str, layer: str) -> torch.Tensor:
    if key not in weights:
        raise KerasPortError(f"layer {layer!r}: weight {key!r} missing in the file")
    return torch.from_numpy(np.ascontiguousarray(weights[key]))


def _copy(target: torch.Tensor, source: torch.Tensor, layer: str) -> None:
    if tuple(target.shape) != tuple(source.shape):
        raise KerasPortError(
            f"layer {layer!r}: weight shape {tuple(source.shape)} does not fit {tuple(target.shape)}"
        )
    with torch.no_grad():
        target.copy_(source.to(target.dtype))


def _flatten_channels_last(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x.permute(0, 2, 3, 1) if x.dim() == 4 else x, 1)


class KerasFunctionalNet(ZooNet):
    """A Keras functional ``Model`` config executed in torch (NCHW inside).

    Args:
        config: the ``"config"`` part of a Keras 2 ``model_config`` (layers, input/output layers).
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.layer_names: list[str] = []
        self.inbound: dict[str, list[str]] = {}
        self.blocks = nn.ModuleDict()
        self.layer_class: dict[str, str] = {}
        self._build(config)

    # -- construction ------------------------------------------------------------------------
    def _build(self, config: dict) -> None:
        inputs = [entry[0] for entry in config["input_layers"]]
        outputs = [entry[0] for entry in config["output_layers"]]
        if len(inputs) != 1 or len(outputs) != 1:
            raise KerasPortError("only single-input, single-output Keras models are supported")
        self.input_name, self.output_name = inputs[0], outputs[0]
        # A dummy sample flows through each new block so every layer sees its real input shape.
        probes: dict[str, torch.Tensor] = {}
        for spec in config["layers"]:
            name, kind, cfg = spec["name"], spec["class_name"], spec["config"]
            nodes = spec.get("inbound_nodes", [])
            if len(nodes) > 1:
                raise KerasPortError(f"layer {name!r} is shared ({len(nodes)} calls): unsupported")
            parents = [entry[0] for entry in nodes[0]] if nodes else []
            missing = [p for p in parents if p not in probes]
            if missing:
                raise KerasPortError(f"layer {name!r} reads {missing[0]!r} before it is defined")
            self.layer_names.append(name)
            self.inbound[name] = parents
            self.layer_class[name] = kind
            if kind == "InputLayer":
                probes[name] = self._input_probe(name, cfg)
                continue
            parent_probes = [probes[p] for p in parents]
            self.blocks[name] = self._make_block(name, kind, cfg, parent_probes)
            with torch.no_grad():
                probes[name] = self.blocks[name].eval()(*parent_probes)
        if self.output_name not in probes:
            raise KerasPortError(f"output layer {self.output_name!r} is not defined")
        self.head_name = self._find_head()

    def _input_probe(self, name: str, cfg: dict) -> torch.Tensor:
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if shape is None or len(shape) != 4:
            raise KerasPortError(f"input layer {name!r}: expected a [N, H, W, C] input shape")
        height, width, channels = (int(s) if s is not None else 32 for s in shape[1:])
        self.input_shape = (channels, height, width)
        return torch.zeros(1, channels, height, width)

    def _make_block(self, name: str, kind: str, cfg: dict, parents: list[torch.Tensor]) -> nn.Module:
        """The torch block computing one Keras layer from its parents' (NCHW) outputs."""
        channels = parents[0].shape[1]
        if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
            return KerasConv2D(kind, cfg, channels, name)
        if kind == "BatchNormalization":
            return KerasBatchNorm(cfg, channels, name)
        if kind == "Dense":
            return KerasDense(cfg, channels, name)
        if kind in ("MaxPooling2D", "AveragePooling2D"):
            return KerasPool2D(kind, cfg, name)
        if kind == "Activation":
            return _Lambda(_activation(cfg["activation"], name))
        if kind == "ReLU":
            if cfg.get("max_value") is not None or cfg.get("negative_slope", 0.0):
                raise KerasPortError(f"layer {name!r}: ReLU options are not supported")
            return _Lambda(F.relu)
        if kind in ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout"):
            return nn.Identity()  # inference only
        if kind == "Add":
            return _Lambda(lambda *xs: torch.stack(xs).sum(0))
        if kind == "Concatenate":
            if cfg.get("axis", -1) not in (-1, 3):
                raise KerasPortError(f"layer {name!r}: only channel concatenation is supported")
            return _Lambda(lambda *xs: torch.cat(xs, dim=1))
        if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            _check_channels_last(cfg, name)
            if kind == "GlobalMaxPooling2D":
                return _Lambda(lambda x: x.amax(dim=(2, 3)))
            return _Lambda(lambda x: x.mean(dim=(2, 3)))
        if kind == "Flatten":
            return _Lambda(_flatten_channels_last)
        if kind == "ZeroPadding2D":
            (top, bottom), (left, right) = _padding_pairs(cfg["padding"])
            return _Lambda(lambda x: F.pad(x, (left, right, top, bottom)))
        raise KerasPortError(f"layer {name!r}: Keras layer type {kind!r} is not supported")

    def _find_head(self) -> str:
        """The last layer with weights on the path to the output (the source classifier)."""
        name = self.output_name
        while name != self.input_name:
            if self.layer_class[name] in ("Conv2D", "SeparableConv2D", "Dense"):
                return name
            if len(self.inbound[name]) != 1:
                break
            name = self.inbound[name][0]
        raise KerasPortError("no single-path classifier layer found before the model output")

    # -- weights -----------------------------------------------------------------------------
    def load_keras_weights(self, group: h5py.Group) -> None:
        """Copy weights from the ``model_weights`` group of a Keras 2 ``.hdf5`` file."""
        for name, block in self.blocks.items():
            if not hasattr(block, "load_keras"):
                continue
            if name not in group:
                raise KerasPortError(f"layer {name!r} has no weights in the file")
            layer_group = group[name]
            weights = {}
            for raw in layer_group.attrs.get("weight_names", []):
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                key = path.rsplit("/", 1)[-1].split(":")[0]
                weights[key] = np.asarray(layer_group[path], dtype=np.float32)
            block.load_keras(weights, name)

    # -- inference ---------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, stop_at: set[str]) -> dict[str, torch.Tensor]:
        values = {self.input_name: x}
        for name in self.layer_names:
            if name == self.input_name:
                continue
            values[name] = self.blocks[name](*(values[p] for p in self.inbound[name]))
            if stop_at <= values.keys():
                break
        return values

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            raise KerasPortError(
                f"expected input [N, {self.input_shape[0]}, H, W], got {list(x.shape)}"
            )
        logits_name = self.output_name
        if (self.layer_class[logits_name] == "Activation"
                and self.inbound[logits_name]
                and self.blocks[logits_name].fn is _ACTIVATIONS["softmax"]):
            logits_name = self.inbound[logits_name][0]
        feature_name = self.inbound[self.head_name][0]
        values = self._run(x, {feature_name, logits_name})
        features = values[feature_name]
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))
        return features, values[logits_name]


def _padding_pairs(padding: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    first, second = padding
    as_pair = lambda p: (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))  # noqa: E731
    return as_pair(first), as_pair(second)


def read_keras_config(path: str | Path) -> dict:
    """The ``model_config`` JSON of a Keras ``.hdf5`` file (``{"class_name", "config"}``)."""
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get("model_config")
    if raw is None:
        raise KerasPortError(f"{path} has no 'model_config' attribute (not a Keras model file)")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def load_keras_model(path: str | Path, *, load_weights: bool = True) -> KerasFunctionalNet:
    """Build the torch port of the Keras model in ``path`` (eval mode), optionally with weights."""
    config = read_keras_config(path)
    if config.get("class_name") not in ("Model", "Functional"):
        raise KerasPortError(f"{path}: only functional Keras models are supported, "
                             f"got {config.get('class_name')!r}")
    model = KerasFunctionalNet(config["config"])
    if load_weights:
        with h5py.File(path, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            model.load_keras_weights(group)
    return model.eval()


def _factory(checkpoint_hint: str):
    def build(checkpoint: Path | None) -> KerasFunctionalNet:
        if checkpoint is None:
            # The architecture lives inside the weight file: random init still needs the file.
            from spider.zoo.manifest import data_file

            return load_keras_model(data_file(checkpoint_hint), load_weights=False)
        return load_keras_model(checkpoint)

    return build


_FACE_MODELS = (
    # name, file, feature dim, classes, source
    ("fer2013_mini_xception", "fer2013_mini_XCEPTION.102-0.66.hdf5", 128, FER_EMOTIONS, "fer2013"),
    ("fer2013_big_xception", "fer2013_big_XCEPTION.54-0.66.hdf5", 256, FER_EMOTIONS, "fer2013"),
    ("gender_mini_xception", "gender_mini_XCEPTION.21-0.95.hdf5", 128, GENDERS, "imdb_gender"),
    ("kdef_mini_xception", "mini_XCEPTION_KDEF.hdf5", 128, FER_EMOTIONS, "kdef"),
    ("kdef_tiny_xception", "tiny_XCEPTION_KDEF.hdf5", 64, FER_EMOTIONS, "kdef"),
)

for _name, _file, _dim, _classes, _source in _FACE_MODELS:
    register_zoo_model(
        _name, checkpoint=f"weights/faces/{_file}", input_size=(64, 64), in_chans=1,
        mean=(0.5,), std=(0.5,),  # x / 255 * 2 - 1
        feature_dim=_dim, num_classes=len(_classes), source=_source, class_names=_classes,
        family="keras_xception",
    )(_factory(f"weights/faces/{_file}"))
