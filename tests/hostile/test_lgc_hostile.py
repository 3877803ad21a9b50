"""Hostile inputs for LGC (``spider.baselines.lgc``): each gives a one-line BaselineInputError
naming the argument, never NaN, inf or a raw torch error; the module is left as it was."""

from __future__ import annotations

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
