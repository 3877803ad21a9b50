"""Reference outputs of the second-batch Keras models, computed by REAL Keras (not spider's port).

Run ONLY in a throwaway environment outside the repository (TensorFlow and Keras are not
project dependencies; Keras 3 cannot read the older Keras 2 files and tf_keras cannot read the
Keras 3 file, so both are installed)::

    python3 -m venv /tmp/kerasenv && /tmp/kerasenv/bin/pip install tensorflow-cpu tf-keras h5py numpy
    /tmp/kerasenv/bin/python tests/helpers/keras_ports_reference.py [DATA_DIR]

It writes ``tests/data/keras_ports/<model>.npz`` (a few KB each): ``features`` (the input of the
classifier, or the pooled output of a headless backbone), ``logits`` (pre-softmax: the features
times the classifier's Keras weights, checked here against the model's own softmax output). The test
(``tests/integration/test_keras_ports.py``) imports :func:`reference_images` from here to rebuild
the identical uint8 inputs, feeds them through spider's preprocessing and port, and compares.

Inputs are 4 real images per model taken deterministically from the shared datasets, brought to
the model's native size without interpolation (crops and pixel repetition), and the conventions of
MANIFEST.md are written out independently in :func:`keras_input`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "data" / "keras_ports"

# name: (weight file, dataset file, array, rows, how to reach the native size)
CASES = {
    "keras_mobilenet_v1_025_imagenet": ("keras_mobilenet_v1_0.25_imagenet/mobilenet_2_5_224_tf_no_top.h5",
                                        "tiny_imagenet200.npz", "x_test", (0, 500, 1000, 1500), "repeat7"),
    "vww_mobilenet_v1_025": ("mlperf_tiny_vww_mobilenetv1_0.25/vww_96.h5",
                             "tiny_imagenet200.npz", "x_test", (250, 750, 1250, 1750), "repeat3"),
    "mlperf_resnet8_cifar10": ("mlperf_tiny_resnet8_cifar10/pretrainedResnet.h5",
                               "cifar10.npz", "x_test", (0, 2500, 5000, 7500), "same"),
    "gtsrb_cnn": ("gtsrb_cnn_dataflair/traffic_classifier.h5",
                  "gtsrb43.npz", "x_test", (0, 215, 430, 645), "crop1"),
    "emnist62_cnn": ("emnist_byclass62_cnn/emnist_model.h5",
                     "chars74k_fnt.npz", "x", (0, 1700, 3400, 5100), "invert_crop2"),
    "doodlenet_quickdraw345": ("doodlenet_quickdraw345/doodleNet-model.h5",
                               "mnist.npz", "x_test", (0, 2500, 5000, 7500), "same"),
    "sign_mnist_cnn": ("sign_mnist_cnn/sign_mnist_model.h5",
                       "fashion_mnist.npz", "x_test", (0, 1, 2, 3), "same"),
    "cifar100_cnn": ("cifar100_cnn_rajuranpe/cifar100_model.h5",
                     "cifar10.npz", "x_test", (1000, 3500, 6000, 8500), "same"),
}


def reference_images(name: str, data_dir: Path) -> np.ndarray:
    """uint8 ``[4, H, W]`` or ``[4, H, W, 3]`` upright images at the model's native size."""
    _, dataset, key, rows, how = CASES[name]
    with np.load(Path(data_dir) / "datasets" / dataset, allow_pickle=False) as arrays:
        images = arrays[key][list(rows)]
    if how.startswith("repeat"):
        factor = int(how[len("repeat"):])
        images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)
    elif how == "crop1":  # 32 -> 30
        images = images[:, 1:-1, 1:-1]
    elif how == "invert_crop2":  # black glyph on white, 32 -> white on black, 28
        images = 255 - images[:, 2:-2, 2:-2]
    return np.ascontiguousarray(images, dtype=np.uint8)


def keras_input(name: str, images: np.ndarray) -> np.ndarray:
    """float32 NHWC input of the Keras model, following MANIFEST.md's conventions."""
    x = images.astype(np.float32)
    x = x[..., None] if x.ndim == 3 else x
    if name == "keras_mobilenet_v1_025_imagenet":
        return x / 127.5 - 1.0
    if name in ("mlperf_resnet8_cifar10", "gtsrb_cnn"):  # raw 0-255 (MLPerf train.py feeds uint8)
        return x
    if name == "cifar100_cnn":
        return (x - 121.9) / 68.4
    if name == "emnist62_cnn":  # EMNIST orientation: transposed
        return np.ascontiguousarray((x / 255.0).transpose(0, 2, 1, 3))
    return x / 255.0  # vww, doodlenet, sign_mnist


def _load(name: str, weights: Path):
    if name == "emnist62_cnn":  # saved by Keras 3
        import keras

        return keras.models.load_model(str(weights), compile=False)
    import tf_keras as keras

    if name == "keras_mobilenet_v1_025_imagenet":
        model = keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=0.25, include_top=False,
                                             weights=None, pooling="avg")
        model.load_weights(str(weights))
        return model
    if name == "cifar100_cnn":
        model = keras.models.model_from_json(weights.with_suffix(".json").read_text())
        model.load_weights(str(weights))
        return model
    return keras.models.load_model(str(weights), compile=False)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(data_dir: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (weights, *_rest) in CASES.items():
        model = _load(name, data_dir / "weights" / weights)
        x = keras_input(name, reference_images(name, data_dir))
        out = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
        if name == "keras_mobilenet_v1_025_imagenet":  # headless: the pooled output is the feature
            np.savez_compressed(OUT / f"{name}.npz", features=out)
            print(name, out.shape)
            continue
        head = [layer for layer in model.layers if type(layer).__name__ == "Dense"][-1]
        import tf_keras

        keras_mod = tf_keras
        if name == "emnist62_cnn":
            import keras as keras_mod
        probe = keras_mod.Model(model.inputs, head.input)
        features = np.asarray(probe.predict(x, verbose=0), dtype=np.float32)
        kernel, bias = head.get_weights()
        logits = (features.astype(np.float64) @ kernel + bias).astype(np.float32)
        np.testing.assert_allclose(_softmax(logits.astype(np.float64)), out, atol=1e-5)
        np.savez_compressed(OUT / f"{name}.npz", features=features, logits=logits)
        print(name, features.shape, logits.shape, out.argmax(1).tolist())


if __name__ == "__main__":
    default = Path(os.environ.get("SPIDER_DATA_DIR", Path(__file__).resolve().parents[4] / "shared" / "data"))
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
