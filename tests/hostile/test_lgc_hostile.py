"""Hostile inputs for LGC (``spider.baselines.lgc``): each gives a one-line BaselineInputError
naming the argument, never NaN, inf or a raw torch error; the module is left as it was. The
``spider model-score`` CLI: bad arguments are one `error:` line, exit 2, no JSON left."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from spider.baselines.lgc import lgc
from spider.errors import BaselineInputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 12


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4))


def images() -> torch.Tensor:
    return torch.randn(N, 5, generator=torch.Generator().manual_seed(1))


LABELS = np.arange(N) % 3


def refused(match: str, **inputs) -> None:
    with pytest.raises(BaselineInputError, match=match) as info:
        lgc(**{"module": net(), "images": images(), "labels": LABELS, **inputs})
    assert "\n" not in str(info.value)


def test_one_class_only():
    refused(r"labels: need at least 2 distinct classes, got 1", labels=np.zeros(N, dtype=np.int64))


def test_float_labels():
    refused(r"labels: expected integer class ids", labels=LABELS.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_images(bad):
    x = images()
    x[3, 2] = bad
    x[7, 0] = bad
    refused(r"images: contains NaN or Inf in 2 of 12 samples", images=x)


def test_mismatched_lengths():
    refused(r"images: has 11 samples but labels has 12 entries", images=images()[:11])
    refused(r"labels: has 13 entries|images: has 12 samples but labels has 13", labels=np.arange(13) % 3)


def test_raw_uint8_images():
    refused(r"images: expected preprocessed floating images, got dtype torch.uint8",
            images=torch.zeros(N, 5, dtype=torch.uint8))


def test_images_without_a_batch_dimension():
    refused(r"images: expected a batch \[N, \.\.\.\]", images=torch.zeros(N))


def test_not_a_module():
    refused(r"module: expected a torch nn.Module, got function", module=lambda x: x)


@pytest.mark.parametrize("forward", [lambda x: x.sum(1), lambda x: x[:, :, None]])
def test_forward_not_giving_features(forward):
    model = net()
    with pytest.raises(BaselineInputError, match=r"forward: expected features \[B, D\]") as info:
        lgc(module=model, images=images(), labels=LABELS, forward=lambda x: forward(model(x)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("option", ["max_params", "batch_size"])
def test_budget_and_batch_size_below_one(option):
    refused(r"max_params and batch_size must be >= 1", **{option: 0})


def test_budget_below_every_parameter_tensor():
    refused(r"max_params: 3 is below the smallest parameter tensor near the features \(4\)", max_params=3)


def test_features_that_do_not_depend_on_any_parameter():
    refused(r"module: no parameter on the path to the features", forward=lambda x: x[:, :4] * 2.0)


def test_zero_gradients_give_a_constant_kernel():
    model = net()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    # with every weight zero, ds/dtheta is zero except for the last bias: a constant kernel
    refused(r"gradients: the gradient kernel is constant", module=model)


def test_overflowing_gradients():
    model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.fill_(1e20)  # first-layer outputs ~1e40: beyond float32
    refused(r"gradients: NaN or Inf in the per-sample gradients", module=model, images=images().abs() * 1e20)


def test_missing_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    refused(r"device: 'cuda' requested but this machine has no usable CUDA device", device="cuda")


def test_a_refused_call_leaves_the_module_as_it_was():
    model = net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BaselineInputError):
        lgc(module=model, images=images(), labels=LABELS, forward=lambda x: model(x).sum(1))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------- the model-score CLI

@pytest.mark.parametrize("argv, message", [
    (["--score", "nope", "--model", "mnist_cnn", "--arrays", "x.npz"], r"unknown model score 'nope'; available: lgc"),
    (["--zoo-dir", "{tmp}/none", "--target", "usps"], r"--zoo-dir: no such directory"),
    (["--model", "mnist_cnn", "--target", "usps"], r"--target names a target of --zoo-dir's recipe"),
    (["--model", "mnist_cnn", "--arrays", "a.npz", "--images", "b"], r"exactly one of --target, --images, --arrays"),
    (["--arrays", "a.npz"], r"give --zoo-dir \(its PTMs\) or --model"),
    (["--model", "test_resnet", "--arrays", "a.npz"], r"--checkpoint is required for timm model 'test_resnet'"),
    (["--model", "mnist_cnn", "--arrays", "{tmp}/missing.npz"], r"array file .*missing.npz does not exist"),
    (["--model", "mnist_cnn", "--arrays", "a.npz", "--json", "{tmp}/no/out.json"], r"--json: directory .* does not exist"),
    (["--model", "mnist_cnn", "--arrays", "a.npz", "--max-params", "many"], r"argument --max-params: invalid int"),
])
def test_cli_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    from spider.model_score import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and re.search(message, err), err
    assert captured.out == ""


def test_cli_refuses_a_missing_gpu(tmp_path, capsys):
    from spider.model_score import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["--model", "mnist_cnn", "--arrays", "a.npz", "--device", "cuda"]) == 2
    assert re.fullmatch(r"error: --device: 'cuda' requested but this machine has no usable CUDA device; use 'cpu'\n",
                        capsys.readouterr().err)


def test_cli_task_with_one_class_leaves_no_json(tmp_path, capsys):
    import timm

    from spider.model_score import main

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), tmp_path / "m.pth")
    np.savez(tmp_path / "t.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    out = tmp_path / "out.json"
    argv = ["--model", "test_resnet", "--checkpoint", str(tmp_path / "m.pth"), "--arrays", str(tmp_path / "t.npz"),
            "--json", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: labels: need at least 2 distinct classes, got 1\n", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth", "t.npz"]
