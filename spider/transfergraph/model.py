"""TransferGraph: fit on the zoo's fine-tuning history, rank a new task by link prediction, save/load.

:func:`fit` builds the graph of :mod:`spider.transfergraph.graph` from

* the fine-tuning bank (``bank.accuracy`` [K, M] % of ``bank.models`` on K pool tasks),
* the task tokens of those tasks (class centres under the general encoder, [C_k, D] each),
* PTM metadata (:class:`PTMMeta`: architecture family, source domain, parameter count),

and trains the graph learner and the pair predictor end to end on *episodes that look like
ranking*: a random quarter of the pool tasks lose their accuracy edges, keep only their
similarity edges to the other tasks, and the model predicts their accuracies. A new task is then
one more such node (:meth:`TransferGraph.predict`). Accuracies are standardised per task (a
ranking cannot use a task's overall difficulty), so predictions are per-task z-scores.

Dataset-dataset similarity is the symmetric Chamfer similarity of two tasks' class centres
(centred on the pool tasks' mean centre, unit length): the mean over one task's classes of the
best cosine to the other task's classes, averaged both ways. Dataset node features: the mean of
those unit centres and the standardised log class count; PTM node features: one-hot family and
source domain, standardised log parameter count.

Saved files are ``torch.save`` dicts of tensors plus one JSON string, read back with
``torch.load(weights_only=True)``: nothing in them is imported or executed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from spider.errors import ConfigError, SpiderError
from spider.io import write_bytes_atomic
from spider.transfergraph.graph import GraphSAGE, PairPredictor, mean_rows

__all__ = ["FORMAT", "HParams", "PTMMeta", "TransferGraph", "fit", "load"]

FORMAT = "spider.transfergraph/1"


@dataclass(frozen=True)
class PTMMeta:
    """What TransferGraph knows about a PTM besides its fine-tuning history."""

    family: str  # architecture family (e.g. "cifar_resnet", "test_vit")
    source: str  # what it was pre-trained on (e.g. "cifar10", "mnist+omniglot_background")
    params: int  # parameter count

    def __post_init__(self) -> None:
        for name in ("family", "source"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"PTM metadata {name}: expected a non-empty string, got {value!r}")
        if isinstance(self.params, bool) or not isinstance(self.params, int) or self.params < 1:
            raise ConfigError(f"PTM metadata params: expected a positive integer, got {self.params!r}")


@dataclass(frozen=True)
class HParams:
    """Graph learner and predictor settings.

    The defaults are the setting best on the mini zoo's 4 validation targets (mean wtau_paper
    0.735, top-1 regret 1.6 points) among the 24 of ``spider.benchmark.transfergraph.GRID``
    (dim 16/32, layers 1/2, topk 3/5/10, predictor linear/mlp; validation range 0.62-0.735):
    the graph is small (40 pool tasks), so the smallest learner with the 3 nearest tasks wins.
    """

    dim: int = 16  # embedding width
    layers: int = 1  # GraphSAGE layers
    topk: int = 3  # similarity edges per dataset node
    predictor: str = "linear"  # "linear" or "mlp"
    steps: int = 300  # full-graph training steps (one episode each)
    lr: float = 1e-2
    weight_decay: float = 1e-3
    query_fraction: float = 0.25  # pool tasks that lose their accuracy edges in an episode
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "topk", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"transfergraph {name}: expected a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"transfergraph seed: expected an integer, got {self.seed!r}")
        if self.predictor not in PairPredictor.KINDS:
            raise ConfigError(f"transfergraph predictor: expected one of {', '.join(PairPredictor.KINDS)}, "
                              f"got {self.predictor!r}")
        for name, ok, expected in (("lr", lambda v: v > 0, "> 0"), ("weight_decay", lambda v: v >= 0, ">= 0"),
                                   ("query_fraction", lambda v: 0 < v < 1, "in (0, 1)")):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not ok(value)):
                raise ConfigError(f"transfergraph {name}: expected a finite number {expected}, got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HParams:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"transfergraph: unknown setting(s) {unknown}")
        return cls(**values)


# --------------------------------------------------------------------------------- features


def _finite_tokens(tokens: Any, where: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or not (x.dtype.is_floating_point):
        raise SpiderError(f"{where}: expected float class centres [C, D], got {x.dtype} {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise SpiderError(f"{where}: non-finite class centre values")
    return x


def _unit_sets(tokens: Sequence[torch.Tensor], mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred unit centres padded into ([S, Cmax, D], valid mask [S, Cmax])."""
    width = max(t.shape[0] for t in tokens)
    sets = torch.zeros(len(tokens), width, mean.shape[0], dtype=torch.float64)
    valid = torch.zeros(len(tokens), width, dtype=torch.bool)
    for i, t in enumerate(tokens):
        sets[i, : t.shape[0]] = torch.nn.functional.normalize(t - mean, dim=1)
        valid[i, : t.shape[0]] = True
    return sets, valid


