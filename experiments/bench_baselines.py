"""Time every registered baseline next to the linear-algebra floor measured on the same machine.

The floor is what any exact LogME needs at least: one float64 Gram X^T X [D, D] plus one symmetric
eigendecomposition (with vectors) of it. Both are timed with numpy and with torch and the faster of
each is used. Baselines run at N x D = 10,000 x 2,048 with C = 100 classes (float32, ReLU-like
features, Cs = 1,000 source logits), and LogME also at N = 50,000.

    python experiments/bench_baselines.py                 # full sizes, 3 repeats (minutes)
    python experiments/bench_baselines.py --quick         # small sizes, 1 repeat (seconds)
    python experiments/bench_baselines.py --baselines logme hscore --repeats 5 --json out.json

Each of ``--repeats`` rounds times the floor's steps and then every baseline once, and each keeps
its best round, so load from other processes hits floor and baselines alike; ratios are time /
floor at the same N. On a shared machine the numbers are still noisy: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from spider.baselines import get_baseline, list_baselines
from spider.errors import SpiderError

LARGE_N_BASELINES = ("logme", "logme_official")


@dataclass
class Row:
    name: str
    n: int
    seconds: float
    floor_seconds: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor_seconds


def make_task(n: int, d: int, c: int, cs: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic float32 task: ReLU of class centre + low-rank shared structure + noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    rng.shuffle(labels)
    centres = rng.normal(scale=0.7, size=(c, d)).astype(np.float32)
    mixing = rng.normal(scale=0.3, size=(32, d)).astype(np.float32)
    features = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 8192):  # chunks keep the float64 temporaries small at N = 50,000
        stop = min(n, start + 8192)
        block = rng.standard_normal((stop - start, d), dtype=np.float32)
        block += centres[labels[start:stop]] + rng.standard_normal((stop - start, 32), dtype=np.float32) @ mixing
        np.maximum(block, 0.0, out=block)
        features[start:stop] = block
    logits = rng.standard_normal((n, cs), dtype=np.float32)
    logits[np.arange(n), labels * (cs // c)] += 3.0  # source head partly aligned with the task
    return {"features": features, "labels": labels.astype(np.int64), "source_logits": logits}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def floor_steps(features: np.ndarray) -> dict[str, Callable[[], object]]:
    """The floor's steps on float64 features: Gram and eigh, each with numpy and with torch."""
    x = features.astype(np.float64)
    xt = torch.from_numpy(x)
    gram = x.T @ x
    gram_t = torch.from_numpy(gram)
    return {
        "gram_numpy": lambda: x.T @ x,
        "gram_torch": lambda: xt.T @ xt,
        "eigh_numpy": lambda: np.linalg.eigh(gram),
        "eigh_torch": lambda: torch.linalg.eigh(gram_t),
    }


def baseline_step(name: str, task: dict[str, np.ndarray]) -> Callable[[], object]:
    baseline = get_baseline(name)
    kwargs = {"labels": task["labels"]}
    for key in ("features", "source_logits"):
        if key in baseline.needs:
            kwargs[key] = task[key]

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            baseline(**kwargs)

    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="samples for every baseline")
    p.add_argument("--n-large", type=int, default=50_000, help="samples for the LogME run (0: skip)")
    p.add_argument("--d", type=int, default=2048, help="feature dimension")
    p.add_argument("--c", type=int, default=100, help="target classes")
    p.add_argument("--cs", type=int, default=1000, help="source classes (logits)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baselines", nargs="+", default=None, help="names (default: all registered)")
    p.add_argument("--quick", action="store_true", help="N=2000, D=512, C=20, N-large=5000, 1 repeat")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="also write the results as JSON to PATH (or stdout)")  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.n_large, args.d, args.c, args.repeats = 2000, 5000, 512, 20, 1
    for key in ("n", "d", "c", "cs", "repeats"):
        if getattr(args, key) < 1:
            raise SpiderError(f"--{key.replace('_', '-')}: expected a positive integer")
    if args.n < args.c:
        raise SpiderError(f"--n: need at least one sample per class (n={args.n} < c={args.c})")
    return args


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.baselines or list_baselines()
    for name in names:
        get_baseline(name)  # unknown names fail before any timing
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[Row] = []
    floors = {}
    sizes = [(args.n, names)]
    large = [n for n in names if n in LARGE_N_BASELINES]
    if args.n_large and large:
        sizes.append((args.n_large, large))
    for n, selected in sizes:
        log(f"N={n}: generating task (D={args.d}, C={args.c}, Cs={args.cs}) ...")
        task = make_task(n, args.d, args.c, args.cs)
        steps = {**floor_steps(task["features"]), **{name: baseline_step(name, task) for name in selected}}
        # Rounds interleave the floor with the baselines, so that load from other processes hits
        # both alike; each step keeps its best round.
        best = {key: float("inf") for key in steps}
        for round_ in range(args.repeats):
            for key, step in steps.items():
                best[key] = min(best[key], timed(step))
                log(f"N={n} round {round_ + 1}/{args.repeats}: {key:16s} {best[key]:8.3f} s (best so far)")
        floor = min(best["gram_numpy"], best["gram_torch"]) + min(best["eigh_numpy"], best["eigh_torch"])
        floors[n] = {key: best[key] for key in best if key.startswith(("gram_", "eigh_"))}
        floors[n]["floor"] = floor
        for name in selected:
            rows.append(Row(name, n, best[name], floor))
        log(f"N={n}: floor {floor:.3f} s")
        del task, steps
    return {
        "config": {k: getattr(args, k) for k in ("n", "n_large", "d", "c", "cs", "repeats")},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "floors": {str(n): f for n, f in floors.items()},
        "results": [dict(asdict(r), ratio=r.ratio) for r in rows],
    }


def format_table(report: dict) -> str:
    lines = [f"{'baseline':16s} {'N':>7s} {'seconds':>9s} {'floor s':>9s} {'x floor':>8s}"]
    for r in report["results"]:
        lines.append(f"{r['name']:16s} {r['n']:7d} {r['seconds']:9.3f} {r['floor_seconds']:9.3f} {r['ratio']:8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        report = run(args)
    except SpiderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
