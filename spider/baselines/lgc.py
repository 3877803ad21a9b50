"""LGC: Label-Gradient Correlation (Deshpande et al., 2021, "A linearized framework and a new
benchmark for model selection for fine-tuning"), a registered model score (it needs the network).

Fine-tuning is approximated by the network linearised around its pre-trained weights theta_0,
f(x; theta) ~ f(x; theta_0) + g(x) . (theta - theta_0), whose kernel is the per-sample gradient
kernel. LGC is how well that kernel agrees with the labels:

    K_g[i, j] = <g_i, g_j>,   g_i = d s(x_i) / d theta at theta_0,   s(x) = r . phi(x; theta)
    K_y[i, j] = +1 if y_i == y_j else -1
    LGC = <K_g - mean(K_g), K_y - mean(K_y)> / (|K_g - mean(K_g)| |K_y - mean(K_y)|)

i.e. the Pearson correlation of all N^2 entries (the paper's rho(Theta, Y); the same centring as
spider's ``lfc``). The one-hot inner product (1 / 0) as label kernel gives the same value: it is
(K_y + 1) / 2, an affine map that centring and normalising remove.

Output. The target task's head is new and random when fine-tuning starts; ``s`` is its output
reduced to one scalar: a fixed random unit direction ``r`` over the D penultimate features (seeded;
the sum of the logits of a random C-way head W is the same thing, with r = W^T 1). The head's own
gradient ds/dr = phi(x) is left out: its kernel phi_i . phi_j is exactly LFC's (``lfc``), so LGC
here measures what the backbone's tangent space adds.

Which parameters (cost vs signal). Per-sample gradients cost one backward pass per sample down to
the earliest parameter taken, and memory N x P (P parameters taken). LGC takes the parameters
nearest the features, in the order autograd produces their gradients (the last block first), as one
contiguous block: taken until the next one would bring the total over ``max_params`` (default
2**17 = 131,072: the last three residual blocks of the zoo's ResNets, the last separable blocks of
its Xceptions; 500 images x 131k float32 = 262 MB), so the backward pass stops early. A single
tensor larger than the whole budget is skipped (a network whose last layer is one huge fully
connected matrix still contributes the layers before it). Parameters off the path to the features
(the source classifier) get no gradient and are never taken. A bigger budget moves LGC towards the
full-network kernel of the paper, at linear cost in memory and time.

Batched: ``torch.func.vmap(grad(...))`` over chunks of ``batch_size`` images with
``functional_call`` on the chosen parameters only, on any device (``device=``; the module is moved
there for the call and back afterwards, and used in eval mode). The kernel is accumulated in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spider.baselines._inputs import classification_labels, resolve_device
from spider.baselines.model_scores import register_model_score
from spider.errors import BaselineInputError

__all__ = ["DEFAULT_MAX_PARAMS", "feature_direction", "gradient_kernel", "label_kernel_correlation", "lgc",
           "per_sample_gradients", "select_parameters"]

DEFAULT_MAX_PARAMS = 2**17
_CANCELLATION = 64  # |K - mean K|^2 within this many eps of |K|^2 is rounding noise of zero
_KERNEL_SLICE = 1 << 14  # gradient columns per block of the kernel product (summed in float64)


class _Features(nn.Module):
    """``forward`` around ``module``, so that ``functional_call`` can swap ``module``'s
    parameters (named ``net.<name>``) also when ``forward`` is a closure over ``module``."""

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        super().__init__()
        self.net = module
        run = forward if forward is not None else module
        # a lambda, not the callable itself: a Module ``forward`` (e.g. ``net.features``) assigned
        # here would be registered a second time, and functional_call would swap it twice
        self._run = lambda x: run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)


def feature_direction(dim: int, seed: int = 0, *, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The fixed random unit direction ``r`` [dim] of the scalar output (the same on every device)."""
    r = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (r / r.norm()).to(dtype=dtype, device=device)


