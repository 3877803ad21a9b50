"""The Keras -> torch port: padding rules, a synthetic file against an independent numpy forward,
and the 5 real face models against outputs recorded with real Keras (tests/data)."""

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.keras_files import write_keras_file

from spider.zoo import create_zoo_model, get_zoo_model_info, list_zoo_models
from spider.zoo.keras_xception import KerasPortError, load_keras_model, same_padding

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [(64, 3, 2, (0, 1)), (64, 1, 2, (0, 0)), (5, 3, 1, (1, 1)), (7, 3, 2, (1, 1)),
     (6, 3, 2, (0, 1)), (4, 3, 2, (0, 1)), (8, 5, 1, (2, 2))],
)
def test_same_padding_matches_tensorflow_rule(size, kernel, stride, expected):
    # TF puts the odd pixel of "same" padding at the end (bottom/right).
    assert same_padding(size, kernel, stride) == expected


# ------------------------------------------------------------------ synthetic model, numpy reference

def _layer(kind, name, inbound, **cfg):
    cfg = {"name": name, "data_format": "channels_last", **cfg}
    nodes = [[[p, 0, 0, {}] for p in inbound]] if inbound else []
    return {"class_name": kind, "name": name, "config": cfg, "inbound_nodes": nodes}


def _synthetic_config():
    conv = dict(kernel_size=[3, 3], dilation_rate=[1, 1])
    layers = [
        _layer("InputLayer", "x", [], batch_input_shape=[None, 8, 8, 2], dtype="float32"),
        _layer("Conv2D", "c1", ["x"], filters=4, strides=[2, 2], padding="same", use_bias=True,
               activation="relu", **conv),
        _layer("BatchNormalization", "bn1", ["c1"], axis=-1, epsilon=0.01, center=True, scale=True),
        _layer("SeparableConv2D", "s1", ["bn1"], filters=6, strides=[1, 1], padding="same",
               depth_multiplier=2, use_bias=True, activation="linear", **conv),
        _layer("Conv2D", "proj", ["bn1"], filters=6, kernel_size=[1, 1], strides=[1, 1],
               padding="valid", use_bias=False, activation="linear", dilation_rate=[1, 1]),
        _layer("Add", "add", ["s1", "proj"]),
        _layer("MaxPooling2D", "mp", ["add"], pool_size=[3, 3], strides=[2, 2], padding="same"),
        _layer("Dropout", "drop", ["mp"], rate=0.5),
        _layer("Conv2D", "head", ["drop"], filters=3, strides=[1, 1], padding="same", use_bias=True,
               activation="linear", **conv),
        _layer("GlobalAveragePooling2D", "gap", ["head"]),
        _layer("Activation", "pred", ["gap"], activation="softmax"),
    ]
    return {"class_name": "Model", "config": {"name": "tiny", "layers": layers,
                                              "input_layers": [["x", 0, 0]],
                                              "output_layers": [["pred", 0, 0]]}}


def _synthetic_weights(rng):
    return {
        "c1": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
        "bn1": {"gamma": rng.uniform(0.5, 2, 4), "beta": rng.normal(size=4),
                "moving_mean": rng.normal(size=4), "moving_variance": rng.uniform(0.1, 2, 4)},
        "s1": {"depthwise_kernel": rng.normal(size=(3, 3, 4, 2)),
               "pointwise_kernel": rng.normal(size=(1, 1, 8, 6)), "bias": rng.normal(size=6)},
        "proj": {"kernel": rng.normal(size=(1, 1, 4, 6))},
        "head": {"kernel": rng.normal(size=(3, 3, 6, 3)), "bias": rng.normal(size=3)},
    }


def _np_pad(x, kernel, stride, value=0.0):
    pads = []
    for size in x.shape[1:3]:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=value)


