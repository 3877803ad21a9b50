"""Torch port of Keras models stored as HDF5 (``.h5``/``.hdf5``): a small Keras layer library.

The architecture is a Keras ``model_config`` JSON (a ``Sequential`` or functional ``Model``,
Keras 2 or 3) read from the file's attribute, from a separate ``.json`` file, or written out in
code (:mod:`spider.zoo.keras_models` does so for MobileNet v1); the weights are read with h5py.
Neither TensorFlow nor Keras is imported, and nothing read from a file is executed: the JSON is
parsed as data and every layer class must be one of :data:`SUPPORTED_LAYERS`.

Keras conventions handled here:

* channels_last weights: conv kernels are HWIO (torch wants OIHW), depthwise kernels are
  ``(kh, kw, in, multiplier)``, dense kernels are ``(in, out)``;
* ``padding="same"`` pads ``total = max((ceil(n/s) - 1) * s + k_eff - n, 0)`` pixels with the
  extra pixel at the bottom/right (asymmetric when ``total`` is odd, e.g. stride 2 on even sizes);
  max pooling pads with ``-inf`` so padding never wins;
* BatchNormalization epsilon (and center/scale) come from each layer's config;
* Flatten follows channels_last order (a Dense after it was trained on HWC-ordered vectors).

The tensors inside the port are NCHW; the input is float ``[N, C, H, W]`` already normalised the
way the Keras model was trained. Features are the input of the source classifier (the last
weighted layer before the output), globally averaged when spatial; logits are the classifier's
pre-softmax output (a final softmax, as a layer or as the classifier's activation, is dropped).
A ``headless`` model (e.g. an ``include_top=False`` backbone) returns its pooled output as
features and no logits.
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
from spider.zoo.manifest import data_file
from spider.zoo.model_registry import ZooNet


class KerasPortError(SpiderError):
    """A Keras file uses something this port does not support, or its weights do not fit."""


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "softmax": lambda x: torch.softmax(x, dim=1),  # channel axis of NCHW / [N, C]
}
_WEIGHTED = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Dense")
_INFERENCE_IDENTITY = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")
SUPPORTED_LAYERS = frozenset((
    "InputLayer", *_WEIGHTED, *_INFERENCE_IDENTITY, "BatchNormalization", "MaxPooling2D",
    "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Activation", "ReLU",
    "Add", "Concatenate", "Flatten", "ZeroPadding2D",
))


def _activation(name: Any, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
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


def _make_block(name: str, kind: str, cfg: dict, parents: list[torch.Tensor]) -> nn.Module:
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


# ------------------------------------------------------------------------ config -> layer graph

def _layer_name(spec: dict) -> str:
    name = spec.get("name") or (spec.get("config") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise KerasPortError(f"a {spec.get('class_name')!r} layer has no name")
    return name


def _parents(spec: dict, name: str) -> list[str]:
    """Names of the layers feeding ``name`` (Keras 2 functional ``inbound_nodes`` layout)."""
    nodes = spec.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise KerasPortError(f"layer {name!r} is shared ({len(nodes)} calls): unsupported")
    if not nodes:
        return []
    node = nodes[0]
    if not isinstance(node, list) or not all(isinstance(e, list) and e and isinstance(e[0], str)
                                             for e in node):
        raise KerasPortError(f"layer {name!r}: inbound node format not supported "
                             f"(only Keras 2 functional configs)")
    return [entry[0] for entry in node]


def _graph(model_config: dict) -> tuple[list[tuple[str, str, dict, list[str]]], str, str]:
    """``([(name, class, config, parents)], input name, output name)`` of a Sequential or
    functional ``model_config`` (``{"class_name", "config"}``)."""
    if not isinstance(model_config, dict):
        raise KerasPortError("the model config is not a JSON object")
    kind, body = model_config.get("class_name"), model_config.get("config")
    layers = body if isinstance(body, list) else (body or {}).get("layers")  # Keras < 2.2: a list
    if not isinstance(layers, list) or not layers or not all(isinstance(s, dict) for s in layers):
        raise KerasPortError(f"the {kind!r} model config has no list of layers")
    if kind == "Sequential":
        return _sequential_graph(layers)
    if kind not in ("Model", "Functional"):
        raise KerasPortError(f"only Sequential and functional Keras models are supported, got {kind!r}")
    inputs = [entry[0] for entry in body.get("input_layers", [])]
    outputs = [entry[0] for entry in body.get("output_layers", [])]
    if len(inputs) != 1 or len(outputs) != 1:
        raise KerasPortError("only single-input, single-output Keras models are supported")
    graph = []
    for spec in layers:
        name = _layer_name(spec)
        graph.append((name, spec.get("class_name"), spec.get("config") or {}, _parents(spec, name)))
    return graph, inputs[0], outputs[0]


def _sequential_graph(layers: list[dict]) -> tuple[list[tuple[str, str, dict, list[str]]], str, str]:
    graph: list[tuple[str, str, dict, list[str]]] = []
    first = layers[0].get("config") or {}
    if layers[0].get("class_name") != "InputLayer":
        # Keras 2 Sequential without an explicit input: the first layer carries the shape.
        shape = first.get("batch_input_shape") or first.get("batch_shape")
        graph.append(("input", "InputLayer", {"batch_input_shape": shape}, []))
    for spec in layers:
        name = _layer_name(spec)
        graph.append((name, spec.get("class_name"), spec.get("config") or {},
                      [graph[-1][0]] if graph else []))
    return graph, graph[0][0], graph[-1][0]


class KerasNet(ZooNet):
    """A Keras model config executed in torch (NCHW inside).

    Args:
        model_config: a Keras ``model_config`` (``{"class_name": "Sequential" | "Model" |
            "Functional", "config": {...}}``), as stored in ``.h5`` files.
        headless: the model has no classifier (features = its pooled output, no logits).
        input_hw: the (height, width) used to trace shapes when the config leaves them open.
    """

    def __init__(self, model_config: dict, *, headless: bool = False,
                 input_hw: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        self.layer_names: list[str] = []
        self.inbound: dict[str, list[str]] = {}
        self.blocks = nn.ModuleDict()
        self.layer_class: dict[str, str] = {}
        self.headless = headless
        graph, self.input_name, self.output_name = _graph(model_config)
        self._build(graph, input_hw)

    # -- construction ------------------------------------------------------------------------
    def _build(self, graph: list[tuple[str, str, dict, list[str]]], input_hw: tuple[int, int]) -> None:
        # A dummy sample flows through each new block so every layer sees its real input shape.
        probes: dict[str, torch.Tensor] = {}
        drop_softmax = self._final_softmax_owner(graph)
        for name, kind, cfg, parents in graph:
            if kind not in SUPPORTED_LAYERS:
                raise KerasPortError(f"layer {name!r}: Keras layer type {kind!r} is not supported")
            if not isinstance(cfg, dict):
                raise KerasPortError(f"layer {name!r}: its config is not a JSON object")
            if name in probes or name in self.inbound:
                raise KerasPortError(f"layer {name!r} is defined twice")
            missing = [p for p in parents if p not in probes]
            if missing:
                raise KerasPortError(f"layer {name!r} reads {missing[0]!r} before it is defined")
            if kind != "InputLayer" and not parents:
                raise KerasPortError(f"layer {name!r} has no input")
            self.layer_names.append(name)
            self.inbound[name] = parents
            self.layer_class[name] = kind
            if kind == "InputLayer":
                probes[name] = self._input_probe(name, cfg, input_hw)
                continue
            if name == drop_softmax:
                # The port returns logits: the classifier's softmax is applied by nobody.
                cfg = dict(cfg, activation="linear")
            parent_probes = [probes[p] for p in parents]
            try:
                self.blocks[name] = _make_block(name, kind, cfg, parent_probes)
                with torch.no_grad():
                    probes[name] = self.blocks[name].eval()(*parent_probes)
            except KerasPortError:
                raise
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
                raise KerasPortError(f"layer {name!r} ({kind}): bad config or input shape: "
                                     f"{type(err).__name__} {detail}") from None
        if self.input_name != self.layer_names[0] or self.layer_class[self.input_name] != "InputLayer":
            raise KerasPortError(f"input layer {self.input_name!r} is not the first InputLayer")
        if self.output_name not in probes:
            raise KerasPortError(f"output layer {self.output_name!r} is not defined")
        self.logits_name = self._logits_layer()
        self.head_name = None if self.headless else self._find_head()
        self.feature_name = self.output_name if self.headless else self.inbound[self.head_name][0]

    def _final_softmax_owner(self, graph) -> str | None:
        """The output layer when it is a weighted layer with a fused softmax, else None."""
        for name, kind, cfg, _ in graph:
            if (name == self.output_name and kind in _WEIGHTED and isinstance(cfg, dict)
                    and cfg.get("activation") == "softmax"):
                return name
        return None

    def _logits_layer(self) -> str:
        name = self.output_name
        if (self.layer_class[name] == "Activation"
                and self.blocks[name].fn is _ACTIVATIONS["softmax"]):
            name = self.inbound[name][0]
        return name

    def _input_probe(self, name: str, cfg: dict, input_hw: tuple[int, int]) -> torch.Tensor:
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if not isinstance(shape, list) or len(shape) != 4 or shape[3] is None:
            raise KerasPortError(f"input layer {name!r}: expected a [N, H, W, C] input shape, got {shape}")
        height = int(shape[1]) if shape[1] is not None else input_hw[0]
        width = int(shape[2]) if shape[2] is not None else input_hw[1]
        channels = int(shape[3])
        self.input_shape = (channels, height, width)
        return torch.zeros(1, channels, height, width)

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
        """Copy weights from the ``model_weights`` group of a Keras ``.h5`` (or from the root of
        a weights-only file)."""
        for name, block in self.blocks.items():
            if not hasattr(block, "load_keras"):
                continue
            if name not in group or not isinstance(group[name], h5py.Group):
                raise KerasPortError(f"layer {name!r} has no weights in the file")
            layer_group = group[name]
            weights = {}
            for raw in layer_group.attrs.get("weight_names", []):
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                # Keras 2: "conv2d/kernel:0"; Keras 3: "sequential/conv2d/kernel"
                key = path.rsplit("/", 1)[-1].split(":")[0]
                if path not in layer_group or not isinstance(layer_group[path], h5py.Dataset):
                    raise KerasPortError(f"layer {name!r}: weight {path!r} listed but absent")
                weights[key] = np.asarray(layer_group[path], dtype=np.float32)
            block.load_keras(weights, name)
        # A weighted layer of the file that the architecture lacks means the two do not match
        # (e.g. an architecture written out in code that skipped a layer).
        for name in group:
            item = group[name]
            if (isinstance(item, h5py.Group) and len(item.attrs.get("weight_names", [])) > 0
                    and not hasattr(self.blocks[name] if name in self.blocks else None, "load_keras")):
                raise KerasPortError(f"layer {name!r}: weights in the file but not in the architecture")

    # -- inference ---------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, stop_at: set[str]) -> dict[str, torch.Tensor]:
        values = {self.input_name: x}
        for name in self.layer_names:
            if stop_at <= values.keys():
                break
            if name != self.input_name:
                values[name] = self.blocks[name](*(values[p] for p in self.inbound[name]))
        return values

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.dim() != 4 or x.shape[1] != self.input_shape[0]:
            raise KerasPortError(
                f"expected input [N, {self.input_shape[0]}, H, W], got {list(x.shape)}"
            )
        wanted = {self.feature_name} if self.headless else {self.feature_name, self.logits_name}
        values = self._run(x, wanted)
        features = values[self.feature_name]
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))
        return features, (None if self.headless else values[self.logits_name])


# ---------------------------------------------------------------------------------- files

def _loads(raw: Any, source: str) -> dict:
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError, TypeError) as err:
        raise KerasPortError(f"{source}: the model config is not valid JSON ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise KerasPortError(f"{source}: the model config is not a JSON object")
    return config


def read_keras_config(path: str | Path) -> dict:
    """The ``model_config`` JSON of a Keras ``.h5`` file (``{"class_name", "config"}``)."""
    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
    except OSError as err:
        raise KerasPortError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0][:80]})") from None
    if raw is None:
        raise KerasPortError(f"{path} has no 'model_config' attribute (not a Keras model file)")
    return _loads(raw, str(path))


def read_keras_json(path: str | Path) -> dict:
    """A Keras architecture saved separately (``model.to_json()``)."""
    try:
        text = Path(path).read_bytes()
    except OSError as err:
        raise KerasPortError(f"{path}: cannot read the architecture JSON ({err.strerror})") from None
    return _loads(text, str(path))


def load_keras_model(
    path: str | Path | None, *, config: dict | None = None, config_source: str | Path | None = None,
    load_weights: bool = True, headless: bool = False, input_hw: tuple[int, int] = (32, 32),
) -> KerasNet:
    """Build the torch port of a Keras model (eval mode), optionally with the weights in ``path``.

    The architecture is ``config`` when given (a weights-only file; ``config_source`` names where
    it came from for errors), else the ``model_config`` attribute of ``path``. Every error is a
    one-line :class:`KerasPortError` naming the file and the layer.
    """
    source = str(config_source or path)
    try:
        model = KerasNet(config if config is not None else read_keras_config(path),
                         headless=headless, input_hw=input_hw)
    except KerasPortError as err:
        message = str(err)
        raise KerasPortError(message if message.startswith(source) else f"{source}: {message}") from None
    if load_weights:
        if path is None:
            raise KerasPortError(f"{source}: no weight file to load")
        try:
            with h5py.File(path, "r") as handle:
                group = handle["model_weights"] if "model_weights" in handle else handle
                model.load_keras_weights(group)
        except KerasPortError as err:
            raise KerasPortError(f"{path}: {err}") from None
        except OSError as err:
            raise KerasPortError(f"{path}: not a readable HDF5 file ({str(err).splitlines()[0][:80]})") from None
    return model.eval()


def keras_factory(
    weights: str, *, architecture: str | Callable[[], dict] | None = None, headless: bool = False,
    input_hw: tuple[int, int] = (32, 32),
) -> Callable[[Path | None], KerasNet]:
    """A ``register_zoo_model`` factory ``fn(checkpoint | None) -> KerasNet``.

    ``weights`` is the registered weight file (relative to the data folder). ``architecture`` is
    None (the ``model_config`` inside the weight file: random init still needs that file), a
    data-folder-relative ``.json`` (checked against the manifest like every data file), or a
    function returning the config (an architecture written out in code).
    """
    def build(checkpoint: Path | None) -> KerasNet:
        if callable(architecture):
            config, source = architecture(), f"{weights} (architecture written in code)"
        elif architecture is not None:
            json_path = data_file(architecture)
            config, source = read_keras_json(json_path), json_path
        else:  # inside the weight file
            path = checkpoint if checkpoint is not None else data_file(weights)
            config, source = read_keras_config(path), path
        return load_keras_model(checkpoint, config=config, config_source=source,
                                load_weights=checkpoint is not None, headless=headless,
                                input_hw=input_hw)

    return build
