"""Ranking losses: hand-computed values, masking, ties, ordering and numerical stability."""

import math

import pytest
import torch

from spider.errors import RegistryError
from spider.modules import ScorerInputError
from spider.modules.losses import LOSSES, get_loss, list_losses, register_loss

RANKING = ["listwise", "listmle", "listnet", "wtau_pairwise"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lse(*xs):
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def naive_pl_terms(scores, target, mask, ties):
    """Per-task lists of Plackett-Luce terms, straight from the definition (float64 loops)."""
    out = []
    for s, t, m in zip(scores.tolist(), target.tolist(), mask.tolist()):
        real = [j for j in range(len(s)) if m[j]]
        order = sorted(real, key=lambda j: (-t[j], j))  # stable: ties by index
        terms = []
        for k, j in enumerate(order):
            if ties == "breslow":
                candidates = [i for i in real if t[i] <= t[j]]
            else:
                candidates = order[k:]
            if len(candidates) >= 2:
                terms.append(lse(*[s[i] for i in candidates]) - s[j])
        out.append(terms)
    return out


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_registry_lists_builtins_and_rejects_unknown():
    assert set(RANKING + ["mse"]) <= set(list_losses())
    assert list_losses("list*") == ["listmle", "listnet", "listwise"]
    assert "wtau_pairwise" in list_losses()
    assert LOSSES.meta("listwise") == {"paper": True}
    with pytest.raises(RegistryError, match="unknown loss 'nope'"):
        get_loss("nope")


def test_register_a_new_loss():
    @register_loss("test_l1_only_here")
    def l1(scores, target_scores, mask):
        return (scores - target_scores).abs()[mask].mean()

    assert get_loss("test_l1_only_here") is l1


def test_listwise_and_listmle_hand_computed():
    scores, target = t([[1.0, 2.0, 0.0]]), t([[3.0, 1.0, 2.0]])  # true order: 0, 2, 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    first = lse(1.0, 0.0, 2.0) - 1.0  # model 0 against {0, 2, 1}
    second = lse(0.0, 2.0) - 0.0  # model 2 against {2, 1}; the last position is always 0
    listwise = get_loss("listwise")(scores, target, mask)
    listmle = get_loss("listmle")(scores, target, mask)
    assert listwise.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert listmle.item() == pytest.approx(first + second, rel=1e-6)


def test_listmle_is_listwise_times_positions_without_masks_or_ties():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 6, generator=gen)
    target = torch.stack([torch.randperm(6, generator=gen) for _ in range(4)]).float()
    mask = torch.ones(4, 6, dtype=torch.bool)
    a = get_loss("listwise")(scores, target, mask)
    b = get_loss("listmle")(scores, target, mask)
    assert b.item() == pytest.approx(5 * a.item(), rel=1e-5)


@pytest.mark.parametrize("ties", ["breslow", "stable"])
def test_plackett_luce_losses_match_the_definition(ties):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, 4, (5, 7), generator=gen).double() / 2  # Copeland-like halves, ties
    mask = torch.rand(5, 7, generator=gen) > 0.3
    mask[0] = False  # a task without any real model
    mask[1] = False
    mask[1, 2] = True  # a task with a single real model
    terms = naive_pl_terms(scores, target, mask, ties)
    expected_listwise = sum(map(sum, terms)) / sum(map(len, terms))
    expected_listmle = sum(map(sum, terms)) / sum(1 for x in terms if x)
    got = get_loss("listwise")(scores, target, mask, ties=ties)
    assert got.item() == pytest.approx(expected_listwise, rel=1e-10)
    got = get_loss("listmle")(scores, target, mask, ties=ties)
    assert got.item() == pytest.approx(expected_listmle, rel=1e-10)


