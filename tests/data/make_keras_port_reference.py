"""Write ``keras_port_reference.json``: outputs of the original Keras face models.

This is the independent reference for ``tests/integration/test_keras_port.py``. It runs the ``.hdf5`` files
of ``weights/faces/`` in real Keras (TensorFlow CPU), NOT in spider's torch port, so it must run
in a throwaway environment that is not one of the project's dependencies::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf-keras h5py
    /tmp/tfvenv/bin/python tests/data/make_keras_port_reference.py [DATA_DIR]

Inputs (identical bytes are rebuilt by the test): ``synthetic_inputs`` deterministic 64x64 grey
patterns, and ``cifar_inputs`` CIFAR-10 test images turned grey with integer luma and upscaled 2x
by pixel repetition. Each model records, per input, the pre-softmax logits (the output of the
global average pooling) and the features (global average of the input to the last convolution).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

FACE_FILES = (
    "fer2013_mini_XCEPTION.102-0.66.hdf5",
    "fer2013_big_XCEPTION.54-0.66.hdf5",
    "gender_mini_XCEPTION.21-0.95.hdf5",
    "mini_XCEPTION_KDEF.hdf5",
    "tiny_XCEPTION_KDEF.hdf5",
)
NUM_SYNTHETIC = 3
CIFAR_TEST_INDICES = (0, 1, 2)


def synthetic_inputs(n: int = NUM_SYNTHETIC) -> np.ndarray:
    """Deterministic uint8 [n, 64, 64] patterns (no RNG, so no version drift)."""
    k, i, j = np.meshgrid(np.arange(n), np.arange(64), np.arange(64), indexing="ij")
    return ((i * 7 + j * 13 + k * 31 + (i * j) % 17 + (i // 8) * (j // 8) * 5) * 37 % 256).astype(
        np.uint8
    )


def cifar_inputs(data_dir: Path, indices=CIFAR_TEST_INDICES) -> np.ndarray:
    """uint8 [n, 64, 64]: grey (ITU-R 601 integer luma) CIFAR-10 test images, repeated 2x."""
    with np.load(data_dir / "datasets" / "cifar10.npz", allow_pickle=False) as d:
        rgb = d["x_test"][list(indices)].astype(np.int64)
    grey = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
    return np.repeat(np.repeat(grey, 2, axis=1), 2, axis=2).astype(np.uint8)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 [n, 64, 64] -> float32 [n, 64, 64, 1] in [-1, 1] (the models' x/255*2-1)."""
    return (images.astype(np.float32) / 255.0 * 2.0 - 1.0)[..., None]


def _rounded(a: np.ndarray) -> list:
    return [[float(f"{v:.7g}") for v in row] for row in np.asarray(a, dtype=np.float64)]


def main(data_dir: Path) -> None:
    import tensorflow as tf
    import tf_keras as keras

    images = np.concatenate([synthetic_inputs(), cifar_inputs(data_dir)])
    x = preprocess(images)
    out = {
        "generator": "tests/data/make_keras_port_reference.py",
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "num_synthetic": NUM_SYNTHETIC,
        "cifar_test_indices": list(CIFAR_TEST_INDICES),
        "models": {},
    }
    for name in FACE_FILES:
        model = keras.models.load_model(str(data_dir / "weights" / "faces" / name), compile=False)
        pool = next(l for l in model.layers if type(l).__name__ == "GlobalAveragePooling2D")
        head_conv = pool.input  # output tensor of the last convolution
        head_layer = head_conv._keras_history.layer
        feature_map = head_layer.input
        features = keras.layers.GlobalAveragePooling2D(name="reference_feature_pool")(feature_map)
        probe = keras.Model(model.input, [features, pool.output, model.output])
        feats, logits, probs = probe.predict(x, verbose=0)
        # The stored logits must reproduce the shipped model's softmax output.
        np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probs, atol=1e-6)
        out["models"][name] = {
            "feature_layer": feature_map._keras_history.layer.name,
            "features": _rounded(feats),
            "logits": _rounded(logits),
        }
        print(name, feats.shape, logits.shape, np.argmax(logits, 1).tolist())
    target = Path(__file__).with_name("keras_port_reference.json")
    target.write_text(json.dumps(out) + "\n")
    print("wrote", target)


if __name__ == "__main__":
    default = Path(os.environ.get("SPIDER_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
