"""Write small Keras-layout ``.h5`` files (``model_config`` JSON + ``model_weights`` groups) for
tests of the Keras port, without Keras."""

from __future__ import annotations

import json

import h5py
import numpy as np


def layer_name(layer: dict) -> str:
    return layer.get("name") or layer["config"]["name"]


def write_keras_file(path, config: dict, weights: dict, *, with_config: bool = True) -> None:
    """``weights``: ``{layer name: {"kernel": array, ...}}`` stored as Keras 2 names
    (``<layer>/<key>:0``); ``with_config=False`` writes a weights-only file (no JSON, no
    ``model_weights`` group)."""
    with h5py.File(path, "w") as f:
        if with_config:
            f.attrs["model_config"] = json.dumps(config).encode()
            group = f.create_group("model_weights")
        else:
            group = f
        body = config["config"]
        names = [layer_name(layer) for layer in (body if isinstance(body, list) else body["layers"])]
        group.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name in names:
            layer_group = group.create_group(name)
            entries = weights.get(name, {})
            full = [f"{name}/{key}:0" for key in entries]
            layer_group.attrs["weight_names"] = np.array([w.encode() for w in full])
            for key, value in entries.items():
                layer_group.create_dataset(f"{name}/{key}:0", data=np.asarray(value, np.float32))
