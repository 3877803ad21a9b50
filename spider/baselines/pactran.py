"""PACTran-Dirichlet (Ding et al., ECCV 2022): a PAC-Bayesian bound on transferability.

The source head's probabilities P [N, Cs] are soft features; a Dirichlet prior over p(y | z) with
concentration ``alpha`` split by the target class frequencies is updated by ten rounds of
mean-field variational inference over the latent source class of each sample. The raw score is the
resulting bound per (sample, class) entry, lower is better; ``pactran_dir`` returns its negative so
that, like every spider baseline, higher is better (Model-Spider stores the same negative).

Differences from the reference (``pactran_metrics.calculate_pac_dir`` / Model-Spider
``PACTranDirichlet``): labels are remapped to 0..C-1 and the bound is divided by N·C with C the
number of classes present, whereas the reference divides by N·(max label + 1). Both agree whenever
the labels are already 0..C-1; with a gap in the label values the reference's value is ours times
C / (max label + 1).
"""

from __future__ import annotations

from typing import Any

import torch

from spider.baselines._inputs import classification_labels
from spider.baselines.leep import source_probabilities
from spider.baselines.baseline_registry import register_baseline
from spider.errors import BaselineInputError

__all__ = ["pactran_dir", "pactran_dirichlet_bound"]

INFERENCE_ROUNDS = 10
EPS = 1e-10  # the reference's guard on log(P) and on the prior concentration


def pactran_dirichlet_bound(probs: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float = 1.0) -> float:
    """Raw PACTran-Dirichlet bound (lower = better) of validated inputs.

    Args:
        probs: [N, Cs] source-class probabilities.
        y: [N] int64 target classes in ``[0, num_classes)``.
        num_classes: C.
        alpha: total prior concentration, split across classes by their frequency.

    Returns:
        The bound divided by N·C.
    """
    n = probs.shape[0]
    counts = torch.bincount(y, minlength=num_classes).to(probs.dtype)
    a0 = (alpha * counts / n + EPS)[:, None]  # [C, 1] prior concentration per class
    log_s = (probs + EPS).log()  # [N, Cs]
    q = probs
    logits = torch.empty_like(probs)
    for _ in range(INFERENCE_ROUNDS):
        # Posterior concentration of p(y | z): prior + soft counts of each (class, source) pair.
        a_w = a0 + probs.new_zeros(num_classes, probs.shape[1]).index_add_(0, y, q)  # [C, Cs]
        expected_log = torch.digamma(a_w) - torch.digamma(a_w.sum(dim=0))  # E[log p(y | z)], [C, Cs]
        torch.index_select(expected_log, 0, y, out=logits).add_(log_s)
        q = torch.softmax(logits, dim=1)
    log_q = torch.log_softmax(logits, dim=1)
    num_source = probs.shape[1]
    log_c0 = torch.lgamma(a0.sum()) - torch.lgamma(a0).sum()  # log normaliser of the prior
    log_c = torch.lgamma(a_w.sum(dim=0)) - torch.lgamma(a_w).sum(dim=0)  # [Cs] of the posteriors
    kl_q = (q * (log_q - log_s)).sum()
    bound = num_source * log_c0 - log_c.sum() - kl_q
    return float(-bound / (n * num_classes))


@register_baseline("pactran_dir", needs=("source_logits",), scale_invariant=True)
def pactran_dir(
    *,
    labels: Any,
    source_logits: Any = None,
    source_probs: Any = None,
    features: Any = None,
    alpha: float = 1.0,
    num_classes: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> float:
    """PACTran-Dirichlet (Ding et al. 2022), alpha=1, negated so that higher is better.

    Args:
        labels: [N] integer target classes (any values; remapped to 0..C-1).
        source_logits: [N, Cs] source-head logits (float64 softmax here), or
        source_probs: [N, Cs] already-normalised probabilities instead (used as given).
        features: ignored (accepted so every baseline takes the same keywords).
        alpha: prior concentration (> 0).
        num_classes: if given, labels are ids in [0, num_classes) and an empty class is an error.
        dtype, device: compute dtype (float64 default) and device.
    """
    if not alpha > 0:
        raise BaselineInputError(f"alpha: expected a positive number, got {alpha!r}")
    y, num_classes = classification_labels(labels, num_classes=num_classes, device=device)
    probs = source_probabilities(source_logits, source_probs, y.shape[0], dtype=dtype, device=device)
    return -pactran_dirichlet_bound(probs, y.to(probs.device), num_classes, alpha)
