"""The graph learner and predictor of TransferGraph: a two-type GraphSAGE on a dense adjacency.

The graph is tiny (tens of PTMs, tens of datasets), so every relation is a dense matrix and a
layer is a handful of matmuls; no graph library is needed. Node types and relations:

* PTM nodes ``hp`` [M, dim]; dataset nodes ``hd`` [N, dim] (pool tasks of the fine-tuning bank,
  then the new tasks being ranked).
* accuracy edges ``A`` [N, M] (1 where PTM m was fine-tuned on dataset n) carrying ``Z`` [N, M],
  the per-dataset standardised accuracy (0 where there is no edge); PTM and dataset nodes
  aggregate over them both ways, once unweighted and once weighted by ``Z`` (so a message says
  "this PTM did well/badly here", not only "it was tried here").
* similarity edges ``S`` [N, N]: row n averages the dataset nodes most similar to n (GraphSAGE's
  mean aggregator over the top-k neighbours).

A new dataset has similarity edges only. With two layers its embedding carries the accuracies
of the PTMs on the pool tasks that resemble it; with one, the PTM embeddings do (each aggregates
the tasks it did well on) and the predictor matches them against the new task's neighbourhood,
besides the neighbours' accuracies it is given directly. Either way ranking it is link prediction.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GraphSAGE", "PairPredictor", "mean_rows"]


def mean_rows(adjacency: torch.Tensor) -> torch.Tensor:
    """Row-normalise a 0/1 (or weighted) adjacency so that ``mean_rows(A) @ H`` averages neighbours;
    a row without neighbours stays zero."""
    return adjacency / adjacency.sum(dim=1, keepdim=True).clamp_min(1e-12)


class _SageLayer(nn.Module):
    """One GraphSAGE layer over the three relations (a separate weight per relation and direction)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ptm_self, self.dataset_self = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ptm_from_acc, self.ptm_from_z = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.dataset_from_acc = nn.Linear(dim, dim, bias=False)
        self.dataset_from_z = nn.Linear(dim, dim, bias=False)
        self.dataset_from_similar = nn.Linear(dim, dim, bias=False)

    def forward(self, hp: torch.Tensor, hd: torch.Tensor, acc: torch.Tensor, z: torch.Tensor,
                similar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        to_ptm = mean_rows(acc.T)  # [M, N]
        to_dataset = mean_rows(acc)  # [N, M]
        z_ptm = z.T / acc.T.sum(dim=1, keepdim=True).clamp_min(1.0)
        z_dataset = z / acc.sum(dim=1, keepdim=True).clamp_min(1.0)
        new_hp = self.ptm_self(hp) + self.ptm_from_acc(to_ptm @ hd) + self.ptm_from_z(z_ptm @ hd)
        new_hd = (self.dataset_self(hd) + self.dataset_from_acc(to_dataset @ hp) + self.dataset_from_z(z_dataset @ hp)
                  + self.dataset_from_similar(similar @ hd))
        return new_hp, new_hd


class GraphSAGE(nn.Module):
    """Input projections of each node type's features, then ``layers`` SAGE layers (ReLU between)."""

    def __init__(self, ptm_features: int, dataset_features: int, dim: int, layers: int) -> None:
        super().__init__()
        self.ptm_in = nn.Linear(ptm_features, dim)
        self.dataset_in = nn.Linear(dataset_features, dim)
        self.layers = nn.ModuleList(_SageLayer(dim) for _ in range(layers))

    def forward(self, xp: torch.Tensor, xd: torch.Tensor, acc: torch.Tensor, z: torch.Tensor,
                similar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hp, hd = torch.relu(self.ptm_in(xp)), torch.relu(self.dataset_in(xd))
        for i, layer in enumerate(self.layers):
            hp, hd = layer(hp, hd, acc, z, similar)
            if i < len(self.layers) - 1:
                hp, hd = torch.relu(hp), torch.relu(hd)
        return hp, hd


class PairPredictor(nn.Module):
    """Standardised accuracy of (dataset, PTM) pairs from their embeddings, their product and the
    similarity-weighted accuracy of the PTM on the dataset's nearest pool tasks.

    ``kind``: ``"linear"`` (a linear regression on those features, as TransferGraph's linear
    predictor) or ``"mlp"`` (one hidden layer of ``dim`` units).
    """

    KINDS = ("linear", "mlp")

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        width = 3 * dim + 1
        self.net = nn.Linear(width, 1) if kind == "linear" else nn.Sequential(
            nn.Linear(width, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, hp: torch.Tensor, hd: torch.Tensor, neighbour_z: torch.Tensor) -> torch.Tensor:
        """``hp`` [M, dim], ``hd`` [N, dim], ``neighbour_z`` [N, M] -> predictions [N, M]."""
        n, m = hd.shape[0], hp.shape[0]
        pairs = torch.cat([hp[None].expand(n, m, -1), hd[:, None].expand(n, m, -1), hp[None] * hd[:, None],
                           neighbour_z[..., None]], dim=-1)
        return self.net(pairs)[..., 0]
