"""The Keras layer library of :mod:`spider.zoo.keras_port`: one torch block per Keras layer class.

Keras conventions handled here:

* channels_last weights: conv kernels are HWIO (torch wants OIHW), depthwise kernels are
  ``(kh, kw, in, multiplier)``, dense kernels are ``(in, out)``;
* ``padding="same"`` pads ``total = max((ceil(n/s) - 1) * s + k_eff - n, 0)`` pixels with the
  extra pixel at the bottom/right (asymmetric when ``total`` is odd, e.g. stride 2 on even sizes);
  max pooling pads with ``-inf`` so padding never wins;
* BatchNormalization epsilon (and center/scale) come from each layer's config;
* Flatten follows channels_last order (a Dense after it was trained on HWC-ordered vectors).

Blocks work on NCHW tensors. Only the classes of :data:`SUPPORTED_LAYERS` exist; activations are
looked up by name in a fixed table, so nothing read from a file is ever executed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spider.errors import SpiderError


class KerasPortError(SpiderError):
    """A Keras file uses something this port does not support, or its weights do not fit."""


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "softmax": lambda x: torch.softmax(x, dim=1),  # channel axis of NCHW / [N, C]
}
WEIGHTED_LAYERS = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Dense")
_INFERENCE_IDENTITY = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")
SUPPORTED_LAYERS = frozenset((
    "InputLayer", *WEIGHTED_LAYERS, *_INFERENCE_IDENTITY, "BatchNormalization", "MaxPooling2D",
    "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Activation", "ReLU",
    "Add", "Concatenate", "Flatten", "ZeroPadding2D",
))


def _activation(name: Any, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):  # TypeError: a serialised custom object (a dict), never run
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
        if int(cfg.get("groups", 1)) != 1:
            raise KerasPortError(f"layer {layer!r}: grouped convolutions are not supported")
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
            if depthwise.dim() != 4:
                raise KerasPortError(f"layer {layer!r}: depthwise kernel must be 4-d, "
                                     f"got shape {tuple(depthwise.shape)}")
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
        if x.dim() != 2:  # Keras applies Dense to the last axis; no model here needs that
            raise KerasPortError(f"Dense expects [N, features], got {list(x.shape)} (add a Flatten)")
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
        if self.padding not in ("same", "valid"):
            raise KerasPortError(f"layer {layer!r}: padding {self.padding!r} is not supported")

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
    if not torch.isfinite(source).all():
        raise KerasPortError(f"layer {layer!r}: weights hold non-finite values")
    with torch.no_grad():
        target.copy_(source.to(target.dtype))


def _flatten_channels_last(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x.permute(0, 2, 3, 1) if x.dim() == 4 else x, 1)


def _relu(cfg: dict, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if cfg.get("negative_slope") or cfg.get("threshold"):
        raise KerasPortError(f"layer {name!r}: ReLU negative_slope/threshold are not supported")
    if cfg.get("max_value") is None:
        return F.relu
    if float(cfg["max_value"]) != 6.0:
        raise KerasPortError(f"layer {name!r}: ReLU max_value {cfg['max_value']} (only 6)")
    return F.relu6


def _padding_pairs(padding: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    first, second = padding
    as_pair = lambda p: (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))  # noqa: E731
    return as_pair(first), as_pair(second)


def make_block(name: str, kind: str, cfg: dict, parents: list[torch.Tensor]) -> nn.Module:
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
        return _Lambda(_activation(cfg.get("activation"), name))
    if kind == "ReLU":
        return _Lambda(_relu(cfg, name))
    if kind in _INFERENCE_IDENTITY:
        return nn.Identity()  # inference only
    if kind == "Add":
        return _Lambda(lambda *xs: torch.stack(xs).sum(0))
    if kind == "Concatenate":
        if cfg.get("axis", -1) not in (-1, 3):
            raise KerasPortError(f"layer {name!r}: only channel concatenation is supported")
        return _Lambda(lambda *xs: torch.cat(xs, dim=1))
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        _check_channels_last(cfg, name)
        if cfg.get("keepdims"):
            raise KerasPortError(f"layer {name!r}: keepdims=True is not supported")
        if kind == "GlobalMaxPooling2D":
            return _Lambda(lambda x: x.amax(dim=(2, 3)))
        return _Lambda(lambda x: x.mean(dim=(2, 3)))
    if kind == "Flatten":
        _check_channels_last(cfg, name)
        return _Lambda(_flatten_channels_last)
    if kind == "ZeroPadding2D":
        _check_channels_last(cfg, name)
        (top, bottom), (left, right) = _padding_pairs(cfg["padding"])
        return _Lambda(lambda x: F.pad(x, (left, right, top, bottom)))
    # Unreachable for whitelisted classes; kept so a new whitelist entry cannot pass silently.
    raise KerasPortError(f"layer {name!r}: Keras layer type {kind!r} is not supported")
