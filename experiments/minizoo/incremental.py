"""Leave-one-PTM-out on the mini zoo: add a PTM incrementally vs retrain the ranker on all 20.

For each held-out PTM h: train the shipped ranker (``spider fit`` defaults: token scorer, the
shipped label source and rank prior, seed 0) on the other 19 PTMs, then add h with
:func:`spider.incremental.add_model` (features, bank runs and baselines of h computed from scratch:
the work zoo lacks them) and compare with one full retrain on the 20 PTMs (the same run for every
h: same config, same seed). Placement quality: weighted tau (paper protocol) of the 20-PTM ranking
on the validation and test targets, and h's rank error (|predicted rank - true rank| among the 20,
mean over every target). The built zoo is only read: every work zoo lives under ``--work``
(symlinked store entries, copied bank and labels).

    python experiments/minizoo/incremental.py --zoo artifacts/minizoo           # 6 held-out PTMs
    python experiments/minizoo/incremental.py --zoo artifacts/minizoo --models all

Writes ``experiments/minizoo/incremental.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# Real and timm PTMs of different families and pre-training data (the documented subset).
DEFAULT_MODELS = ["cifar10_resnet20", "mnist_cnn", "fer2013_mini_xception", "test_resnet.cifar10",
                  "test_vit.cifar10", "test_convnext.omniglot"]


def work_zoo(source: Path, dest: Path, held_out: str | None) -> Path:
    """A writable zoo folder reading ``source``: store entries linked per model (none for
    ``held_out``: pass None to keep them), bank runs and labels copied (without ``held_out``'s runs)."""
    from spider.pipeline.build_manifest import read_manifest

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "store").mkdir()
    for model in sorted(p.name for p in (source / "store").iterdir()):
        if model != held_out:
            (dest / "store" / model).symlink_to((source / "store" / model).resolve(), target_is_directory=True)
    ignore = shutil.ignore_patterns(held_out) if held_out else None
    shutil.copytree(source / "bank", dest / "bank", ignore=ignore)
    shutil.copytree(source / "labels", dest / "labels")
    (dest / "ground_truth.csv").symlink_to((source / "ground_truth.csv").resolve())
    manifest = read_manifest(source)  # paths resolved: checkpoints stay the source zoo's
    manifest["data"].update(store=str(dest / "store"), label_cache=str(dest / "labels"),
                            finetune_bank=str(dest / "bank"), ground_truth=str(dest / "ground_truth.csv"))
    (dest / "zoo.json").write_text(json.dumps(manifest, indent=1))
    return dest


def train_ranker(zoo_dir: Path, run_dir: Path, models: list[str]) -> tuple[Path, float]:
    """The shipped config on ``models``, trained on the bank's tasks only (the report's validation
    targets are scored, so none of them trains; nor could they teach a held-out PTM, which has no
    ground truth column there); (checkpoint, training seconds)."""
    from spider.config import compose
    from spider.pipeline.label_reuse import derive_label_cache
    from spider.run_inputs import build_datamodule, resolve_inputs
    from spider.train import train

    cfg = compose([f"data.zoo_dir={zoo_dir}", f"data.models=[{','.join(models)}]", "data.val_datasets=[]",
                   "data.test_datasets=[]", "data.val_targets_as_tasks=0", "logger=none", "results_table=false",
                   f"run_dir={run_dir}", "overwrite=true", "trainer.accelerator=cpu",
                   "trainer.enable_progress_bar=false"])
    inputs = resolve_inputs(cfg)
    datamodule = build_datamodule(cfg, inputs, progress=False)
    datamodule.model_names  # resolves the label settings
    # The subset of the build's cache (no baseline is run): what `spider labels build` would make.
    derive_label_cache(datamodule.label_config, inputs["label_cache"], cfg.data.num_label_tasks, [zoo_dir / "labels"])
    tic = time.perf_counter()
    metrics, _ = train(cfg)
    return Path(metrics["checkpoint"]), time.perf_counter() - tic


