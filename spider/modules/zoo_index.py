"""``ZooIndex``: ranking a hub-sized zoo (10^6 model tokens) for one task in well under a second.

Where the time of ``TokenScorer.forward`` goes (profile at M = 10^5, d = 128, C = 10, one
thread): the Q/K/V projection and LayerNorm of the model tokens (task-independent), copies made
by the head split/merge, the batched [M, H, dh] x [dh, C] products (tiny matrices, slow), then
the projection, the MLP and the head. The last three are irreducible per model: about 100k
multiply-adds per model token at d = 128 (MLP 64k, head 16k, projection 16k), 2*10^11 flops for
10^6 models, over a second at the peak of this 2-core AVX2 CPU. So exact scoring alone cannot
reach < 1 s at 10^6, and the index ranks in two stages:

1. **Cache** (once per checkpoint, in :class:`ZooIndex`): per model token its first-layer
   features ``[x | q | v | s]``: the token, its scaled query and value (through LayerNorm and
   Q/K/V) and its self-attention logit per head, stored cluster by cluster. Exact scoring of any
   set of models (:meth:`ZooIndex.scores`) then needs per task only the task tokens' keys and
   values, two GEMMs against block-diagonal per-task matrices (all heads in one product instead
   of a batched one), the softmax, and the projection/MLP/head, chunked over models so that
   memory stays bounded (``chunk`` rows at a time).
2. **Pre-screen**: the model tokens are grouped by a two-level k-means into ``anchors``
   clusters. For a task, the score and its gradient with respect to the feature row are computed
   at each cluster's mean feature row (autograd on ``anchors`` rows: milliseconds), and every
   model gets the first-order Taylor estimate ``s(c) + g(c) . (f - c)`` of its cluster: one
   inner product per model, a memory-bound pass over the features. Linearising in the features
   rather than in the token keeps the first LayerNorm (strongly non-linear for small tokens)
   out of the approximation. The static prior (when the scorer has one) is added exactly.
3. **Exact re-scoring** of the ``pool`` best estimates with the cached exact path; the ranking
   lists those models by their exact scores (ties: lower model index first, as ``argsort(stable)``
   on the full scores). With ``pool >= M`` the ranking is the exact one.

Memory: the index holds (3d + H) floats per model (about 1.5 GB for 10^6 models at d = 128)
beside the scorer's own tokens; exact scoring allocates per ``chunk`` rows, ranking per ``pool``.

Recall (how often the estimate's pool holds the exact top 10) is measured, not guaranteed:
``experiments/bench_rank_latency.py`` reports it on random and trained scorers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spider.errors import ConfigError
from spider.modules.token_scorer import TokenScorer

DEFAULT_POOL = 32768  # models re-scored exactly after the pre-screen (see the README's measured recall)
DEFAULT_ANCHORS = 2048  # k-means clusters of the model tokens (linearisation points)
DEFAULT_CHUNK = 32768  # model rows per exact-scoring step (bounds the intermediate memory)
KMEANS_SAMPLE = 65536  # tokens the coarse k-means centres are fitted on (all tokens are then assigned)
KMEANS_FINE_SAMPLE = 64  # tokens per fine centre its k-means is fitted on
KMEANS_ITERS = 10


@dataclass
class IndexRanking:
    """The exactly scored models of one task, best first.

    Attributes:
        models: int64 [P] model indices (into the scorer's M model tokens), best first.
        scores: float [P] their exact scores (as ``TokenScorer.forward`` gives them).
    """

    models: torch.Tensor
    scores: torch.Tensor


def supports(scorer: torch.nn.Module) -> bool:
    """Whether ``scorer`` scores with ``TokenScorer.forward`` (the maths the index reproduces);
    subclasses that override ``forward`` (e.g. the re-ranker) or ensembles do not."""
    return isinstance(scorer, TokenScorer) and type(scorer).forward is TokenScorer.forward


class ZooIndex:
    """Task-independent parts of a :class:`TokenScorer`'s scoring, cached for fast ranking.

    The index copies what it needs from the scorer (in eval mode); build a new one after the
    scorer's weights change.

    Args:
        scorer: a ``TokenScorer`` (or a subclass that keeps its ``forward``), in eval mode.
        anchors: k-means clusters of the model tokens used by the pre-screen.
        pool: models re-scored exactly after the pre-screen (default of :meth:`rank`).
        chunk: model rows per exact-scoring step.
        seed: seed of the k-means sample and initialisation (the index is deterministic).

    Raises:
        ConfigError: a scorer the index cannot reproduce, or a non-positive setting.
    """

    def __init__(self, scorer: TokenScorer, *, anchors: int = DEFAULT_ANCHORS, pool: int = DEFAULT_POOL,
                 chunk: int = DEFAULT_CHUNK, seed: int = 0) -> None:
        if not supports(scorer):
            raise ConfigError(f"ZooIndex: expected a TokenScorer scoring with TokenScorer.forward, "
                              f"got {type(scorer).__name__}")
        for name, value in (("anchors", anchors), ("pool", pool), ("chunk", chunk)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ZooIndex: {name}: expected an integer >= 1, got {value!r}")
        self.scorer, self.pool, self.chunk = scorer, pool, chunk
        block = scorer.blocks[0]
        self.heads, self.head_dim = block.heads, block.head_dim
        with torch.no_grad():
            tokens = scorer.model_tokens.detach()
            assign = _kmeans(tokens, anchors, chunk, seed)
            # Rows are stored cluster by cluster so that the pre-screen reads contiguous slices.
            self.order = torch.argsort(assign, stable=True)  # row -> model index
            self.row_of = torch.empty_like(self.order)
            self.row_of[self.order] = torch.arange(len(self.order), device=self.order.device)
            counts = torch.bincount(assign)
            self.bounds = [0, *torch.cumsum(counts, 0).tolist()]
            # One row per model: [token x | scaled query q | value v | self logit per head], the
            # task-independent inputs of the first layer's attention (see _score_features).
            dim = block.dim
            self.features = tokens.new_empty(tokens.shape[0], 3 * dim + self.heads)
            scale = 1.0 / math.sqrt(self.head_dim)
            for start in range(0, tokens.shape[0], chunk):
                rows = slice(start, start + chunk)
                x = tokens[self.order[rows]]
                h = block.norm1(x) if block.norm_first else x
                q, k, v = block.qkv(h).view(-1, 3, self.heads, self.head_dim).unbind(1)
                self.features[rows, :dim] = x
                self.features[rows, dim:2 * dim] = (q * scale).reshape(-1, dim)
                self.features[rows, 2 * dim:3 * dim] = v.reshape(-1, dim)
                self.features[rows, 3 * dim:] = (q * k).sum(-1) * scale
            # Anchors: the mean feature row of each cluster (the k-means fit saw a sample only).
            sorted_assign = assign[self.order]
            sums = self.features.new_zeros(len(counts), self.features.shape[1])
            self.anchors = sums.index_add_(0, sorted_assign, self.features) / counts[:, None].to(tokens.dtype)
            zeros = tokens.new_zeros(1, tokens.shape[0])
            mode = scorer.training
            scorer.eval()  # the prior of ranking: a rank prior counts in eval mode only
            try:
                prior = scorer.add_prior(zeros, self.order[None])[0]  # the weighted prior, row order
            finally:
                scorer.train(mode)
            has_prior = hasattr(scorer, "model_prior") or hasattr(scorer, "rank_prior")
            self.prior = prior.detach() if has_prior else None

    @property
    def num_models(self) -> int:
        return self.features.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held by the index's cached tensors (on the scorer's device)."""
        held = (self.features, self.anchors, self.order, self.row_of, *(() if self.prior is None else (self.prior,)))
        return sum(t.numel() * t.element_size() for t in held)

    # -- exact scoring ----------------------------------------------------------------------------
    def _task_context(self, task_tokens: torch.Tensor, task_mask: torch.Tensor) -> list[tuple]:
        """Per task: (task tokens [1, C, d], mask [1, C], K block-diagonal [d, H*C], V
        block-diagonal [H*C, d], additive logit mask [H*C])."""
        scorer, block = self.scorer, self.scorer.blocks[0]
        scorer.check_tasks(task_tokens, task_mask)
        tasks = scorer.embed_tasks(scorer.clean_tasks(task_tokens, task_mask))
        h = block.norm1(tasks) if block.norm_first else tasks
        _, keys, values = block._split_heads(h)  # [B, H, C, dh]
        out = []
        for b in range(tasks.shape[0]):
            kbd = torch.block_diag(*keys[b].transpose(-1, -2).unbind(0))  # [H*dh, H*C]
            vbd = torch.block_diag(*values[b].unbind(0))  # [H*C, H*dh]
            blocked = torch.zeros(task_mask.shape[1], dtype=tasks.dtype, device=tasks.device)
            blocked = blocked.masked_fill(~task_mask[b], float("-inf")).repeat(self.heads)
            out.append((tasks[b:b + 1], task_mask[b:b + 1], kbd, vbd, blocked))
        return out

    def _score_features(self, features: torch.Tensor, context: tuple) -> torch.Tensor:
        """Scores [n] (prior excluded) of feature rows [n, 3d+H] for one task's ``context``."""
        tasks, mask, kbd, vbd, blocked = context
        scorer, block = self.scorer, self.scorer.blocks[0]
        dim, n = block.dim, features.shape[0]
        x, q, v = features[:, :dim], features[:, dim:2 * dim], features[:, 2 * dim:3 * dim]
        ctx = torch.addmm(blocked, q, kbd).view(n, self.heads, -1)  # [n, H, C]: all heads in one GEMM
        weights = block._attention_weights(torch.cat([features[:, 3 * dim:, None], ctx], dim=-1))
        attended = (weights[..., 0:1] * v.reshape(n, self.heads, self.head_dim)).view(n, -1)
        attended = torch.addmm(attended, weights[..., 1:].reshape(n, -1), vbd)
        models = block._finish(x, attended)[None]  # [1, n, d]
        for i, later in enumerate(scorer.blocks[1:]):  # deeper scorers: task tokens evolve per layer
            tasks = scorer.blocks[i].self_attend(tasks, mask)
            models = later.attend_context(models, tasks, mask)
        return scorer.head(models[0]).squeeze(-1)

    def _exact_rows(self, rows: slice | torch.Tensor, context: tuple) -> torch.Tensor:
        """Exact scores [n] of the index rows ``rows`` for one task's ``context``."""
        scores = self._score_features(self.features[rows], context)
        return scores if self.prior is None else scores + self.prior[rows]

    def _exact_all(self, context: tuple) -> torch.Tensor:
        """Exact scores of every row [M] (index row order), ``chunk`` rows at a time."""
        return torch.cat([self._exact_rows(slice(s, s + self.chunk), context)
                          for s in range(0, self.num_models, self.chunk)])

    def scores(self, task_tokens: torch.Tensor, task_mask: torch.Tensor) -> torch.Tensor:
        """Exact scores of all M models, as ``TokenScorer.forward`` (same inputs, same checks).

        Returns:
            float [B, M] in model-index order.
        """
        with torch.no_grad():
            rows = [self._exact_all(c) for c in self._task_context(task_tokens, task_mask)]
        return torch.stack(rows)[:, self.row_of]

    # -- two-stage ranking ------------------------------------------------------------------------
    def _anchor_linearisation(self, context: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [K] of the anchor feature rows and their gradients [K, 3d+H] (prior excluded:
        it is added exactly)."""
        # Runs under inference_mode / no_grad callers too; inputs are cloned out of
        # inference mode so that autograd may save them.
        with torch.inference_mode(False), torch.enable_grad():
            context = tuple(t.clone() for t in context)
            anchors = self.anchors.clone().requires_grad_(True)
            values = self._score_features(anchors, context)
            (grads,) = torch.autograd.grad(values.sum(), anchors)
        return values.detach(), grads

    def _approx_rows(self, context: tuple) -> torch.Tensor:
        """First-order estimates [M] (index row order): ``s(c) + g(c) . (f - c)`` per cluster,
        f a model's feature row and c its cluster's mean row."""
        values, grads = self._anchor_linearisation(context)
        offsets = values - (grads * self.anchors).sum(-1)
        out = self.features.new_empty(self.num_models)
        for k in range(len(self.bounds) - 1):
            lo, hi = self.bounds[k], self.bounds[k + 1]
            torch.addmv(offsets[k].expand(hi - lo), self.features[lo:hi], grads[k], out=out[lo:hi])
        return out if self.prior is None else out + self.prior

    def approx_scores(self, task_tokens: torch.Tensor, task_mask: torch.Tensor) -> torch.Tensor:
        """The pre-screen's estimates of all M scores for ONE task ([1, C, Dg], [1, C]): float
        [M] in model-index order (for measuring the pre-screen)."""
        _check_one(task_tokens)
        with torch.no_grad():
            return self._approx_rows(self._task_context(task_tokens, task_mask)[0])[self.row_of]

    def rank(self, task_tokens: torch.Tensor, task_mask: torch.Tensor, pool: int | None = None) -> IndexRanking:
        """Rank the zoo for ONE task: pre-screen all M models, score the ``pool`` best exactly.

        Args:
            task_tokens: float [1, C, Dg]; task_mask: bool [1, C] (True = real class).
            pool: models scored exactly (default: the index's ``pool``); ``pool >= M`` scores
                all of them, giving exactly the ranking of ``TokenScorer.forward``.

        Returns:
            :class:`IndexRanking` of ``min(pool, M)`` models, best first.
        """
        _check_one(task_tokens)
        pool = self.pool if pool is None else pool
        if not isinstance(pool, int) or pool < 1:
            raise ConfigError(f"ZooIndex.rank: pool: expected an integer >= 1, got {pool!r}")
        with torch.no_grad():
            context = self._task_context(task_tokens, task_mask)[0]
            if pool >= self.num_models:
                rows = torch.arange(self.num_models, device=self.features.device)
                scores = self._exact_all(context)
            else:
                rows = torch.topk(self._approx_rows(context), pool, sorted=False).indices
                scores = self._exact_rows(rows, context)
            # Same tie order as argsort(stable) over the full scores: by model index first.
            models = self.order[rows]
            by_index = torch.argsort(models)
            models, scores = models[by_index], scores[by_index]
            best = torch.argsort(scores, descending=True, stable=True)
        return IndexRanking(models=models[best], scores=scores[best])


def _check_one(task_tokens: torch.Tensor) -> None:
    if isinstance(task_tokens, torch.Tensor) and task_tokens.ndim == 3 and task_tokens.shape[0] != 1:
        raise ConfigError(f"ZooIndex: task_tokens: expected one task [1, C, Dg], got shape {list(task_tokens.shape)}")


def _kmeans(tokens: torch.Tensor, clusters: int, chunk: int, seed: int) -> torch.Tensor:
    """Cluster ids [M] int64 (0..K'-1, none empty, K' <= K) of a two-level k-means: about
    sqrt(K) coarse clusters, each split into up to K / coarse fine ones fitted on its own members.
    Assigning M tokens costs M * (coarse + fine) distances instead of M * K (10^6 tokens to 2048
    centres: seconds, not a minute)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = min(max(1, round(math.sqrt(clusters))), tokens.shape[0])
    fine = -(-clusters // coarse)  # ceil: at least ``clusters`` slots in all
    top = _nearest(tokens, _lloyd(tokens, coarse, chunk, generator), chunk)
    assign = torch.empty_like(top)
    for c in range(coarse):
        members = torch.nonzero(top == c).flatten()
        if len(members):
            mine = tokens[members]
            assign[members] = c * fine + _nearest(mine, _lloyd(mine, min(fine, len(members)), chunk, generator,
                                                             KMEANS_FINE_SAMPLE * fine), chunk)
    return torch.unique(assign, return_inverse=True)[1]  # drop the ids of empty clusters


def _lloyd(points: torch.Tensor, clusters: int, chunk: int, generator: torch.Generator,
           sample_size: int = KMEANS_SAMPLE) -> torch.Tensor:
    """Centres [K, d] of ``KMEANS_ITERS`` Lloyd iterations on at most ``sample_size`` points,
    initialised on K distinct random points."""
    sample = points[torch.randperm(points.shape[0], generator=generator)[:sample_size].to(points.device)]
    centres = sample[torch.randperm(sample.shape[0], generator=generator)[:clusters].to(points.device)].clone()
    for _ in range(KMEANS_ITERS):
        assign = _nearest(sample, centres, chunk)
        counts = torch.bincount(assign, minlength=clusters)
        sums = torch.zeros_like(centres).index_add_(0, assign, sample)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None].to(sums.dtype), centres)
    return centres


def _nearest(points: torch.Tensor, centres: torch.Tensor, chunk: int) -> torch.Tensor:
    """Index of the nearest centre of every point (squared Euclidean distance), chunked."""
    norms = (centres * centres).sum(-1)
    return torch.cat([
        torch.addmm(norms, points[s:s + chunk], centres.T, alpha=-2.0).argmin(-1)
        for s in range(0, points.shape[0], chunk)
    ])
