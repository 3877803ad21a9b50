"""``TokenScorer``: the Model Spider ranker (paper Sec. 4.1-4.2, App. A.5) as a LightningModule."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from spider.errors import ConfigError
from spider.metrics.functional import PROTOCOLS
from spider.modules._checks import ScorerInputError, check_bool, check_float
from spider.modules.blocks import ModelTaskBlock
from spider.modules.losses import get_loss
from spider.modules.scorer_registry import register_scorer
from spider.schedules import WarmupCosine

# Validation metrics: log name -> (spider.metrics class name, constructor kwargs).
EVAL_METRICS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: ("WeightedTau", {"rank": rank}) for name, rank in PROTOCOLS.items()},  # wtau_paper, wtau_symmetric
    "pearson": ("PearsonPerTask", {}),
    "top1_regret": ("Top1Regret", {}),
}
SCHEDULERS = ("none", "cosine")


def standardise(values: list[float] | None, num_models: int) -> torch.Tensor:
    """z-scores of ``values`` as float32 [M] (zeros when None or constant).

    Raises:
        ScorerInputError: wrong length or a non-finite value (one line).
    """
    if values is None:
        return torch.zeros(num_models)
    if len(values) != num_models:
        raise ScorerInputError(f"model_prior: expected {num_models} values (num_models), got {len(values)}")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ScorerInputError("model_prior: expected finite numbers")
    prior = torch.tensor(values, dtype=torch.float64)
    std = prior.std(unbiased=False)
    prior = prior - prior.mean()
    return (prior / std if std > 0 else prior).float()


@register_scorer("token")
class TokenScorer(L.LightningModule):
    """Scores every model of a zoo for a task from learnable model tokens and task tokens.

    Architecture (paper Eq. 6): learnable model tokens [M, d]; task tokens (class centres of a
    general encoder, [C, Dg]) linearly projected to d; a Transformer (``depth`` layers, paper 1)
    over ``[model token; task tokens]``; an MLP head on the model-token output gives one score.

    Batched scoring: all M models of B tasks are scored in one pass. In each layer the task
    tokens attend among themselves (padding masked by ``task_mask``) and every model token
    attends to [itself; the task tokens], so the task keys/values are computed once per task and
    shared by the M model queries: cost O(B*M*C*d) instead of B*M full sequences. For one layer
    this is exactly the paper's model (the model-token output only depends on what it attends
    to; task-token outputs are never read). ``forward_reference`` runs the plain B*M sequences
    (or a per-model loop like the authors' code) with the same weights, for tests and
    benchmarks; with ``depth > 1`` the two paths are different architectures.

    Args:
        num_models: M, size of the zoo.
        task_dim: Dg, width of the general task tokens.
        dim: d, token width (paper 1024; the small default keeps CPU ranking fast).
        depth: number of Transformer layers (paper 1).
        heads: attention heads (must divide ``dim``).
        mlp_ratio: Transformer MLP width / d (0 = attention only, as in the authors' code).
        dropout: residual/MLP dropout; ``attn_dropout``: dropout on attention weights.
        norm_first: pre-norm (True) or post-norm layers.
        head_hidden: hidden width of the scoring head (None = d; 0 = LayerNorm + Linear only).
        loss: name of a registered loss (``spider.modules.losses.list_losses()``).
        loss_options: keyword arguments for the loss (e.g. ``{"ties": "stable"}``).
        lr, weight_decay: AdamW settings (no decay on biases and LayerNorm weights).
        scheduler: ``"none"`` or ``"cosine"`` (per step, with ``warmup_steps`` linear warm-up).
        model_names: optional ids of the M models (kept in checkpoints for ranking tables).
        model_prior: optional static prior, one float per model (higher = better), e.g. the
            fine-tuning history prior (:mod:`spider.priors`); standardised, then added to every
            score times a learnable weight initialised to ``prior_scale``.
        rank_prior: optional static prior (one float per model) the trained scores are shrunk
            towards when ranking, never while training: in eval mode every score gets
            ``w / (1 - w) * spread * z(prior)``, ``w = rank_prior_weight`` in [0, 1) and ``spread``
            the mean over the last training epoch's tasks of the scores' standard deviation
            across models (a buffer). So a ranking is, up to that scale, ``(1 - w) z(scores) + w
            z(prior)`` while staying one additive term per model (exact in :mod:`zoo_index`). For the
            PTMs' record on domains they were not pre-trained on (``finetune_ood_mean``), where
            a task unlike every training task leaves the tokens guessing. At most one of
            ``model_prior`` and ``rank_prior``.
        ensemble_rank_prior_weight: the weight a seed ensemble of such scorers ranks with
            (:func:`spider.rank_core.load_ranker` with several checkpoints); None: ``rank_prior_weight``.
        target_names: validation target names, used when the datamodule has no
            ``target_names`` attribute (otherwise all tasks are logged as one target ``all``).

    Batches are the dicts of :mod:`spider.datamodules.episodes` ("Episode batches"): training uses
    ``task_tokens``, ``task_mask``, ``target_scores``, ``model_mask``; validation also logs
    ``val/wtau_paper/<target>`` (weighted tau, paper protocol ``rank=None``),
    ``val/wtau_symmetric/<target>`` (scipy default ``rank=True``), ``val/pearson/<target>``,
    ``val/top1_regret/<target>`` from ``truth``/``truth_mask``/``target_index``, and their
    means over targets ``val/wtau_paper`` etc.

    Adding a scorer (worked example): subclass, override what differs, register a name::

        import torch.nn.functional as F
        from spider.modules import TokenScorer, register_scorer

        @register_scorer("token_cosine")
        class CosineTokenScorer(TokenScorer):
            '''Token scorer on L2-normalised class centres.'''

            def embed_tasks(self, task_tokens):
                return super().embed_tasks(F.normalize(task_tokens, dim=-1))

    Then ``get_scorer("token_cosine")(num_models=10, task_dim=1024)`` builds it, and the fit
    config selects it by that name. A scorer needs only ``forward(task_tokens, task_mask) ->
    [B, M]``; training/validation steps, losses, metrics and optimisers are inherited. New
    ``__init__`` arguments must be plain values (int, float, str, list, dict) and the subclass
    must call ``self.save_hyperparameters()`` after ``super().__init__(...)`` so checkpoints
    restore it.
    """

    def __init__(
        self,
        num_models: int,
        task_dim: int,
        dim: int = 128,
        depth: int = 1,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        norm_first: bool = True,
        head_hidden: int | None = None,
        loss: str = "listwise",
        loss_options: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "none",
        warmup_steps: int = 0,
        model_names: list[str] | None = None,
        target_names: list[str] | None = None,
        model_prior: list[float] | None = None,
        prior_scale: float = 1.0,
        rank_prior: list[float] | None = None,
        rank_prior_weight: float = 0.0,
        ensemble_rank_prior_weight: float | None = None,
    ) -> None:
        super().__init__()
        _require(num_models >= 1, "num_models", "an integer >= 1", num_models)
        _require(task_dim >= 1, "task_dim", "an integer >= 1", task_dim)
        _require(depth >= 1, "depth", "an integer >= 1", depth)
        _require(heads >= 1 and dim % heads == 0, "dim", f"a multiple of heads={heads}", dim)
        _require(scheduler in SCHEDULERS, "scheduler", f"one of {list(SCHEDULERS)}", scheduler)
        _require(
            model_names is None or len(model_names) == num_models,
            "model_names", f"{num_models} names (num_models)", model_names,
        )
        _require(rank_prior is None or model_prior is None, "rank_prior", "null when model_prior is set "
                 "(one static prior per scorer)", "a list")
        _require(0 <= rank_prior_weight < 1, "rank_prior_weight", "a float in [0, 1)", rank_prior_weight)
        _require(ensemble_rank_prior_weight is None or 0 <= ensemble_rank_prior_weight < 1,
                 "ensemble_rank_prior_weight", "a float in [0, 1) or None", ensemble_rank_prior_weight)
        self.save_hyperparameters()
        self.loss_fn = functools.partial(get_loss(loss), **dict(loss_options or {}))

        self.model_tokens = nn.Parameter(torch.randn(num_models, dim) * 0.02)
        self.task_proj = nn.Linear(task_dim, dim)
        self.blocks = nn.ModuleList(
            ModelTaskBlock(dim, heads, mlp_ratio, dropout, attn_dropout, norm_first)
            for _ in range(depth)
        )
        hidden = dim if head_hidden is None else head_hidden
        layers: list[nn.Module] = [nn.LayerNorm(dim)]
        if hidden > 0:
            layers += [nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden if hidden > 0 else dim, 1))
        self.head = nn.Sequential(*layers)
        # A static prior (e.g. mean fine-tuned accuracy on pool tasks): given, not learned, so the
        # tokens learn what a task changes; only its weight is learned. Registered only when
        # given, so checkpoints without one keep their state-dict keys.
        if model_prior is not None:
            self.register_buffer("model_prior", standardise(model_prior, num_models))
            self.prior_scale = nn.Parameter(torch.tensor(float(prior_scale)))
        if rank_prior is not None:
            self.register_buffer("rank_prior", standardise(rank_prior, num_models))
            self.register_buffer("score_spread", torch.zeros(()))  # 0 until an epoch is trained
            self.rank_prior_weight = float(rank_prior_weight)
            self._spread = torch.zeros(2)  # this epoch's (sum of stds, tasks), on the training device
        self.eval_metrics: nn.ModuleDict | None = None
        self.eval_target_names: list[str] = []

    @property
    def num_models(self) -> int:
        return self.model_tokens.shape[0]

    def add_prior(self, scores: torch.Tensor, models: torch.Tensor | None = None) -> torch.Tensor:
        """``scores`` [B, M] (or [B, k] of the model indices ``models`` [B, k]) plus the weighted
        standardised prior (the rank prior in eval mode only); unchanged without one."""
        if hasattr(self, "model_prior"):
            return scores + self.prior_scale * (self.model_prior if models is None else self.model_prior[models])
        if hasattr(self, "rank_prior") and not self.training and self.rank_prior_weight > 0:
            w = self.rank_prior_weight
            prior = self.rank_prior if models is None else self.rank_prior[models]
            return scores + (w / (1 - w)) * self.score_spread * prior
        return scores

    def start_model_tokens(self, tokens: Any) -> None:
        """Replace the model tokens' random start with ``tokens`` [M, d] (e.g. the fine-tuning
        history, :func:`spider.priors.history_embedding`), before training.

        Raises:
            ScorerInputError: not an [M, d] array of finite numbers.
        """
        values = torch.as_tensor(tokens, dtype=self.model_tokens.dtype)
        if tuple(values.shape) != tuple(self.model_tokens.shape):
            raise ScorerInputError(f"model tokens: expected shape {list(self.model_tokens.shape)} (models, dim), "
                                   f"got {list(values.shape)}")
        if not bool(torch.isfinite(values).all()):
            raise ScorerInputError("model tokens: expected finite values")
        with torch.no_grad():
            self.model_tokens.copy_(values.to(self.model_tokens.device))

    def set_rank_prior_weight(self, weight: float) -> None:
        """Rank with another shrinkage weight (in [0, 1)) towards the rank prior."""
        if not hasattr(self, "rank_prior"):
            raise ScorerInputError("rank_prior_weight: this scorer has no rank prior (data.rank_prior was null)")
        _require(0 <= weight < 1, "rank_prior_weight", "a float in [0, 1)", weight)
        self.rank_prior_weight = float(weight)
        self.hparams["rank_prior_weight"] = float(weight)

    def with_model(self, name: str, *, prior: float | None = None, model_dim: int | None = None) -> TokenScorer:
        """A copy of this scorer that ranks one more model, for :mod:`spider.incremental`.

        Every weight is copied; ``name`` becomes model index M with a token equal to the mean of
        the others (a neutral start that the caller trains) and, in tensors that grow per model
        (the re-ranker's projections), the fresh initialisation of its own row. Since a model
        token only attends to the task tokens, the M old models keep exactly their scores.

        Args:
            name: id of the new model (not among ``hparams.model_names``).
            prior: its raw static-prior value on the scale of ``hparams.model_prior`` (or
                ``hparams.rank_prior``; required when the scorer has a prior); standardised with
                the old models' mean and std, so their standardised values, and so their scores,
                stay unchanged.
            model_dim: its feature width (used by scorers with per-model projections).

        Raises:
            ScorerInputError: no model names, a name already present, a missing or non-finite prior.
        """
        hp = dict(self.hparams)
        names = list(hp.get("model_names") or [])
        if len(names) != self.num_models:
            raise ScorerInputError("model_names: adding a model needs the scorer's model names")
        if name in names:
            raise ScorerInputError(f"model {name!r}: already ranked by this scorer")
        hp.update(num_models=self.num_models + 1, model_names=[*names, name], **self._grown_hparams(model_dim))
        z = None
        prior_key = next((k for k in ("model_prior", "rank_prior") if hasattr(self, k)), None)
        if prior_key is not None:
            if prior is None or not math.isfinite(prior):
                raise ScorerInputError(f"model {name!r}: expected a finite prior value, got {prior!r}")
            old = torch.tensor([float(v) for v in hp[prior_key]], dtype=torch.float64)
            std = float(old.std(unbiased=False))
            z = (float(prior) - float(old.mean())) / (std if std > 0 else 1.0)
            hp[prior_key] = [*(float(v) for v in old), float(prior)]
        grown = type(self)(**hp)
        state = grown.state_dict()
        for key, old_value in self.state_dict().items():
            new_value = state[key]
            if new_value.shape != old_value.shape:  # a per-model tensor: old rows in the leading slice
                if new_value.ndim != old_value.ndim or any(n < o for n, o in zip(new_value.shape, old_value.shape)):
                    raise ScorerInputError(f"{key}: cannot grow shape {list(old_value.shape)} to "
                                           f"{list(new_value.shape)}")
                new_value = new_value.clone()
                new_value[: old_value.shape[0]] = 0  # padding of old rows stays zero, as it was
                new_value[tuple(slice(0, n) for n in old_value.shape)] = old_value
                state[key] = new_value
            else:
                state[key] = old_value.clone()
        state["model_tokens"][-1] = self.model_tokens.detach().mean(0)
        if z is not None:
            state[prior_key][-1] = z
        grown.load_state_dict(state)
        grown.train(self.training)
        return grown

    def _grown_hparams(self, model_dim: int | None) -> dict[str, Any]:
        """Hyperparameters (besides ``num_models``, ``model_names``, ``model_prior``) that change
        when a model of width ``model_dim`` is added (hook for subclasses)."""
        return {}

    # -- scoring ----------------------------------------------------------------------------------
    def embed_tasks(self, task_tokens: torch.Tensor) -> torch.Tensor:
        """Project general task tokens [B, C, Dg] to the token width: [B, C, d]."""
        return self.task_proj(task_tokens)

    @staticmethod
    def clean_tasks(task_tokens: torch.Tensor, task_mask: torch.Tensor) -> torch.Tensor:
        """Zero the padded classes of [B, C, Dg] so that whatever they hold (even NaN) cannot
        reach the output (attention weights of 0 times NaN values would still give NaN)."""
        return torch.where(task_mask[..., None], task_tokens, torch.zeros_like(task_tokens))

    def check_tasks(self, task_tokens: torch.Tensor, task_mask: torch.Tensor) -> None:
        check_float("task_tokens", task_tokens, 3)
        if task_tokens.shape[-1] != self.hparams.task_dim:
            raise ScorerInputError(
                f"task_tokens: expected last dim {self.hparams.task_dim} (task_dim), "
                f"got shape {list(task_tokens.shape)}"
            )
        check_bool("task_mask", task_mask, tuple(task_tokens.shape[:2]))
        if not bool(task_mask.any(dim=1).all()):
            raise ScorerInputError("task_mask: every task needs at least one real class (True)")

    def forward(self, task_tokens: torch.Tensor, task_mask: torch.Tensor) -> torch.Tensor:
        """Score all M models for B tasks in one batched pass.

        Args:
            task_tokens: float [B, C, Dg] class centres (padded classes may hold anything).
            task_mask: bool [B, C], True = real class.

        Returns:
            float [B, M] fitness scores, higher = better.
        """
        self.check_tasks(task_tokens, task_mask)
        tasks = self.embed_tasks(self.clean_tasks(task_tokens, task_mask))
        models = self.model_tokens.expand(tasks.shape[0], -1, -1)
        for i, block in enumerate(self.blocks):
            updated = block.attend_context(models, tasks, task_mask)
            if i + 1 < len(self.blocks):  # task-token outputs of the last layer are never read
                tasks = block.self_attend(tasks, task_mask)
            models = updated
        return self.add_prior(self.head(models).squeeze(-1))

    def forward_reference(
        self, task_tokens: torch.Tensor, task_mask: torch.Tensor, *, loop: bool = False
    ) -> torch.Tensor:
        """Reference path: full sequences ``[model token; task tokens]``, same weights.

        ``loop=False`` stacks the B*M sequences into one batch; ``loop=True`` runs one model at
        a time like the authors' code. Equals ``forward`` for ``depth == 1``.

        Returns:
            float [B, M].
        """
        self.check_tasks(task_tokens, task_mask)
        tasks = self.embed_tasks(self.clean_tasks(task_tokens, task_mask))
        batch, classes, dim = tasks.shape
        num = self.num_models
        if loop:
            mask = torch.cat([task_mask.new_ones(batch, 1), task_mask], dim=1)
            columns = []
            for m in range(num):
                seq = torch.cat([self.model_tokens[m].expand(batch, 1, dim), tasks], dim=1)
                for block in self.blocks:
                    seq = block.self_attend(seq, mask)
                columns.append(self.head(seq[:, 0]))
            return self.add_prior(torch.cat(columns, dim=1))
        seq = torch.cat(
            [
                self.model_tokens[None, :, None, :].expand(batch, num, 1, dim),
                tasks[:, None].expand(batch, num, classes, dim),
            ],
            dim=2,
        ).reshape(batch * num, classes + 1, dim)
        mask = torch.cat([task_mask.new_ones(batch, 1), task_mask], dim=1)
        mask = mask[:, None].expand(batch, num, classes + 1).reshape(batch * num, classes + 1)
        for block in self.blocks:
            seq = block.self_attend(seq, mask)
        return self.add_prior(self.head(seq[:, 0]).view(batch, num))

    def score_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B, M] for an episode batch dict (subclasses add their extra keys)."""
        return self(batch["task_tokens"], batch["task_mask"])

    # -- Lightning hooks --------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        scores = self.score_batch(batch)
        loss = self.loss_fn(scores, batch["target_scores"], batch["model_mask"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=scores.shape[0])
        if hasattr(self, "rank_prior"):  # on the device: no host sync per step
            self._spread = self._spread.to(scores.device) + spread_sums(scores.detach(), batch["model_mask"])
        return loss

    def on_train_epoch_start(self) -> None:
        if hasattr(self, "rank_prior"):
            self._spread = torch.zeros(2, device=self.device)

    def on_train_epoch_end(self) -> None:
        if hasattr(self, "rank_prior"):
            # Every DDP rank saw other tasks: the spread is over all of them, equal on every rank.
            total = self.trainer.strategy.reduce(self._spread.to(self.device), reduce_op="sum").cpu().double()
            if float(total[1]) > 0:
                self.score_spread.fill_(float(total[0] / total[1]))

    def setup(self, stage: str) -> None:
        # Fresh metric objects for every run (fit, validate, test): no state survives from an
        # earlier trainer, and since setup() runs before the strategy moves/wraps the module,
        # they live on the right device on every DDP process. They are created for ALL targets
        # on every rank so that each rank syncs the same metrics in the same order.
        self._build_eval_metrics(self._resolve_target_names())

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.score_batch(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_metrics("test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
        )
        if hp.scheduler == "none":
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("model.scheduler: 'cosine' needs a finite run "
                              "(set trainer.max_steps or trainer.max_epochs)")
        total = int(total)
        multiplier = WarmupCosine(hp.warmup_steps, total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- evaluation helpers -----------------------------------------------------------------------
    def _resolve_target_names(self) -> list[str]:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        names = getattr(datamodule, "target_names", None) or self.hparams.target_names
        return [str(n) for n in names] if names else ["all"]

    def _build_eval_metrics(self, target_names: Sequence[str]) -> None:
        import spider.metrics as metrics  # imported late: only evaluation needs it

        self.eval_target_names = list(target_names)
        self.eval_metrics = nn.ModuleDict(
            {
                f"t{i}": nn.ModuleDict(
                    {key: getattr(metrics, cls)(**kw) for key, (cls, kw) in EVAL_METRICS.items()}
                )
                for i in range(len(self.eval_target_names))
            }
        ).to(self.device)

    def _evaluation_step(self, batch: Mapping[str, torch.Tensor], stage: str) -> None:
        scores = self.score_batch(batch)
        size = scores.shape[0]
        if "target_scores" in batch and "model_mask" in batch:
            loss = self.loss_fn(scores, batch["target_scores"], batch["model_mask"])
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=size)
        if "truth" not in batch:
            return
        if self.eval_metrics is None:  # called outside a Trainer run
            self._build_eval_metrics(self._resolve_target_names())
        truth, truth_mask = batch["truth"], batch["truth_mask"]
        num_targets = len(self.eval_target_names)
        index = batch.get("target_index")
        if index is None or num_targets == 1:
            index = torch.zeros(size, dtype=torch.long, device=scores.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_targets):
            raise ScorerInputError(
                f"target_index: expected values in [0, {num_targets}) "
                f"({num_targets} target names), got {index.tolist()}"
            )
        for t in index.unique().tolist():
            rows = index == t
            for metric in self.eval_metrics[f"t{t}"].values():
                metric.update(scores[rows].detach(), truth[rows], truth_mask[rows])

    def _log_eval_metrics(self, stage: str) -> None:
        if self.eval_metrics is None:
            return
        per_metric: dict[str, list[torch.Tensor]] = {key: [] for key in EVAL_METRICS}
        for i, name in enumerate(self.eval_target_names):
            for key, metric in self.eval_metrics[f"t{i}"].items():
                if not metric.update_called:  # a target of the other stage (val vs test); evaluation
                    continue                  # is replicated, so every rank skips the same ones
                # compute() syncs across processes; every rank calls it for every target.
                value = torch.as_tensor(metric.compute(), dtype=torch.float32).detach()
                metric.reset()
                if torch.isfinite(value):
                    per_metric[key].append(value)
                    self.log(f"{stage}/{key}/{name}", value)
        for key, values in per_metric.items():
            if values:
                self.log(f"{stage}/{key}", torch.stack(values).mean())


def spread_sums(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 [2] on the scores' device: (sum over tasks of the scores' std across their masked
    models, number of tasks with at least two such models) of ``scores`` [B, M] and bool ``mask``."""
    mask, scores = mask.bool(), scores.float()
    n = mask.sum(1).clamp(min=1)
    keep = mask.sum(1) >= 2
    mean = torch.where(mask, scores, 0.0).sum(1) / n
    var = (torch.where(mask, scores - mean[:, None], 0.0) ** 2).sum(1) / n
    return torch.stack([torch.where(keep, var.sqrt(), 0.0).sum(), keep.sum().float()])


def _require(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"model.{name}: expected {expected}, got {got!r}")