def target_scores(checkpoint: Path, store_root: Path, targets: list[str]) -> tuple[list[str], np.ndarray]:
    """(model names, scores [T, M]) of a checkpoint on whole target datasets."""
    from spider.datamodules.tasks import contiguous
    from spider.datamodules.tokens import class_centres
    from spider.modules.scorer_registry import load_scorer
    from spider.store import FeatureStore

    model = load_scorer(checkpoint)
    store = FeatureStore(store_root)
    rows = []
    with torch.no_grad():
        for target in targets:
            entry = store.entry("general", target, "train")
            labels = contiguous(entry.labels())
            tokens = class_centres(entry.features(), labels, int(labels.max()) + 1)
            mask = torch.ones(1, tokens.shape[0], dtype=torch.bool)
            rows.append(model(tokens[None].float(), mask)[0].numpy())
    return list(model.spider_info["model_names"]), np.stack(rows)


def placement(names: list[str], scores: np.ndarray, truth, targets: list[str], held_out: str | None) -> dict:
    """wtau_paper per target and h's absolute rank error per target (ranks among all models)."""
    from spider.metrics.functional import weighted_tau

    order = [names.index(m) for m in truth.models]
    preds = scores[:, order]
    accuracy = truth.matrix(targets, truth.models)
    out = {"wtau": {}, "rank_error": {}}
    for t, target in enumerate(targets):
        out["wtau"][target] = float(weighted_tau(preds=torch.tensor(preds[t]), target=torch.tensor(accuracy[t])))
        if held_out is not None:
            h = truth.models.index(held_out)
            predicted = int((preds[t] > preds[t, h]).sum())
            true = int((accuracy[t] > accuracy[t, h]).sum())
            out["rank_error"][target] = abs(predicted - true)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", default="artifacts/minizoo", help="the built mini zoo (read only)")
    parser.add_argument("--work", default="/tmp/spider-incremental", help="work folder (zoo copies, runs)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="held-out PTMs ('all': the 20)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json")
    parser.add_argument("--out", default=str(HERE / "incremental"), help="output stem (.md and .json)")
    parser.add_argument("--reuse-build", action="store_true",
                        help="keep the held-out PTM's features and bank runs from the build (add-model then "
                             "computes only its baselines and token); default: computed from scratch")
    parser.add_argument("--append", action="store_true", help="keep the held-out PTMs already in the .json")
    args = parser.parse_args(argv)
    if args.markdown_only:
        Path(args.out + ".md").write_text(markdown(json.loads(Path(args.out + ".json").read_text())))
        return 0
    torch.set_num_threads(1)
    from spider.datamodules.ground_truth_csv import read_ground_truth
    from spider.incremental import add_model

    source, work = Path(args.zoo).resolve(), Path(args.work)
    manifest = json.loads((source / "zoo.json").read_text())
    everyone = sorted(manifest["data"]["models"])
    held = everyone if args.models == ["all"] else args.models
    val, test = manifest["data"]["val_datasets"], manifest["data"]["test_datasets"]
    truth = read_ground_truth(source / "ground_truth.csv")
    store = source / "store"
    from spider.config import compose

    data = compose([f"data.zoo_dir={source}"]).data
    results = {"config": f"spider fit defaults (token scorer, label source {data.label_source}, rank prior "
                         f"{data.rank_prior} at w = {data.rank_prior_weight:g}, seed 0, 10 epochs x 256 tasks)",
               "val_targets": val, "test_targets": test, "held_out": {}}
    full_ckpt = work / "run-full" / "checkpoints" / "last.ckpt"
    if args.append and Path(args.out + ".json").is_file():
        results = json.loads(Path(args.out + ".json").read_text())
    else:
        full_zoo = work_zoo(source, work / "zoo-full", None)
        full_ckpt, full_seconds = train_ranker(full_zoo, work / "run-full", everyone)
        names, scores = target_scores(full_ckpt, store, val + test)
        results["full"] = {"train_seconds": full_seconds, **placement(names, scores, truth, val + test, None)}
        print(f"full retrain on 20 PTMs: {full_seconds:.1f} s", flush=True)

    for h in held:
        if h in results["held_out"]:
            continue
        zoo = work_zoo(source, work / f"zoo-{h}", None if args.reuse_build else h)
        ckpt, seconds19 = train_ranker(zoo, work / f"run-{h}", [m for m in everyone if m != h])
        report = add_model(zoo, ckpt, h, work / f"added-{h}.ckpt", overwrite=True)
        names, scores = target_scores(report.checkpoint, store, val + test)
        incremental = placement(names, scores, truth, val + test, h)
        full = placement(*target_scores(full_ckpt, store, val + test), truth, val + test, h)
        results["held_out"][h] = {"train19_seconds": seconds19, "add": report.to_dict(),
                                  "from_scratch": not args.reuse_build,
                                  "incremental": incremental, "full": full}
        print(f"{h}: added in {report.seconds['total']:.1f} s ({report.seconds}); rank error "
              f"{np.mean(list(incremental['rank_error'].values())):.2f} vs full "
              f"{np.mean(list(full['rank_error'].values())):.2f}", flush=True)
        Path(args.out + ".json").write_text(json.dumps(results, indent=1, default=str))
    Path(args.out + ".md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    from spider.benchmark.leave_one_out import ptm_means, summarise

    val, test = results["val_targets"], results["test_targets"]
    lines = ["# Adding a PTM to a trained ranker: leave-one-PTM-out on the mini zoo", "",
             f"Ranker: {results['config']}. For each held-out PTM h: a ranker trained on the other 19, then h "
             "added with `spider zoo add-model` (features on the pool, 40 fine-tuning-bank runs and the baselines "
             "on 256 training tasks computed from scratch, then only h's token trained, 10 epochs), vs one full "
             "retrain on all 20 PTMs. wtau = weighted tau (paper protocol) of the 20-PTM ranking, mean over the "
             f"{len(val)} validation / {len(test)} test targets; rank error = |predicted - true rank| of h among "
             f"the 20, mean over all {len(val) + len(test)} targets. Times: one process, shared 2-core CPU.", "",
             "Rows marked * reuse the build's features and bank runs of h (`--reuse-build`): their extract and "
             "bank times are cache reads, not costs.", "",
             "| held-out PTM | wtau val incr. | wtau val full | wtau test incr. | wtau test full | rank err. incr. | "
             "rank err. full | add-model s (extract / bank / labels / train) | retrain on the other 19 s | "
             "full retrain train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    full_seconds = results["full"]["train_seconds"]

    def row(name: str, inc: dict, full: dict, s: dict, retrain: float) -> str:
        return (f"| {name} | {inc['wtau_val']:.3f} | {full['wtau_val']:.3f} | {inc['wtau_test']:.3f} | "
                f"{full['wtau_test']:.3f} | {inc['rank_error']:.2f} | {full['rank_error']:.2f} | "
                f"{s['total']:.0f} ({s['extract']:.0f} / {s['bank']:.0f} / {s['labels']:.0f} / {s['train']:.1f}) | "
                f"{retrain:.1f} | {full_seconds:.0f} |")

    for h in results["held_out"]:
        r = ptm_means(results, h)
        lines.append(row(f"`{h}`" + ("" if r["from_scratch"] else " *"), r["incremental"], r["full"], r["seconds"],
                         r["retrain_seconds"]))
    if results["held_out"]:
        means = summarise(results)
        lines.append(row("**mean**", means["incremental"], means["full"], means["seconds"], means["retrain_seconds"]))
    lines += ["", "A full retrain also needs h's features, bank runs and baselines (the first three add-model "
              "stages); it replaces only the last stage (train) by training every weight on 20 PTMs. The full "
              "retrain was timed once; \"retrain on the other 19\" is the ranker h is added to, timed in the same "
              "process just before the add (the paired estimate of a retrain's cost under the same machine load).",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
