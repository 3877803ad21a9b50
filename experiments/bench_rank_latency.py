"""Latency of ranking a zoo of M model tokens for ONE task: the ranking path of ``spider rank``.

For each M the script builds a scorer with M model tokens, its :class:`~spider.modules.zoo_index.ZooIndex`
(the task-independent parts, cached once per checkpoint), then times on random tasks:

- ``rank``: the default path of :func:`spider.rank_core.score_general` for that M (the plain
  batched ``TokenScorer.forward`` up to ``FAST_PATH_MIN_MODELS``, above it the index's two-stage
  search: pre-screen of all M, exact scores of the best ``pool``);
- ``exact``: exact scores of all M models (the index's cached, chunked exact path; equal to
  ``TokenScorer.forward``), the reference of the top-10 agreement;
- ``top10``: fraction of tasks whose top 10 (ordered) equals the exact top 10;
- memory: ``index MiB`` = the index's cached tensors (``ZooIndex.nbytes``; the scorer's own
  tokens come on top), ``peak MiB`` = the transient peak of resident memory while ranking, above
  the resident memory before (Linux) (VmHWM, reset through /proc/self/clear_refs); on
  CUDA the allocator's peak (``torch.cuda.max_memory_allocated``).

Scorers: ``--checkpoint`` takes a trained TokenScorer and grows its zoo to M tokens sampled
around its trained tokens (mixtures of two trained tokens plus Gaussian noise of ``--noise``
times their per-dimension spread: a trained zoo has only a few tokens); tasks are then random
class subsets (2..10 classes) of the datasets of ``--store`` under the general encoder. Without
a checkpoint: random weights (the scorer's own initialisation, ``--token-scale`` rescales the
tokens) and Gaussian tasks. Times are min/median wall ms over the tasks (the minimum is the least
disturbed on a shared machine).

    python experiments/bench_rank_latency.py                                 # M = 10^3..10^6
    python experiments/bench_rank_latency.py --models 1000000 --threads 2 --json
    python experiments/bench_rank_latency.py --checkpoint CKPT --store STORE --models 1000000
    python experiments/bench_rank_latency.py --models 10000000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spider.errors import SpiderError
from spider.modules import TokenScorer, load_scorer
from spider.modules.zoo_index import DEFAULT_ANCHORS, DEFAULT_POOL, ZooIndex
from spider.rank_core import score_general, uses_index

Task = tuple[torch.Tensor, torch.Tensor]


def resident_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB (Linux; NaN elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return tuple(float(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]
    except (OSError, KeyError, ValueError):
        return float("nan"), float("nan")


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        pass


def peak_mib(device: str, base: float) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20 - base
    return resident_mib()[1] - base


def random_scorer(models: int, args: argparse.Namespace) -> TokenScorer:
    scorer = TokenScorer(num_models=models, task_dim=args.task_dim, **({"dim": args.dim} if args.dim else {}))
    if args.token_scale != 1.0:
        with torch.no_grad():
            scorer.model_tokens.mul_(args.token_scale)
    return scorer


def grown_scorer(trained: TokenScorer, models: int, noise: float, generator: torch.Generator) -> TokenScorer:
    """``trained``'s weights with ``models`` tokens sampled around its trained tokens: the mixture
    l*t_i + (1-l)*t_j of two random trained tokens (l uniform) plus noise * their per-dimension
    standard deviation times a standard normal. The prior (if any) is dropped: it has no values
    for the new tokens."""
    hp = {k: v for k, v in dict(trained.hparams).items() if k not in ("num_models", "model_names", "model_prior")}
    scorer = TokenScorer(num_models=models, **hp)
    state = {k: v for k, v in trained.state_dict().items() if k not in ("model_tokens", "model_prior", "prior_scale")}
    scorer.load_state_dict(state, strict=False)
    base = trained.model_tokens.detach()
    with torch.no_grad():
        for start in range(0, models, 1 << 20):
            n = min(1 << 20, models - start)
            i = torch.randint(len(base), (n,), generator=generator)
            j = torch.randint(len(base), (n,), generator=generator)
            mix = torch.rand(n, 1, generator=generator)
            jitter = torch.randn(n, base.shape[1], generator=generator) * base.std(0) * noise
            scorer.model_tokens[start:start + n] = mix * base[i] + (1 - mix) * base[j] + jitter
    return scorer


def store_tasks(store_root: str, general: str, count: int, generator: torch.Generator) -> list[Task]:
    """``count`` random tasks: 2..10 random classes of a random dataset of the store, as class
    centres of the general encoder's features."""
    from spider.rank import task_tokens
    from spider.store import FeatureStore

    store = FeatureStore(store_root)
    centres = []
    for dataset in store.datasets(general):
        tokens, _ = task_tokens(store, general, dataset, store.splits(general, dataset)[0])
        if tokens.shape[0] >= 2:
            centres.append(tokens)
    if not centres:
        raise SpiderError(f"{store_root}: no classification dataset under {general!r} to draw tasks from")
    tasks = []
    for _ in range(count):
        pick = centres[int(torch.randint(len(centres), (1,), generator=generator))]
        classes = int(torch.randint(2, min(10, pick.shape[0]) + 1, (1,), generator=generator))
        rows = torch.randperm(pick.shape[0], generator=generator)[:classes]
        tasks.append((pick[rows][None], torch.ones(1, classes, dtype=torch.bool)))
    return tasks


def gaussian_tasks(task_dim: int, classes: int, count: int, generator: torch.Generator) -> list[Task]:
    return [(torch.randn(1, classes, task_dim, generator=generator), torch.ones(1, classes, dtype=torch.bool))
            for _ in range(count)]


