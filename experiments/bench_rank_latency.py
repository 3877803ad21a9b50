"""Latency of ranking a model zoo for ONE task on CPU: batched scorer vs per-model loop.

Scores M model tokens (default 1,000) for one task with C classes (default 10 and 100) using
``TokenScorer.forward`` (all models in one batched pass, task keys/values shared) and
``TokenScorer.forward_reference(loop=True)`` (one [model token; task tokens] sequence per model,
as in the authors' code), plus the B*M stacked full-sequence variant. Weights are random:
latency does not depend on them. Prints min and median milliseconds ("min/median") and the
loop/batched ratio of the minima (the least disturbed by other load on a shared machine).

    python experiments/bench_rank_latency.py                 # M=1000, C=10,100, Dg=1024, 1 thread
    python experiments/bench_rank_latency.py --models 1000 --classes 10 100 --task-dim 1024 \
        --dim 128 --threads 1 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from spider.errors import SpiderError
from spider.modules import TokenScorer


def time_ms(fn: Callable[[], torch.Tensor], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(min, median) wall milliseconds over ``repeats`` calls; the minimum is the least
    disturbed by other processes on a shared machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000, help="M, model tokens to score")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100], help="C values")
    parser.add_argument("--task-dim", type=int, default=1024, help="Dg, general token width")
    parser.add_argument("--dim", type=int, default=None, help="d (default: TokenScorer's)")
    parser.add_argument("--heads", type=int, default=None, help="heads (default: TokenScorer's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: one query at a time; 0 = torch's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per case")
    parser.add_argument("--loop-repeats", type=int, default=3, help="timed runs of the loop")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    options = {k: v for k, v in (("dim", args.dim), ("heads", args.heads)) if v is not None}
    try:
        scorer = TokenScorer(num_models=args.models, task_dim=args.task_dim, **options).eval()
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    hp = scorer.hparams
    print(f"M={args.models} Dg={args.task_dim} d={hp.dim} heads={hp.heads} depth={hp.depth} "
          f"mlp_ratio={hp.mlp_ratio} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'C':>5} {'batched ms':>15} {'stacked-seq ms':>17} {'loop ms':>17} {'loop/batched':>13}"
          f" {'max |diff|':>11}")
    generator = torch.Generator().manual_seed(0)
    for classes in args.classes:
        tokens = torch.randn(1, classes, args.task_dim, generator=generator)
        mask = torch.ones(1, classes, dtype=torch.bool)
        with torch.inference_mode():
            batched = time_ms(lambda: scorer(tokens, mask), args.repeats)
            stacked = time_ms(lambda: scorer.forward_reference(tokens, mask), args.loop_repeats, 1)
            loop = time_ms(lambda: scorer.forward_reference(tokens, mask, loop=True),
                           args.loop_repeats, 1)
            diff = (scorer(tokens, mask) - scorer.forward_reference(tokens, mask, loop=True)).abs()
        cells = [f"{lo:.1f}/{med:.1f}" for lo, med in (batched, stacked, loop)]
        print(f"{classes:>5} {cells[0]:>15} {cells[1]:>17} {cells[2]:>17} "
              f"{loop[0] / batched[0]:>12.0f}x {float(diff.max()):>11.2e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