def _scalar_output(wrapper: _Features, params: dict[str, torch.Tensor], x: torch.Tensor,
                   direction: torch.Tensor) -> torch.Tensor:
    """``s(x) = r . phi(x)`` [B] of a batch, with ``params`` in place of the module's own."""
    from torch.func import functional_call

    features = functional_call(wrapper, params, (x,))
    if features.ndim != 2 or features.shape[1] != direction.shape[0]:
        raise BaselineInputError(f"forward: expected features [B, {direction.shape[0]}], got shape {tuple(features.shape)}")
    return features @ direction


def select_parameters(wrapper: _Features, example: torch.Tensor, direction: torch.Tensor,
                      max_params: int = DEFAULT_MAX_PARAMS) -> list[str]:
    """Names (``net.<name>``) of the parameters LGC differentiates: nearest the features first
    (autograd's order on ``example``), until the next would bring the total over ``max_params``
    (tensors larger than ``max_params`` on their own are skipped)."""
    params = {f"net.{n}": p.detach().requires_grad_(True) for n, p in wrapper.net.named_parameters()}
    order: list[str] = []
    hooks = [p.register_hook(lambda g, n=n: order.append(n)) for n, p in params.items()]
    try:
        with torch.enable_grad():
            s = _scalar_output(wrapper, params, example, direction).sum()
            if s.requires_grad:
                torch.autograd.grad(s, list(params.values()), allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
    chosen, total = [], 0
    for name in dict.fromkeys(order):
        size = params[name].numel()
        if size > max_params:  # could never fit: skipped, the layers before it still count
            continue
        if total + size > max_params:  # a contiguous block: the backward pass stops here
            break
        chosen.append(name)
        total += size
    if not chosen:
        smallest = min((params[n].numel() for n in order), default=None)
        raise BaselineInputError(
            "module: no parameter on the path to the features" if smallest is None else
            f"max_params: {max_params} is below the smallest parameter tensor near the features ({smallest})")
    return chosen


def per_sample_gradients(wrapper: _Features, names: list[str], images: torch.Tensor, direction: torch.Tensor,
                         batch_size: int = 32) -> torch.Tensor:
    """``G`` [N, P]: row i is d s(x_i) / d theta over the parameters ``names``, flattened in order."""
    from torch.func import grad, vmap

    own = dict(wrapper.named_parameters())
    params = {n: own[n].detach() for n in names}
    width = sum(p.numel() for p in params.values())

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return _scalar_output(wrapper, p, x.unsqueeze(0), direction)[0]

    per_sample = vmap(grad(one), in_dims=(None, 0))
    out = torch.empty(images.shape[0], width, dtype=direction.dtype, device=images.device)
    with torch.no_grad(), warnings.catch_warnings():  # torch.func.grad differentiates anyway
        # ops without a vmap rule (e.g. CPU flash attention) fall back to a loop: slower, same values
        warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
        for start in range(0, images.shape[0], batch_size):
            stop = min(start + batch_size, images.shape[0])
            grads = per_sample(params, images[start:stop])
            out[start:stop] = torch.cat([grads[n].reshape(stop - start, -1) for n in names], dim=1)
    return out


def gradient_kernel(g: torch.Tensor) -> torch.Tensor:
    """``G G^T`` [N, N] summed in float64 over column blocks, each product in G's own dtype
    (float32 rounding of one block of 16k terms is far below what a correlation resolves, at
    half the cost of a float64 product)."""
    kernel = torch.zeros(g.shape[0], g.shape[0], dtype=torch.float64, device=g.device)
    for start in range(0, g.shape[1], _KERNEL_SLICE):
        block = g[:, start:start + _KERNEL_SLICE]
        kernel += (block @ block.T).double()
    return kernel


def label_kernel_correlation(kernel: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Pearson correlation of all entries of ``kernel`` [N, N] and the +1/-1 label kernel of ``y``.

    With S_ij = [y_i == y_j] = (Y Y^T)_ij (Y one-hot) the label kernel is 2 S - 1, and a centred
    K sums to zero, so <K_c, L_c> = 2 sum(K_c * S) = 2 sum((K_c Y) * Y): no N x N label matrix.
    """
    n = float(kernel.shape[0])
    k = kernel - kernel.mean()
    k_norm2 = k.square().sum()
    if float(k_norm2) <= _CANCELLATION * torch.finfo(k.dtype).eps * float(kernel.square().sum()):
        raise BaselineInputError("gradients: the gradient kernel is constant to rounding (e.g. every per-sample "
                                 "gradient is zero or the same); LGC's correlation is undefined")
    onehot = torch.nn.functional.one_hot(y, num_classes).to(k.dtype)
    numerator = 2.0 * ((k @ onehot) * onehot).sum()
    counts = onehot.sum(dim=0)
    sum_l = 2.0 * counts.square().sum() - n * n
    l_norm2 = n * n - sum_l * sum_l / (n * n)
    return float(numerator / torch.sqrt(k_norm2 * l_norm2))


def _checked_images(images: Any, n: int) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    if x.ndim < 2:
        raise BaselineInputError(f"images: expected a batch [N, ...] of preprocessed images, got shape {tuple(x.shape)}")
    if x.shape[0] != n:
        raise BaselineInputError(f"images: has {x.shape[0]} samples but labels has {n} entries")
    if not x.is_floating_point():
        raise BaselineInputError(f"images: expected preprocessed floating images, got dtype {x.dtype} "
                                 "(normalise them for the model first)")
    finite = torch.isfinite(x.reshape(n, -1)).all(dim=1)
    if not bool(finite.all()):
        raise BaselineInputError(f"images: contains NaN or Inf in {int((~finite).sum())} of {n} samples")
    return x.detach()


@register_model_score("lgc")
def lgc(
    *,
    module: nn.Module,
    images: Any,
    labels: Any,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_params: int = DEFAULT_MAX_PARAMS,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> float:
    """LGC (Deshpande et al. 2021): label vs per-sample-gradient kernel correlation; higher is better.

    Args:
        module: the pre-trained network (its parameters are differentiated, never changed).
        images: [N, ...] preprocessed (normalised float) images of the target.
        labels: [N] integer classes (any values; at least 2 classes).
        forward: batch -> penultimate features [B, D] through ``module`` (default ``module(x)``).
        max_params: budget of differentiated parameters (see the module docstring).
        batch_size: images per vmap chunk.
        seed: of the random output direction.
        device: where to compute (default: the images' device).
    """
    if not isinstance(module, nn.Module):
        raise BaselineInputError(f"module: expected a torch nn.Module, got {type(module).__name__}")
    if int(max_params) < 1 or int(batch_size) < 1:
        raise BaselineInputError(f"max_params and batch_size must be >= 1, got {max_params} and {batch_size}")
    y, num_classes = classification_labels(labels, device="cpu")
    x = _checked_images(images, y.shape[0])
    device = resolve_device(x, device)
    floating = [p for p in module.parameters() if p.is_floating_point()]
    if not floating:
        raise BaselineInputError("module: has no floating-point parameters to differentiate")
    home, dtype, was_training = floating[0].device, floating[0].dtype, module.training
    wrapper = _Features(module, forward)
    try:
        module.to(device).eval()
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            probe = wrapper(x[:2])
        if probe.ndim != 2:
            raise BaselineInputError(f"forward: expected features [B, D], got shape {tuple(probe.shape)}")
        direction = feature_direction(probe.shape[1], seed, dtype=dtype, device=device)
        names = select_parameters(wrapper, x[:2], direction, int(max_params))
        g = per_sample_gradients(wrapper, names, x, direction, int(batch_size))
    finally:
        module.to(home).train(was_training)
    if not bool(torch.isfinite(g).all()):
        raise BaselineInputError("gradients: NaN or Inf in the per-sample gradients (the module overflows on these images)")
    return label_kernel_correlation(gradient_kernel(g), y.to(g.device), num_classes)
