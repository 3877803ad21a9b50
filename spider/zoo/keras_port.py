"""Torch port of Keras models stored as HDF5 (``.h5``/``.hdf5``), on the layer library
:mod:`spider.zoo.keras_layers`.

The architecture is a Keras ``model_config`` JSON (a ``Sequential`` or functional ``Model``,
Keras 2 or 3) read from the file's attribute, from a separate ``.json`` file, or written out in
code (:mod:`spider.zoo.keras_models` does so for MobileNet v1); the weights are read with h5py.
Neither TensorFlow nor Keras is imported, and nothing read from a file is executed: the JSON is
parsed as data and every layer class must be one of :data:`SUPPORTED_LAYERS`.

The tensors inside the port are NCHW; the input is float ``[N, C, H, W]`` already normalised the
way the Keras model was trained. Features are the input of the source classifier (the last
weighted layer before the output), globally averaged when spatial; logits are the classifier's
pre-softmax output (a final softmax, as a layer or as the classifier's activation, is dropped).
A ``headless`` model (e.g. an ``include_top=False`` backbone) returns its pooled output as
features and no logits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from spider.zoo.keras_layers import (
    ACTIVATIONS,
    SUPPORTED_LAYERS,
    WEIGHTED_LAYERS,
    KerasPortError,
    make_block,
    same_padding,
)
from spider.zoo.manifest import data_file
from spider.zoo.model_registry import ZooNet

__all__ = ["SUPPORTED_LAYERS", "KerasNet", "KerasPortError", "keras_factory", "load_keras_model",
           "read_keras_config", "read_keras_json", "same_padding"]


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
                self.blocks[name] = make_block(name, kind, cfg, parent_probes)
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
            if (name == self.output_name and kind in WEIGHTED_LAYERS and isinstance(cfg, dict)
                    and cfg.get("activation") == "softmax"):
                return name
        return None

    def _logits_layer(self) -> str:
        name = self.output_name
        if (self.layer_class[name] == "Activation"
                and self.blocks[name].fn is ACTIVATIONS["softmax"]):
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