def test_breslow_ties_hand_computed_and_order_independent():
    scores, target = t([[0.5, -1.0, 2.0]]), t([[1.0, 1.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    both = lse(0.5, -1.0, 2.0)
    expected = ((both - 0.5) + (both + 1.0)) / 2  # each tied model against all three
    loss = get_loss("listwise")
    assert loss(scores, target, mask).item() == pytest.approx(expected, rel=1e-6)
    perm = torch.tensor([2, 1, 0])
    assert loss(scores[:, perm], target[:, perm], mask).item() == pytest.approx(expected, rel=1e-6)
    # the stable rule breaks the tie by model index instead
    stable = ((both - 0.5) + (lse(-1.0, 2.0) + 1.0)) / 2
    assert loss(scores, target, mask, ties="stable").item() == pytest.approx(stable, rel=1e-6)


def test_listnet_and_mse_hand_computed():
    scores, target = t([[0.0, 1.0, 3.0]]), t([[2.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    p = [math.exp(2.0) / (math.exp(2.0) + 1.0), 1.0 / (math.exp(2.0) + 1.0)]
    log_q = [0.0 - lse(0.0, 1.0), 1.0 - lse(0.0, 1.0)]
    expected = -(p[0] * log_q[0] + p[1] * log_q[1])
    assert get_loss("listnet")(scores, target, mask).item() == pytest.approx(expected, rel=1e-6)
    assert get_loss("mse")(scores, target, mask).item() == pytest.approx((4.0 + 1.0) / 2, rel=1e-6)
    half = get_loss("listnet")(scores, target, mask, temperature=2.0)
    p2 = [math.exp(1.0) / (math.exp(1.0) + 1.0), 1.0 / (math.exp(1.0) + 1.0)]
    assert half.item() == pytest.approx(-(p2[0] * log_q[0] + p2[1] * log_q[1]), rel=1e-6)


def softplus(x):
    return math.log1p(math.exp(x))


def test_wtau_pairwise_hand_computed_and_top_heavy():
    # truth ranks: model 0 first (r 0), model 2 second (r 1), model 1 last (r 2)
    scores, target = t([[0.0, 1.0, 3.0]]), t([[2.0, 0.0, 1.0]])
    pairs = [(1 + 1 / 3, softplus(1.0 - 0.0)), (1 + 1 / 2, softplus(3.0 - 0.0)), (1 / 2 + 1 / 3, softplus(1.0 - 3.0))]
    expected = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)
    loss = get_loss("wtau_pairwise")
    assert loss(scores, target, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(expected, rel=1e-6)
    # Tied targets order no pair: a task of ties alone counts as no task.
    assert loss(scores, t([[1.0, 1.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)).item() == 0.0
    # The same swap costs more at the top of the truth than at its bottom, as in weighted tau.
    target4, mask4 = t([[4.0, 3.0, 2.0, 1.0]]), torch.ones(1, 4, dtype=torch.bool)
    assert loss(t([[3.0, 4.0, 2.0, 1.0]]), target4, mask4) > loss(t([[4.0, 3.0, 1.0, 2.0]]), target4, mask4)


@pytest.mark.parametrize("name", RANKING + ["mse"])
def test_masked_entries_change_nothing_and_get_zero_gradient(name):
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(3, 5, generator=gen)
    target = torch.randint(0, 5, (3, 5), generator=gen).float()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 1] = mask[2, 4] = mask[1, 0] = False
    loss = get_loss(name)
    x = scores.clone().requires_grad_(True)
    value = loss(x, target, mask)
    value.backward()
    assert torch.all(x.grad[~mask] == 0) and torch.any(x.grad[mask] != 0)

    garbage, garbage_target = scores.clone(), target.clone()
    garbage[~mask] = torch.tensor([float("nan"), 1e30, -float("inf")])
    garbage_target[~mask] = torch.tensor([float("inf"), -7.0, float("nan")])
    y = garbage.requires_grad_(True)
    value2 = loss(y, garbage_target, mask)
    value2.backward()
    assert value2.item() == pytest.approx(value.item(), rel=1e-6)
    assert torch.all(y.grad[~mask] == 0) and torch.all(torch.isfinite(y.grad))


@pytest.mark.parametrize("name", RANKING + ["mse"])
def test_all_masked_gives_a_differentiable_zero(name):
    x = torch.randn(2, 4, requires_grad=True)
    value = get_loss(name)(x, torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.all(x.grad == 0)


@pytest.mark.parametrize("name", RANKING + ["mse"])
def test_perfect_order_beats_reversed(name):
    target = t([[4.0, 0.0, 3.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss = get_loss(name)
    assert loss(target, target, mask) < loss(-target, target, mask)


@pytest.mark.parametrize("name", RANKING + ["mse"])
def test_large_scores_stay_finite(name):
    target = t([[3.0, 1.0, 2.0, 0.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    scores = (t([[-1.0, 2.0, 0.5, 3.0]]) * 1e4).requires_grad_(True)
    value = get_loss(name)(scores, target, mask)
    value.backward()
    assert torch.isfinite(value) and torch.all(torch.isfinite(scores.grad))
    if name != "mse":  # compare with float64
        exact = get_loss(name)(scores.detach().double(), target.double(), mask)
        assert value.item() == pytest.approx(exact.item(), rel=1e-5)


@pytest.mark.parametrize("name", RANKING + ["mse"])
def test_bad_inputs_raise_one_line_errors(name):
    loss = get_loss(name)
    scores = torch.zeros(2, 3)
    with pytest.raises(ScorerInputError, match="target_scores: expected shape"):
        loss(scores, torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ScorerInputError, match="mask: expected a bool tensor"):
        loss(scores, scores, torch.ones(2, 3))
    with pytest.raises(ScorerInputError, match="scores: expected 2 dims"):
        loss(torch.zeros(3), torch.zeros(3), torch.ones(3, dtype=torch.bool))
