"""LGC (``spider.baselines.lgc``) against a direct implementation of its definition: an explicit
per-sample loop of ``torch.autograd.grad``, the +1/-1 label matrix written out, and numpy's Pearson
correlation of all N^2 entries; plus the parameter choice, chunking, and the model left untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spider.baselines import get_model_score, list_model_scores
from spider.baselines.lfc import lfc
from spider.baselines.lgc import _Features, feature_direction, lgc, select_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, C = 12, 3


def labels() -> np.ndarray:
    return np.array([0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 2, 1])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).double()


class TinyCNN(nn.Module):
    """Conv + BatchNorm backbone with a source classifier that is not on the path to the features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cnn() -> TinyCNN:
    torch.manual_seed(1)
    net = TinyCNN().double()
    with torch.no_grad():  # non-trivial running statistics, used in eval mode
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.features[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def reference_lgc(module: nn.Module, forward, x: torch.Tensor, y: np.ndarray, names: list[str], seed: int = 0) -> float:
    """The definition, one sample at a time."""
    params = dict(module.named_parameters())
    chosen = [params[n.removeprefix("net.")] for n in names]
    with torch.no_grad():
        dim = forward(x[:1]).shape[1]
    r = feature_direction(dim, seed, dtype=x.dtype)
    rows = []
    for i in range(x.shape[0]):
        s = forward(x[i:i + 1])[0] @ r
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(s, chosen)]))
    g = torch.stack(rows).numpy()
    kernel = g @ g.T
    label_kernel = np.where(y[:, None] == y[None, :], 1.0, -1.0)
    return float(np.corrcoef(kernel.ravel(), label_kernel.ravel())[0, 1])


def chosen_names(module, forward, x, max_params, seed=0) -> list[str]:
    wrapper = _Features(module, forward)
    with torch.no_grad():
        dim = wrapper(x[:2]).shape[1]
    return select_parameters(wrapper, x[:2], feature_direction(dim, seed, dtype=x.dtype), max_params)


@pytest.mark.parametrize("max_params", [10**9, 60])
def test_mlp_matches_the_definition(max_params):
    net, y = mlp(), labels()
    x = torch.randn(N, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    names = chosen_names(net, None, x, max_params)
    expected = reference_lgc(net, net, x, y, names)
    assert lgc(module=net, images=x, labels=y, max_params=max_params) == pytest.approx(expected, abs=1e-12)
    if max_params == 10**9:
        assert len(names) == len(list(net.parameters()))


@pytest.mark.parametrize("max_params", [10**9, 100])
def test_cnn_with_batchnorm_and_a_forward_closure_matches_the_definition(max_params):
    net, y = cnn(), labels()
    x = torch.randn(N, 1, 7, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    forward = net.features  # penultimate features; the source classifier is off the path
    names = chosen_names(net, forward, x, max_params)
    assert not any("classifier" in n for n in names)
    expected = reference_lgc(net, forward, x, y, names)
    got = lgc(module=net, images=x, labels=y, forward=forward, max_params=max_params, batch_size=5)
    assert got == pytest.approx(expected, abs=1e-12)
    assert -1.0 <= got <= 1.0


def test_parameters_are_taken_nearest_the_features_first_as_one_block():
    net = mlp()  # 0: Linear(5, 8) 48, 2: Linear(8, 6) 54, 4: Linear(6, 4) 28 parameters
    x = torch.randn(4, 5, dtype=torch.float64)
    assert chosen_names(net, None, x, 28) == ["net.4.bias", "net.4.weight"]
    assert chosen_names(net, None, x, 30) == ["net.4.bias", "net.4.weight"]  # + 2.bias (6) is over: stop
    # 2.weight (48) alone is over 37: skipped; + 0.bias (8) is over: stop
    assert chosen_names(net, None, x, 37) == ["net.4.bias", "net.4.weight", "net.2.bias"]
    # at 18 both weights alone are over the budget: only the biases
    assert chosen_names(net, None, x, 18) == ["net.4.bias", "net.2.bias", "net.0.bias"]


def test_the_last_linear_layer_alone_gives_lfc_of_its_inputs():
    # ds/dW = r a^T and ds/db = r: kernel |r|^2 (a_i . a_j + 1), and a constant shift is centred away
    net, y = mlp(), labels()
    x = torch.randn(N, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    inputs = net[:4](x).detach()
    assert lgc(module=net, images=x, labels=y, max_params=28) == pytest.approx(lfc(features=inputs, labels=y), abs=1e-12)


def test_chunking_seed_and_dtype():
    net, y = cnn(), labels()
    x = torch.randn(N, 1, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    values = [lgc(module=net, images=x, labels=y, forward=net.features, batch_size=b) for b in (1, 5, 64)]
    assert values[1] == pytest.approx(values[0], abs=1e-12) and values[2] == pytest.approx(values[0], abs=1e-12)
    other_seed = lgc(module=net, images=x, labels=y, forward=net.features, seed=1)
    assert abs(other_seed - values[0]) > 1e-6  # the output direction matters, and is seeded
    single = cnn().float()
    assert lgc(module=single, images=x.float(), labels=y, forward=single.features) == pytest.approx(values[0], abs=1e-4)


def test_label_values_do_not_matter_only_their_partition():
    net, y = mlp(), labels()
    x = torch.randn(N, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    renamed = np.array([7, -3, 100])[y]
    assert lgc(module=net, images=x, labels=renamed) == pytest.approx(lgc(module=net, images=x, labels=y), abs=1e-14)


def test_the_module_is_left_as_it_was():
    net, y = cnn(), labels()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(N, 1, 7, 7, dtype=torch.float64)
    lgc(module=net, images=x, labels=y, forward=net.features)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_registered_in_the_model_score_registry_only():
    from spider.baselines import list_baselines

    assert "lgc" in list_model_scores() and "lgc" not in list_baselines()
    net = mlp()
    x = torch.randn(N, 5, dtype=torch.float64)
    assert get_model_score("lgc")(module=net, images=x, labels=labels()) == lgc(module=net, images=x, labels=labels())