def chamfer_similarity(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[A, B] symmetric Chamfer similarity of padded unit sets (:func:`_unit_sets` outputs)."""
    (sa, va), (sb, vb) = a, b
    cos = torch.einsum("acd,bjd->abcj", sa, sb)  # [A, B, Ca, Cb]
    pair_valid = va[:, None, :, None] & vb[None, :, None, :]
    cos = cos.masked_fill(~pair_valid, -math.inf)
    a_to_b = (cos.amax(dim=3).masked_fill(~va[:, None, :], 0.0).sum(2)) / va.sum(1)[:, None]
    b_to_a = (cos.amax(dim=2).masked_fill(~vb[None, :, :], 0.0).sum(2)) / vb.sum(1)[None, :]
    return 0.5 * (a_to_b + b_to_a)


def _dataset_features(sets: tuple[torch.Tensor, torch.Tensor], log_classes: tuple[float, float]) -> torch.Tensor:
    s, valid = sets
    counts = valid.sum(1, keepdim=True).to(torch.float64)
    centre = s.sum(1) / counts
    mean, std = log_classes
    return torch.cat([centre, (counts.log() - mean) / std], dim=1)


def _ptm_features(models: Sequence[str], metadata: Mapping[str, PTMMeta]) -> torch.Tensor:
    """One-hot family and source (vocabularies: sorted values over ``models``), standardised log10 params."""
    metas = [metadata[m] for m in models]
    columns = []
    for key in ("family", "source"):
        vocab = sorted({getattr(meta, key) for meta in metas})
        columns.append(torch.tensor([[float(getattr(meta, key) == v) for v in vocab] for meta in metas]))
    params = torch.tensor([[math.log10(meta.params)] for meta in metas], dtype=torch.float64)
    columns.append((params - params.mean()) / params.std(unbiased=False).clamp_min(1e-6))
    return torch.cat([c.to(torch.float64) for c in columns], dim=1)


def standardise_rows(accuracy: torch.Tensor) -> torch.Tensor:
    """Per-task z-scores of accuracies [K, M] (0 for a task where every PTM scored the same)."""
    std = accuracy.std(dim=1, unbiased=False, keepdim=True)
    return torch.where(std > 1e-9, (accuracy - accuracy.mean(dim=1, keepdim=True)) / std.clamp_min(1e-9), 0.0)


def _neighbours(sim: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """[N, K] uniform weights over each row's ``k`` most similar allowed columns."""
    k = min(k, sim.shape[1])
    values, index = sim.masked_fill(~allowed, -math.inf).topk(k, dim=1)
    return mean_rows(torch.zeros_like(sim).scatter(1, index, torch.isfinite(values).to(sim.dtype)))


# ------------------------------------------------------------------------------------ model


class TransferGraph:
    """A fitted TransferGraph: PTM ids, metadata, the bank's tasks and the trained networks."""

    def __init__(self, hparams: HParams, models: Sequence[str], metadata: Mapping[str, PTMMeta],
                 token_mean: torch.Tensor, bank_tokens: Sequence[torch.Tensor], bank_z: torch.Tensor,
                 info: Mapping[str, Any] | None = None) -> None:
        self.hparams = hparams
        self.models = list(models)
        self.metadata = {m: metadata[m] for m in self.models}
        self.token_mean = token_mean.to(torch.float64)
        self.bank_tokens = [t.to(torch.float64) for t in bank_tokens]
        self.bank_z = bank_z.to(torch.float64)
        self.info: dict[str, Any] = dict(info or {})
        self._bank_sets = _unit_sets(self.bank_tokens, self.token_mean)
        log_c = torch.tensor([math.log(t.shape[0]) for t in self.bank_tokens], dtype=torch.float64)
        self._log_classes = (float(log_c.mean()), max(float(log_c.std(unbiased=False)), 1e-6))
        self._bank_x = _dataset_features(self._bank_sets, self._log_classes)
        self._bank_sim = chamfer_similarity(self._bank_sets, self._bank_sets)
        self._ptm_x = _ptm_features(self.models, self.metadata)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hparams.seed)
            self.net = GraphSAGE(self._ptm_x.shape[1], self._bank_x.shape[1], hparams.dim, hparams.layers).double()
            self.head = PairPredictor(hparams.dim, hparams.predictor).double()

    @property
    def num_tasks(self) -> int:
        return len(self.bank_tokens)

    @property
    def token_dim(self) -> int:
        return int(self.token_mean.shape[0])

    def _forward(self, xd: torch.Tensor, acc: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Predictions [N, M] for N dataset nodes: ``acc`` [N, M] edges, ``weights`` [N, K] similarity
        weights onto the bank's tasks (the first K nodes)."""
        n, k = weights.shape
        similar = torch.cat([weights, torch.zeros(n, n - k, dtype=weights.dtype)], dim=1)
        z = torch.cat([self.bank_z, torch.zeros(n - k, len(self.models), dtype=weights.dtype)]) * acc
        hp, hd = self.net(self._ptm_x, xd, acc, z, similar)
        return self.head(hp, hd, weights @ z[:k])

    def train(self) -> list[float]:
        """Episodes of :class:`HParams` ``steps``; returns the loss of every step."""
        hp, k = self.hparams, self.num_tasks
        num_query = min(k - 1, max(1, round(hp.query_fraction * k)))
        generator = torch.Generator().manual_seed(hp.seed)
        params = [*self.net.parameters(), *self.head.parameters()]
        optimiser = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        not_self = ~torch.eye(k, dtype=torch.bool)
        losses = []
        self.net.train(), self.head.train()
        for _ in range(hp.steps):
            query = torch.randperm(k, generator=generator)[:num_query]
            support = torch.ones(k, dtype=torch.bool)
            support[query] = False
            acc = support[:, None].expand(k, len(self.models)).to(torch.float64)
            pred = self._forward(self._bank_x, acc, _neighbours(self._bank_sim, not_self & support[None], hp.topk))
            loss = torch.nn.functional.mse_loss(pred[query], self.bank_z[query])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        self.net.eval(), self.head.eval()
        if not all(math.isfinite(v) for v in losses):
            raise SpiderError("transfergraph: training diverged (non-finite loss); lower lr")
        return losses

    def predict(self, tokens: Sequence[Any]) -> np.ndarray:
        """float64 [T, M] predicted per-task z-scored accuracy of every PTM on each new task
        (``tokens[t]``: its class centres [C, D] under the general encoder); higher = better."""
        if not len(tokens):
            return np.zeros((0, len(self.models)))
        checked = [_finite_tokens(t, f"task {i} tokens") for i, t in enumerate(tokens)]
        for i, t in enumerate(checked):
            if t.shape[1] != self.token_dim:
                raise SpiderError(f"task {i} tokens: features have dim {t.shape[1]}, TransferGraph was fitted on "
                                  f"general-encoder tokens of dim {self.token_dim}")
        k, num_new = self.num_tasks, len(checked)
        sets = _unit_sets(checked, self.token_mean)
        sim = torch.cat([self._bank_sim, chamfer_similarity(sets, self._bank_sets)])
        allowed = torch.cat([~torch.eye(k, dtype=torch.bool), torch.ones(num_new, k, dtype=torch.bool)])
        acc = torch.cat([torch.ones(k, len(self.models)), torch.zeros(num_new, len(self.models))]).to(torch.float64)
        xd = torch.cat([self._bank_x, _dataset_features(sets, self._log_classes)])
        with torch.no_grad():
            pred = self._forward(xd, acc, _neighbours(sim, allowed, self.hparams.topk))
        return pred[k:].numpy().astype(np.float64)

    # ------------------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically (tensors + one JSON string; ``torch.load(weights_only=True)``)."""
        config = {"hparams": asdict(self.hparams), "models": self.models,
                  "metadata": {m: asdict(v) for m, v in self.metadata.items()},
                  "bank_classes": [int(t.shape[0]) for t in self.bank_tokens], "info": self.info}
        state = {"format": FORMAT, "config": json.dumps(config), "token_mean": self.token_mean,
                 "bank_tokens": torch.cat(self.bank_tokens), "bank_z": self.bank_z,
                 "net": dict(self.net.state_dict()), "head": dict(self.head.state_dict())}
        write_bytes_atomic(path, lambda f: torch.save(state, f))


def fit(bank: Any, tokens: Sequence[Any], metadata: Mapping[str, PTMMeta], hparams: HParams | None = None,
        info: Mapping[str, Any] | None = None) -> TransferGraph:
    """Train TransferGraph on a fine-tuning bank.

    Args:
        bank: a :class:`~spider.datamodules.finetune_bank.FinetuneBank` (or anything with
            ``models`` [M] and ``accuracy`` [K, M]); K >= 2 tasks, M >= 2 PTMs.
        tokens: K class-centre arrays [C_k, D] of the bank's tasks under the general encoder.
        metadata: :class:`PTMMeta` of every PTM of the bank.
        info: JSON-able facts kept in the saved file (e.g. the zoo and general encoder).

    Raises:
        SpiderError: non-finite accuracies or tokens, mismatched sizes, missing metadata (one line).
    """
    hparams = hparams or HParams()
    models = [str(m) for m in bank.models]
    accuracy = np.asarray(bank.accuracy, dtype=np.float64)
    if len(set(models)) != len(models) or len(models) < 2:
        raise SpiderError(f"fine-tuning bank: expected at least 2 distinct PTM ids, got {models}")
    if accuracy.ndim != 2 or accuracy.shape[1] != len(models) or accuracy.shape[0] < 2:
        raise SpiderError(f"fine-tuning bank: expected accuracy [K >= 2 tasks, {len(models)} PTMs], "
                          f"got shape {accuracy.shape}")
    if not np.isfinite(accuracy).all():
        k, m = np.argwhere(~np.isfinite(accuracy))[0]
        raise SpiderError(f"fine-tuning bank: non-finite accuracy {accuracy[k, m]} (task {k}, PTM {models[m]}); "
                          "TransferGraph needs every PTM fine-tuned on every pool task")
    if len(tokens) != accuracy.shape[0]:
        raise SpiderError(f"tokens: expected one class-centre array per bank task ({accuracy.shape[0]}), "
                          f"got {len(tokens)}")
    checked = [_finite_tokens(t, f"bank task {i} tokens") for i, t in enumerate(tokens)]
    if len({t.shape[1] for t in checked}) != 1:
        raise SpiderError(f"tokens: bank tasks' class centres differ in dim {sorted({t.shape[1] for t in checked})}")
    missing = [m for m in models if not isinstance(metadata.get(m), PTMMeta)]
    if missing:
        raise SpiderError(f"metadata: no PTMMeta for {missing[:3]}")
    start = time.perf_counter()
    model = TransferGraph(hparams, models, metadata, torch.cat(checked).mean(0), checked,
                          standardise_rows(torch.as_tensor(accuracy)), info)
    model.train()
    model.info["train_seconds"] = time.perf_counter() - start
    return model


def _tensor(state: Mapping[str, Any], key: str, where: str, ndim: int) -> torch.Tensor:
    value = state.get(key)
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or not value.dtype.is_floating_point:
        raise ConfigError(f"{where}: '{key}' is not a float tensor of {ndim} dims")
    if not torch.isfinite(value).all():
        raise ConfigError(f"{where}: '{key}' holds non-finite values")
    return value.to(torch.float64)


def load(path: str | os.PathLike) -> TransferGraph:
    """Read a file written by :meth:`TransferGraph.save` (``weights_only=True``; every part checked).

    Raises:
        ConfigError: missing or unreadable file, another format, inconsistent parts (one line).
    """
    where = f"TransferGraph file {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file (write one with `spider transfergraph fit`)") from None
    except Exception as err:  # unpickling errors come in many types
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"{where}: cannot load with weights_only=True ({type(err).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{where}: not a {FORMAT} file")
    try:
        config = json.loads(state["config"])
        hparams = HParams.from_dict(config["hparams"])
        models = [str(m) for m in config["models"]]
        metadata = {m: PTMMeta(**config["metadata"][m]) for m in models}
        classes = [int(c) for c in config["bank_classes"]]
        info = dict(config.get("info") or {})
    except (KeyError, TypeError, ValueError, AttributeError, SpiderError) as err:
        raise ConfigError(f"{where}: invalid config ({type(err).__name__}: {err})") from None
    mean = _tensor(state, "token_mean", where, 1)
    bank_tokens = _tensor(state, "bank_tokens", where, 2)
    bank_z = _tensor(state, "bank_z", where, 2)
    if (len(classes) < 2 or min(classes) < 1 or sum(classes) != bank_tokens.shape[0]
            or bank_tokens.shape[1] != mean.shape[0] or bank_z.shape != (len(classes), len(models))):
        raise ConfigError(f"{where}: tensor shapes disagree with its config (tasks, classes, PTMs)")
    model = TransferGraph(hparams, models, metadata, mean, list(torch.split(bank_tokens, classes)), bank_z, info)
    try:
        model.net.load_state_dict(state["net"])
        model.head.load_state_dict(state["head"])
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: weights do not fit its own settings ({str(err).splitlines()[0]})") from None
    weights = [*model.net.parameters(), *model.head.parameters()]
    if not all(torch.isfinite(w).all() for w in weights):
        raise ConfigError(f"{where}: non-finite weights")
    model.net.eval(), model.head.eval()
    return model
