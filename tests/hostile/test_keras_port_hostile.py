"""Hostile Keras files: nothing in them is executed, and each problem is a one-line error naming the
file and the layer."""

import json

import h5py
import numpy as np
import pytest
from helpers.keras_files import write_keras_file

from spider.errors import SpiderError
from spider.zoo.keras_port import KerasPortError, keras_factory, load_keras_model, read_keras_json


def _dense_model(extra_layers=(), activation="softmax"):
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 4, 4, 1]}},
              {"class_name": "Flatten", "config": {"name": "fl"}},
              *extra_layers,
              {"class_name": "Dense", "config": {"name": "out", "units": 3, "activation": activation}}]
    return {"class_name": "Sequential", "config": {"name": "m", "layers": layers}}


def _weights(value=0.5):
    return {"out": {"kernel": np.full((16, 3), value), "bias": np.zeros(3)}}


def _error(path, **kwargs) -> str:
    with pytest.raises(KerasPortError) as err:
        load_keras_model(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_lambda_layer_code_is_never_run(tmp_path, monkeypatch):
    # A Lambda layer carries marshalled Python bytecode: it must be refused, never decoded.
    lam = {"class_name": "Lambda", "config": {"name": "evil", "function": ["YWJj", None, None],
                                              "function_type": "lambda"}}
    write_keras_file(tmp_path / "lambda.h5", _dense_model([lam]), _weights())
    monkeypatch.setattr("marshal.loads", lambda *a: pytest.fail("bytecode was decoded"))
    assert "'evil'" in _error(tmp_path / "lambda.h5") and "'Lambda'" in _error(tmp_path / "lambda.h5")


def test_custom_activation_object_is_refused(tmp_path):
    custom = {"class_name": "my_module>Swish", "config": {}, "module": "os", "registered_name": "x"}
    write_keras_file(tmp_path / "custom.h5", _dense_model(activation=custom), _weights())
    assert "layer 'out'" in _error(tmp_path / "custom.h5")


def test_unknown_model_class_is_refused(tmp_path):
    config = _dense_model()
    config["class_name"] = "my_package>CustomModel"
    write_keras_file(tmp_path / "model.h5", config, _weights())
    assert "CustomModel" in _error(tmp_path / "model.h5")


def test_non_finite_weights_are_refused(tmp_path):
    write_keras_file(tmp_path / "nan.h5", _dense_model(), _weights(np.nan))
    assert "layer 'out'" in _error(tmp_path / "nan.h5") and "non-finite" in _error(tmp_path / "nan.h5")


def test_weights_the_architecture_lacks_are_refused(tmp_path):
    weights = dict(_weights(), stray={"kernel": np.ones((3, 3, 1, 2))})
    config = _dense_model()
    write_keras_file(tmp_path / "stray.h5", config, weights)
    with h5py.File(tmp_path / "stray.h5", "a") as f:  # a weighted layer group absent from the config
        group = f["model_weights"].create_group("stray")
        group.attrs["weight_names"] = np.array([b"stray/kernel:0"])
        group.create_dataset("stray/kernel:0", data=np.ones((3, 3, 1, 2), np.float32))
    assert "'stray'" in _error(tmp_path / "stray.h5")


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"class_name": "Sequential", "config": {"layers": []}}',
                                 b'{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense"}]}}'])
def test_malformed_model_config_is_one_line(tmp_path, raw):
    write_keras_file(tmp_path / "bad.h5", _dense_model(), _weights())
    with h5py.File(tmp_path / "bad.h5", "a") as f:
        f.attrs["model_config"] = raw
    _error(tmp_path / "bad.h5")


def test_bad_layer_config_names_the_layer(tmp_path):
    config = _dense_model()
    config["config"]["layers"][2]["config"]["units"] = "many"
    write_keras_file(tmp_path / "units.h5", config, _weights())
    assert "layer 'out'" in _error(tmp_path / "units.h5")


def test_not_an_hdf5_file(tmp_path):
    (tmp_path / "text.h5").write_text("hello")
    _error(tmp_path / "text.h5")


def test_architecture_json_must_be_a_json_object(tmp_path):
    (tmp_path / "arch.json").write_text(json.dumps([1, 2]))
    with pytest.raises(KerasPortError, match="arch.json"):
        read_keras_json(tmp_path / "arch.json")
    with pytest.raises(KerasPortError, match="missing.json"):
        read_keras_json(tmp_path / "missing.json")


def test_registered_architecture_json_must_be_in_the_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIDER_DATA_DIR", str(tmp_path))
    (tmp_path / "MANIFEST.md").write_text("no checksums here\n")
    (tmp_path / "arch.json").write_text(json.dumps(_dense_model()))
    write_keras_file(tmp_path / "w.h5", _dense_model(), _weights(), with_config=False)
    with pytest.raises(SpiderError, match="arch.json"):
        keras_factory("w.h5", architecture="arch.json")(tmp_path / "w.h5")