def timed(fn: Callable[[], torch.Tensor], device: str) -> tuple[torch.Tensor, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1e3


def measure(scorer: TokenScorer, tasks: list[Task], args: argparse.Namespace) -> dict:
    """One row of the table for ``scorer`` (M of its tokens) over ``tasks``."""
    device = args.device
    scorer = scorer.to(device).eval()
    tasks = [(t.to(device), m.to(device)) for t, m in tasks]
    num = scorer.num_models
    start = time.perf_counter()
    index = ZooIndex(scorer, anchors=args.anchors, pool=args.pool)
    build_s = time.perf_counter() - start
    index_mib = index.nbytes / 2**20
    fast = index if uses_index(scorer) else None  # below the threshold: the plain forward
    with torch.inference_mode():
        score_general(scorer, *tasks[0], index=fast)  # the first call pays one-off costs
        base = torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else resident_mib()[0]
        reset_peak(device)
        ranked = []
        for tokens, mask in tasks:
            order, ms = timed(lambda: score_general(scorer, tokens, mask, index=fast).models[:10], device)
            ranked.append((order.cpu(), ms))
        peak = peak_mib(device, base)
        agree, exact_ms = [], []
        for (tokens, mask), (order, _) in zip(tasks[: args.exact_tasks], ranked):
            exact, ms = timed(lambda: index.scores(tokens, mask)[0], device)
            exact_ms.append(ms)
            agree.append(torch.equal(torch.argsort(exact, descending=True, stable=True)[:10].cpu(), order))
    times = [ms for _, ms in ranked]
    return {
        "models": num, "ms": min(times), "ms_median": statistics.median(times), "top10_agreement":
        sum(agree) / len(agree) if agree else None, "agreement_tasks": len(agree),
        "exact_ms": min(exact_ms) if exact_ms else None, "build_s": build_s, "index_mib": index_mib,
        "peak_mib": peak, "tasks": len(tasks),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1000, 10000, 100000, 1000000],
                        help="zoo sizes M (one row each)")
    parser.add_argument("--checkpoint", default=None, help="trained TokenScorer checkpoint (zoo grown to M)")
    parser.add_argument("--store", default=None, help="feature store of the tasks (with --checkpoint)")
    parser.add_argument("--general", default="general", help="general encoder id in --store")
    parser.add_argument("--noise", type=float, default=0.1, help="token noise around trained tokens")
    parser.add_argument("--task-dim", type=int, default=1024, help="Dg of a random scorer")
    parser.add_argument("--dim", type=int, default=None, help="d of a random scorer (default: TokenScorer's)")
    parser.add_argument("--token-scale", type=float, default=1.0, help="rescale a random scorer's tokens")
    parser.add_argument("--classes", type=int, default=10, help="C of Gaussian tasks")
    parser.add_argument("--tasks", type=int, default=20, help="random tasks timed per M")
    parser.add_argument("--exact-tasks", type=int, default=None,
                        help="tasks also scored exactly for the top-10 agreement (default: all)")
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL, help="models scored exactly after the pre-screen")
    parser.add_argument("--anchors", type=int, default=DEFAULT_ANCHORS, help="pre-screen linearisation points")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="last line: JSON of the last M")
    args = parser.parse_args(argv)
    args.exact_tasks = args.tasks if args.exact_tasks is None else args.exact_tasks
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    try:
        if args.checkpoint:
            trained = load_scorer(args.checkpoint)
            if not isinstance(trained, TokenScorer):
                raise SpiderError(f"{args.checkpoint}: expected a TokenScorer checkpoint, got {type(trained).__name__}")
            if not args.store:
                raise SpiderError("--checkpoint needs --store (the tasks are class subsets of its datasets)")
            tasks = store_tasks(args.store, args.general, args.tasks, generator)
            make = lambda m: grown_scorer(trained, m, args.noise, generator)  # noqa: E731
            label = f"trained {args.checkpoint} (tokens: mixtures of 2 of its {trained.num_models} + noise {args.noise})"
        else:
            tasks = gaussian_tasks(args.task_dim, args.classes, args.tasks, generator)
            make = lambda m: random_scorer(m, args)  # noqa: E731
            label = f"random weights (token scale {args.token_scale}), Gaussian tasks C={args.classes}"
        hp = make(1).hparams
    except (SpiderError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"scorer: {label}; Dg={hp.task_dim} d={hp.dim} heads={hp.heads} depth={hp.depth} "
          f"mlp_ratio={hp.mlp_ratio}; pool={args.pool} anchors={args.anchors} threads={torch.get_num_threads()} "
          f"device={args.device} torch={torch.__version__}")
    print(f"{'M':>9} {'build s':>8} {'rank ms min/med':>17} {'exact ms':>9} {'index MiB':>10} {'peak MiB':>9} "
          f"{'top10':>11}", flush=True)
    row: dict = {}
    for models in args.models:
        torch.manual_seed(args.seed)
        try:
            row = measure(make(models), tasks, args)
        except SpiderError as err:  # e.g. --models 0
            print(f"error: {err}", file=sys.stderr)
            return 2
        agreement = ("-" if row["top10_agreement"] is None
                     else f"{row['top10_agreement']:.2f} ({row['agreement_tasks']})")
        exact = "-" if row["exact_ms"] is None else f"{row['exact_ms']:.0f}"
        print(f"{models:>9} {row['build_s']:>8.1f} {row['ms']:>8.1f}/{row['ms_median']:<8.1f} {exact:>9} "
              f"{row['index_mib']:>10.0f} {row['peak_mib']:>9.0f} {agreement:>11}", flush=True)
    if args.json:
        print(json.dumps({"models": row["models"], "ms": row["ms"], "top10_agreement": row["top10_agreement"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
