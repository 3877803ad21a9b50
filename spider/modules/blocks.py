"""The Transformer layer of the scorers, usable on full sequences or on query tokens over a
shared context.

``ModelTaskBlock`` holds the weights of one standard encoder layer (multi-head self-attention and
an MLP, each with a residual and a LayerNorm, pre- or post-norm) and offers two ways to run them:

- ``self_attend(x [N, L, d], mask [N, L])``: the textbook layer over whole sequences. The
  reference path runs it on the B*M sequences ``[model token; task tokens]``.
- ``attend_context(queries [B, Q, d], context, context_mask)``: only the Q query tokens are
  updated; each attends to itself and to its context. The context is either shared by all
  queries of a task (``[B, L, d]``: its keys/values are computed once per task and reused by
  all Q queries, cost O(B*Q*L*d)) or given per query (``[B, Q, L, d]``).

For a one-layer scorer the model-token output of ``self_attend`` on ``[model; tasks]`` equals
``attend_context(model, tasks)``: attention of the model token sees exactly the same keys and
values, and everything else acts per token. Task-token outputs are never read, so the batched
path loses nothing. (With several layers the batched scorer lets task tokens attend only among
themselves, a slightly different architecture from the full-sequence one.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ModelTaskBlock(nn.Module):
    """One Transformer encoder layer.

    Args:
        dim: token width d (divisible by ``heads``).
        heads: number of attention heads.
        mlp_ratio: MLP hidden width as a multiple of d; 0 drops the MLP sub-block (the authors'
            code has attention only).
        dropout: dropout on the residual branches and inside the MLP.
        attn_dropout: dropout on the attention weights.
        norm_first: pre-norm (True) or post-norm (False, as the original Transformer and the
            authors' code).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.norm_first = norm_first
        self.attn_dropout = attn_dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        hidden = int(round(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim) if hidden > 0 else None
        self.mlp = (
            nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
            )
            if hidden > 0
            else None
        )

    # -- pieces ---------------------------------------------------------------------------------
    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., L, d] -> q, k, v each [..., H, L, d/H]."""
        *lead, length, _ = x.shape
        qkv = self.qkv(x).view(*lead, length, 3, self.heads, self.head_dim)
        qkv = qkv.movedim(-3, 0).transpose(-3, -2)  # [3, ..., H, L, dh]
        return qkv[0], qkv[1], qkv[2]

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., H, L, dh] -> [..., L, d]."""
        x = x.transpose(-3, -2)
        return x.reshape(*x.shape[:-2], self.dim)

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual + norm around the attention output, then the MLP sub-block."""
        if self.norm_first:
            x = x + self.drop(self.proj(attended))
            if self.mlp is not None:
                x = x + self.drop(self.mlp(self.norm2(x)))
            return x
        x = self.norm1(x + self.drop(self.proj(attended)))
        if self.mlp is not None:
            x = self.norm2(x + self.drop(self.mlp(x)))
        return x

    def _attention_weights(self, logits: torch.Tensor) -> torch.Tensor:
        weights = logits.softmax(dim=-1)
        if self.training and self.attn_dropout > 0:
            weights = F.dropout(weights, self.attn_dropout)
        return weights

    # -- the two ways to run the layer ----------------------------------------------------------
    def self_attend(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Standard layer over whole sequences.

        Args:
            x: float [N, L, d].
            mask: bool [N, L], True = real token; padding is never attended to (every sequence
                needs at least one real token).

        Returns:
            float [N, L, d].
        """
        h = self.norm1(x) if self.norm_first else x
        q, k, v = self._split_heads(h)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :],
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self._finish(x, self._merge_heads(attended))

    def attend_context(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """Update query tokens that attend to [themselves; their context].

        Args:
            queries: float [B, Q, d] (e.g. the M model tokens of each task).
            context: float [B, L, d] shared by the Q queries of a task, or [B, Q, L, d] per
                query.
            context_mask: bool [B, L] or [B, Q, L] matching ``context``; True = real token.

        Returns:
            float [B, Q, d]: the layer's output at the query positions.
        """
        scale = 1.0 / math.sqrt(self.head_dim)
        hq = self.norm1(queries) if self.norm_first else queries
        hc = self.norm1(context) if self.norm_first else context
        q, k_self, v_self = self._split_heads(hq)  # [B, H, Q, dh]
        _, k_ctx, v_ctx = self._split_heads(hc)  # shared [B, H, L, dh]; per query [B, Q, H, L, dh]
        self_logit = (q * k_self).sum(-1, keepdim=True) * scale  # [B, H, Q, 1]
        shared = context.ndim == 3
        if shared:
            ctx_logits = torch.matmul(q, k_ctx.transpose(-1, -2)) * scale  # [B, H, Q, L]
            allowed = context_mask[:, None, None, :]
        else:
            ctx_logits = torch.einsum("bhqe,bqhle->bhql", q, k_ctx) * scale
            allowed = context_mask[:, None, :, :]
        ctx_logits = ctx_logits.masked_fill(~allowed, float("-inf"))
        weights = self._attention_weights(torch.cat([self_logit, ctx_logits], dim=-1))
        attended = weights[..., :1] * v_self
        if shared:
            attended = attended + torch.matmul(weights[..., 1:], v_ctx)
        else:
            attended = attended + torch.einsum("bhql,bqhle->bhqe", weights[..., 1:], v_ctx)
        return self._finish(queries, self._merge_heads(attended))
