"""A synthetic model zoo for tests and demos (NOT a benchmark: no real images or models).

It writes a complete :class:`~spider.store.FeatureStore` plus a ground-truth CSV so that label
building, training and the CLIs run end to end in seconds without real data. The generator is
built so that ranking PTMs is *learnable* from the general encoder's task tokens:

* A latent space of ``latent_dim`` dims. Every dataset (pool or target) is a *domain* with a
  unit vector ``u_d`` in a small "expertise" space of ``num_factors`` dims (a target's is a
  random mix of the pool's, slightly perturbed); its offset in the latent space is ``B @ u_d``.
  Each class of a dataset is a cluster centre ``mu_c`` (classes of different datasets are
  distinct, so pool and target classes are disjoint). A sample is ``z = mu_c + B u_d + noise``.
* Each PTM ``m`` has an expertise vector ``w_m`` and a general quality bias ``b_m``; its affinity
  to dataset ``d`` is ``a(m, d) = sigmoid(2 w_m . u_d + b_m)`` in (0, 1).
* PTM features are tanh of the PTM's own random projection ``P_m`` [D_m, latent] of
  ``a(m, d) mu_c + B u_d + sample_noise + model_noise``: class separation grows with affinity,
  so forward-based baselines (LogME, H-Score, ...) score high-affinity PTMs higher. Source
  logits come from a random linear source head over the PTM's features (so LEEP/NCE run).
* The general encoder (id ``"general"``) is a fixed projection of ``z`` with moderate noise: its
  class centres reveal the domain offset ``B u_d``, from which affinity can be predicted.
* Ground truth "fine-tuned accuracy" on each target (in %) is ``30 + 60 a(m, t)`` plus small
  Gaussian noise (``gt_noise``, in percentage points) - a monotone function of affinity.

Splits: every dataset is stored as split ``"train"`` only; for targets, those features are what
task tokens and baselines are computed from, and the CSV holds the target's ground truth.
Every model's entry of a dataset lists the same samples in the same order (row i is sample i).

Command line: ``python -m spider.synthetic OUT_DIR [--seed N] [--num-models M] ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spider.errors import SpiderError, StoreError, cli_main
from spider.store import FeatureStore

GENERAL_ID = "general"


@dataclass(frozen=True)
class SyntheticZoo:
    """What :func:`make_synthetic_zoo` wrote: paths and ids (all sorted as stored)."""

    store_root: Path
    ground_truth_csv: Path
    models: list[str]
    pool_datasets: list[str]
    target_datasets: list[str]
    general_model: str = GENERAL_ID
    affinity: dict[str, dict[str, float]] = field(default_factory=dict)  # affinity[dataset][model]
    # Validation targets (``val0``...): classes of their own, ground truth like the test targets.
    val_datasets: list[str] = field(default_factory=list)


def make_synthetic_zoo(
    root: str | Path,
    *,
    num_models: int = 8,
    pool_datasets: int = 3,
    classes_per_pool: int = 20,
    targets: int = 3,
    val_targets: int = 0,
    classes_per_target: int = 10,
    samples_per_class: int = 30,
    general_dim: int = 32,
    model_dims: Sequence[int] = (16, 24, 32),
    latent_dim: int = 32,
    num_factors: int = 4,
    source_classes: int = 50,
    gt_noise: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
) -> SyntheticZoo:
    """Write a synthetic zoo under ``root``: ``root/store`` (FeatureStore) and
    ``root/ground_truth.csv`` (``dataset,model,accuracy,affinity``; accuracy in %).

    ``targets`` test targets (``target0``...) and ``val_targets`` validation targets (``val0``...)
    are drawn alike; the validation targets use a random stream of their own, so adding them
    leaves every other array unchanged. PTM ``i`` has feature dim ``model_dims[i % len(model_dims)]``. The same ``seed`` (and
    arguments) gives byte-identical arrays. Without ``overwrite`` an existing non-empty store is
    an error (checked before anything is written); with it, entries of the same ids are replaced
    and any others (e.g. from a larger earlier zoo) are left alone.
    """
    _check_args(num_models=num_models, pool_datasets=pool_datasets, classes_per_pool=classes_per_pool,
                targets=targets, classes_per_target=classes_per_target, samples_per_class=samples_per_class,
                general_dim=general_dim, latent_dim=latent_dim, num_factors=num_factors,
                source_classes=source_classes)
    if not model_dims or any(int(d) < 1 for d in model_dims):
        raise SpiderError(f"model_dims: expected positive ints, got {tuple(model_dims)!r}")
    if not isinstance(val_targets, (int, np.integer)) or val_targets < 0:
        raise SpiderError(f"val_targets: expected an int >= 0, got {val_targets!r}")
    if gt_noise < 0:
        raise SpiderError(f"gt_noise: expected >= 0, got {gt_noise}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    width = max(2, len(str(num_models - 1)))
    models = [f"ptm{i:0{width}d}" for i in range(num_models)]
    pools = [f"pool{i}" for i in range(pool_datasets)]
    tgts = [f"target{i}" for i in range(targets)]
    datasets = [(d, classes_per_pool) for d in pools] + [(d, classes_per_target) for d in tgts]

    # Shared structure: domains, PTM expertise, projections (drawn before any sample, so
    # changing sample counts does not reshuffle the zoo).
    domain_basis = rng.normal(size=(latent_dim, num_factors)) * (1.2 / np.sqrt(num_factors))
    pool_domains = _unit(rng.normal(size=(pool_datasets, num_factors)))
    # Targets lie "between" pool domains (a random convex mix plus a small perturbation), so what
    # is learnt on pool tasks transfers to them instead of requiring extrapolation.
    mix = rng.dirichlet(np.ones(pool_datasets), size=targets)
    target_domains = _unit(mix @ pool_domains + 0.3 * _unit(rng.normal(size=(targets, num_factors))))
    domains = np.concatenate([pool_domains, target_domains])
    expertise = rng.normal(size=(num_models, num_factors))
    bias = rng.normal(scale=0.5, size=num_models)
    vals = [f"val{i}" for i in range(val_targets)]
    val_rng = np.random.default_rng([seed, 1])  # own stream: val targets change nothing else
    val_mix = val_rng.dirichlet(np.ones(pool_datasets), size=val_targets)
    val_domains = _unit(val_mix @ pool_domains + 0.3 * _unit(val_rng.normal(size=(val_targets, num_factors))))
    domains = np.concatenate([domains, val_domains])
    affinity = 1 / (1 + np.exp(-(2.0 * expertise @ domains.T + bias[:, None])))  # [M, datasets]
    dims = [int(model_dims[i % len(model_dims)]) for i in range(num_models)]
    projections = [rng.normal(size=(d, latent_dim)) / np.sqrt(latent_dim) for d in dims]
    heads = [rng.normal(size=(source_classes, d)) * (3.0 / np.sqrt(d)) for d in dims]
    general_proj = rng.normal(size=(general_dim, latent_dim)) / np.sqrt(latent_dim)

    store = FeatureStore(root / "store")
    if not overwrite and next(store.entries(), None) is not None:
        raise StoreError(f"{store.root}: already holds a store (pass overwrite=True / --overwrite to replace "
                         "its entries)")
    datasets += [(d, classes_per_target) for d in vals]
    for k, (dataset, num_classes) in enumerate(datasets):
        draw = val_rng if dataset in vals else rng
        centres = draw.normal(size=(num_classes, latent_dim))
        labels = np.repeat(np.arange(num_classes), samples_per_class)
        draw.shuffle(labels)  # samples of a class are not contiguous, as in a real dataset
        shared_noise = draw.normal(scale=0.6, size=(labels.size, latent_dim))
        offset = domain_basis @ domains[k]
        names = [f"{dataset}_class{c}" for c in range(num_classes)]
        ids = np.array([f"{dataset}/{i:05d}" for i in range(labels.size)])
        common = dict(labels=labels, sample_ids=ids, class_names=names, overwrite=overwrite,
                      info={"generator": "spider.synthetic", "seed": seed})
        z = centres[labels] + offset + shared_noise
        general = (z @ general_proj.T + draw.normal(scale=0.5, size=(labels.size, general_dim)))
        store.write(GENERAL_ID, dataset, "train", features=general.astype(np.float32), **common)
        for m, model in enumerate(models):
            latent = affinity[m, k] * centres[labels] + offset + shared_noise
            latent += draw.normal(scale=0.6, size=latent.shape)
            feats = np.tanh(latent @ projections[m].T)  # bounded, mildly non-linear, like post-ReLU pools
            store.write(model, dataset, "train", features=feats.astype(np.float32),
                        logits=(feats @ heads[m].T).astype(np.float32), **common)

    tgts_all = tgts + vals
    target_affinity = affinity[:, len(pools):]
    accuracy = np.clip(30 + 60 * target_affinity[:, :len(tgts)]
                       + rng.normal(scale=gt_noise, size=(num_models, len(tgts))), 0, 100)
    if vals:
        val_accuracy = np.clip(30 + 60 * target_affinity[:, len(tgts):]
                               + val_rng.normal(scale=gt_noise, size=(num_models, len(vals))), 0, 100)
        accuracy = np.concatenate([accuracy, val_accuracy], axis=1)
    gt_path = root / "ground_truth.csv"
    tmp = gt_path.with_name(gt_path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "model", "accuracy", "affinity"])
        for t, dataset in enumerate(tgts_all):
            for m, model in enumerate(models):
                writer.writerow([dataset, model, f"{accuracy[m, t]:.4f}", f"{target_affinity[m, t]:.6f}"])
    tmp.replace(gt_path)
    zoo = SyntheticZoo(store.root, gt_path, models, pools, tgts, GENERAL_ID,
                       {d: {m: float(affinity[i, k]) for i, m in enumerate(models)}
                        for k, (d, _) in enumerate(datasets)}, vals)
    (root / "zoo.json").write_text(json.dumps(asdict(zoo), indent=1, default=str))
    return zoo


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _check_args(**values: int) -> None:
    minimum = {"num_models": 1, "pool_datasets": 1, "targets": 1, "classes_per_pool": 2, "classes_per_target": 2,
               "samples_per_class": 2}
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < minimum.get(name, 1):
            raise SpiderError(f"{name}: expected an int >= {minimum.get(name, 1)}, got {value!r}")


@cli_main(OSError)
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spider.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write store/, ground_truth.csv and zoo.json into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-models", type=int, default=8)
    parser.add_argument("--pool-datasets", type=int, default=3)
    parser.add_argument("--classes-per-pool", type=int, default=20)
    parser.add_argument("--targets", type=int, default=3)
    parser.add_argument("--val-targets", type=int, default=0)
    parser.add_argument("--classes-per-target", type=int, default=10)
    parser.add_argument("--samples-per-class", type=int, default=30)
    parser.add_argument("--general-dim", type=int, default=32)
    parser.add_argument("--model-dims", type=lambda s: tuple(int(x) for x in s.split(",")), default=(16, 24, 32),
                        help="comma-separated feature dims, cycled over PTMs (default 16,24,32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing synthetic zoo")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k != "out_dir"}
    zoo = make_synthetic_zoo(args.out_dir, **kwargs)
    print(f"synthetic zoo (demo data, not a benchmark) written to {args.out_dir}")
    print(f"  store:        {zoo.store_root}")
    print(f"  ground truth: {zoo.ground_truth_csv}")
    print(f"  models:       {len(zoo.models)} PTMs ({zoo.models[0]} .. {zoo.models[-1]}) + general encoder "
          f"'{zoo.general_model}'")
    print(f"  pool:         {', '.join(zoo.pool_datasets)} (split train)")
    print(f"  targets:      {', '.join(zoo.target_datasets)} (split train)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