def _np_windows(x, kernel, stride):
    """NHWC -> [N, Ho, Wo, k, k, C] sliding windows."""
    n, h, w, c = x.shape
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    out = np.empty((n, ho, wo, kernel, kernel, c))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = x[:, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
    return out


def _np_conv(x, kernel, stride, same, bias=None):
    k = kernel.shape[0]
    x = _np_pad(x, k, stride) if same else x
    y = np.einsum("nhwabc,abco->nhwo", _np_windows(x, k, stride), kernel)
    return y + bias if bias is not None else y


def _np_depthwise(x, kernel):  # kernel (k, k, C, M); output channel c * M + m; stride 1, same
    k, _, c, m = kernel.shape
    y = np.einsum("nhwabc,abcm->nhwcm", _np_windows(_np_pad(x, k, 1), k, 1), kernel)
    return y.reshape(*y.shape[:3], c * m)


def _np_forward(x, w):
    """Independent NHWC numpy forward of the synthetic model: (features, logits)."""
    y = np.maximum(_np_conv(x, w["c1"]["kernel"], 2, True, w["c1"]["bias"]), 0)
    bn = w["bn1"]
    y = (y - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 0.01) * bn["gamma"] + bn["beta"]
    sep = _np_conv(_np_depthwise(y, w["s1"]["depthwise_kernel"]), w["s1"]["pointwise_kernel"], 1,
                   False, w["s1"]["bias"])
    added = sep + _np_conv(y, w["proj"]["kernel"], 1, False)
    pooled = _np_windows(_np_pad(added, 3, 2, value=-np.inf), 3, 2).max(axis=(3, 4))
    logits = _np_conv(pooled, w["head"]["kernel"], 1, True, w["head"]["bias"]).mean(axis=(1, 2))
    return pooled.mean(axis=(1, 2)), logits


def test_synthetic_keras_file_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    config, weights = _synthetic_config(), _synthetic_weights(rng)
    path = tmp_path / "tiny.hdf5"
    write_keras_file(path, config, weights)
    x = rng.normal(size=(3, 8, 8, 2))
    expected_features, expected_logits = _np_forward(x, weights)

    model = load_keras_model(path)
    with torch.no_grad():
        features, logits = model.features_and_logits(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))
    assert features.shape == (3, 6) and logits.shape == (3, 3)
    np.testing.assert_allclose(features.numpy(), expected_features, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits.numpy(), expected_logits, atol=1e-4, rtol=1e-4)
    probs = model(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))
    assert torch.allclose(probs, logits)  # forward() returns logits (pre-softmax)


def test_unsupported_layer_is_a_one_line_error(tmp_path):
    config = _synthetic_config()
    config["config"]["layers"][7]["class_name"] = "LSTM"
    path = tmp_path / "bad.hdf5"
    write_keras_file(path, config, _synthetic_weights(np.random.default_rng(1)))
    with pytest.raises(KerasPortError, match=r"layer 'drop'.*'LSTM'") as err:
        load_keras_model(path)
    assert "\n" not in str(err.value)


def test_file_without_model_config_is_rejected(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(KerasPortError, match="model_config"):
        load_keras_model(path)


def test_weight_shape_mismatch_names_the_layer(tmp_path):
    weights = _synthetic_weights(np.random.default_rng(2))
    weights["head"]["kernel"] = np.zeros((3, 3, 6, 4))
    path = tmp_path / "mismatch.hdf5"
    write_keras_file(path, _synthetic_config(), weights)
    with pytest.raises(KerasPortError, match="layer 'head'"):
        load_keras_model(path)


# --------------------------------------------------------------------- real files vs real Keras

def _reference_module():
    spec = importlib.util.spec_from_file_location("make_ref", DATA / "make_keras_port_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FACE_MODELS = [n for n in list_zoo_models() if get_zoo_model_info(n).family == "keras_xception"]


@pytest.fixture(scope="module")
def keras_reference(data_dir):
    """(recorded Keras outputs, the same inputs rebuilt as float [N, 1, 64, 64])."""
    reference = json.loads((DATA / "keras_port_reference.json").read_text())
    ref = _reference_module()
    images = np.concatenate([ref.synthetic_inputs(reference["num_synthetic"]),
                             ref.cifar_inputs(data_dir, reference["cifar_test_indices"])])
    return reference, torch.from_numpy(ref.preprocess(images)).permute(0, 3, 1, 2)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", FACE_MODELS)
def test_face_model_port_matches_keras_outputs(name, data_dir, keras_reference):
    reference, x = keras_reference
    images = x
    info = get_zoo_model_info(name)
    expected = reference["models"][Path(info.checkpoint).name]

    model = create_zoo_model(name, data_dir=data_dir)
    with torch.no_grad():
        features, logits = model.features_and_logits(x)
    assert features.shape == (len(images), info.feature_dim)
    assert logits.shape == (len(images), info.num_classes)
    np.testing.assert_allclose(features.numpy(), np.array(expected["features"]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits.numpy(), np.array(expected["logits"]), atol=1e-4, rtol=0)
