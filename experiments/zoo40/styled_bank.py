"""Do bank tasks in new image styles teach Model Spider to rank PTMs on unseen domains? (issue 8)
VALIDATION targets only.

The held-out-domain probe (``held_out_domain.py``) measured where the learned ranker breaks: scorers
trained without the bank tasks of a validation target's domain fall from +0.606 to +0.283 wtau_paper
on zoo40, and a general encoder that never saw the pool (the ImageNet MobileNet) does not change that
(``held_out_domain_mobilenet.md``). What the ranker lacks is supervision from more domains, and the
shared data holds no further real datasets. This probe makes new domains from the pool itself, the
task augmentation of domain generalisation: every bank task gets a twin per style of
:data:`STYLES`, the same images in that style (polarity inverted, reduced to edges, pixelated),
with its own real fine-tuning of every PTM (the bank's protocol) and its own task tokens (the general
encoder on the styled images). Nothing here is chosen by looking at a target: the styles are generic
image transforms, fixed before any measurement.

Rows, 3 seeds each:

* the validation targets, scorers trained on the bank alone, with the twins of each style alone,
  and with the twins of every style;
* the held-out-domain protocol of ``held_out_domain.py``: the target's domain left out of the bank
  *and of the twins* (a styled photo task is still a photo task), with the same training sets of
  the kept tasks. If styled domains teach what transfers to an unseen domain, the held-out column rises.

One command per zoo, after its report (it reuses the report's scorers and caches; styled features,
runs and fits are cached under ``<work>/styled``, so a killed run resumes)::

    python experiments/zoo40/styled_bank.py --zoo-dir artifacts/minizoo --out experiments/minizoo/styled_bank.md
    python experiments/zoo40/styled_bank.py [--styles negative ...]   # zoo40: 96 x 41 runs per style
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from held_out_domain import per_target, without_domain  # noqa: E402
from probes import SEEDS, Probes, link_ptm_folders, log, probe_main, reading_store, report_head, write_report  # noqa: E402

from spider.benchmark.training import FitSpec, rank_targets, train_scorer  # noqa: E402
from spider.errors import cli_main  # noqa: E402
from spider.zoo.domains import source_domain  # noqa: E402


def _grey(images: np.ndarray) -> np.ndarray:
    """float [N, H, W] luminance of uint8 grey or RGB images."""
    x = images.astype(np.float32)
    return x if x.ndim == 3 else x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _like(grey: np.ndarray, images: np.ndarray) -> np.ndarray:
    """uint8 ``grey`` [N, H, W] in the channel layout of ``images`` (RGB: three equal channels)."""
    out = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return out if images.ndim == 3 else np.repeat(out[..., None], images.shape[-1], axis=-1)


def negative(images: np.ndarray) -> np.ndarray:
    """Polarity inverted: dark strokes on bright paper, photo negatives."""
    return 255 - images


def edges(images: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the luminance, each image scaled to 0..255: line drawings."""
    g = np.pad(_grey(images), ((0, 0), (1, 1), (1, 1)), mode="edge")
    dx = (g[:, :-2, 2:] + 2 * g[:, 1:-1, 2:] + g[:, 2:, 2:]) - (g[:, :-2, :-2] + 2 * g[:, 1:-1, :-2] + g[:, 2:, :-2])
    dy = (g[:, 2:, :-2] + 2 * g[:, 2:, 1:-1] + g[:, 2:, 2:]) - (g[:, :-2, :-2] + 2 * g[:, :-2, 1:-1] + g[:, :-2, 2:])
    magnitude = np.hypot(dx, dy)
    peak = magnitude.reshape(len(magnitude), -1).max(axis=1)
    return _like(magnitude * (255.0 / np.maximum(peak, 1e-6))[:, None, None], images)


def pixelate(images: np.ndarray, block: int = 4) -> np.ndarray:
    """Means of ``block`` x ``block`` cells, each repeated over its cell: a low-resolution capture."""
    n, h, w = images.shape[:3]
    x = images.astype(np.float32).reshape(n, h, w, -1)
    ph, pw = -h % block, -w % block
    x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    cells = x.reshape(n, (h + ph) // block, block, (w + pw) // block, block, x.shape[-1]).mean(axis=(2, 4))
    up = np.repeat(np.repeat(cells, block, axis=1), block, axis=2)[:, :h, :w]
    return np.clip(np.rint(up), 0, 255).astype(np.uint8).reshape(images.shape)


STYLES = {"negative": negative, "edges": edges, "pixelate": pixelate}


def styled_view(view, style: str):
    """A pool view (:class:`spider.pipeline.recipe.ViewData`) in ``style``: same rows, dataset id
    ``<pool id>.<style>``."""
    return dataclasses.replace(view, name=f"{view.name}.{style}", images=STYLES[style](view.images),
                               description=f"{view.description}, style {style}")


def twin(spec, style: str):
    """Bank task ``spec`` on the styled images of the same rows."""
    return dataclasses.replace(spec, classes=tuple((f"{d}.{style}", c) for d, c in spec.classes))


class StyledBank:
    """Styled twins of a zoo's bank: general-encoder features in a linked store, real fine-tuning runs."""

    def __init__(self, p: Probes, styles, workers: int) -> None:
        from spider.datamodules.finetune_bank import open_bank

        self.p, self.styles, self.workers = p, tuple(styles), workers
        self.root = p.work / "styled"
        self.store = self.root / "store"
        self.bank = open_bank(p.zoo.root, p.zoo.models)
        self.twins: dict[str, tuple[list, np.ndarray]] = {}

    def build(self) -> None:
        from spider.pipeline.bank import bank_jobs, split_task, task_id
        from spider.pipeline.finetune import run_ground_truth, summarize

        zoo, recipe = self.p.zoo, self.p.zoo.recipe
        pool = {s.id: s.load() for s in recipe.pool}
        self._link_store()
        for style in self.styles:
            views = {f"{k}.{style}": styled_view(v, style) for k, v in pool.items()}
            self._extract_general(views)
            specs = [twin(s, style) for s in self.bank.specs]
            jobs = bank_jobs(specs, recipe.ptm_refs(zoo.root / "checkpoints"), recipe.bank)
            jobs = [dataclasses.replace(j, views=split_task(specs[int(j.target[4:])], views, int(j.target[4:]),
                                                            recipe.bank)) for j in jobs]
            log(f"style {style}: {len(jobs)} fine-tuning runs ({len(specs)} twins x {len(zoo.models)} PTMs; cached ones read back)")
            summaries = summarize(run_ground_truth(jobs, recipe.bank.finetune, self.root / style / "runs",
                                                   workers=self.workers, progress=False), recipe.bank.finetune)
            accuracy = np.array([[summaries[(task_id(i), m)].accuracy for m in zoo.models] for i in range(len(specs))])
            if not np.isfinite(accuracy).all():
                raise ValueError(f"style {style}: non-finite fine-tuned accuracy in {self.root / style / 'runs'}")
            self.twins[style] = ([s.to_json() for s in specs], accuracy)

    def _link_store(self) -> None:
        """``<work>/styled/store``: every PTM folder of the zoo's store linked, the general encoder's
        datasets linked one by one beside the styled ones written here."""
        link_ptm_folders(self.p, self.store)
        src = self.p.zoo.store.root / self.p.zoo.general
        for dataset in src.iterdir():
            link = self.store / self.p.zoo.general / dataset.name
            if dataset.is_dir() and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(dataset.resolve(), target_is_directory=True)

    def _extract_general(self, views) -> None:
        from spider.pipeline.build import SPLIT
        from spider.pipeline.extract import extract_to_store
        from spider.store import FeatureStore

        zoo = self.p.zoo
        store, model = FeatureStore(self.store), None
        for dataset, view in views.items():
            if not store.has(zoo.general, dataset, SPLIT):
                model = model or zoo.recipe.general_ref(zoo.root / "checkpoints").load(None)
                extract_to_store(store, model, view.source(), dataset=dataset, split=SPLIT, model_id=zoo.general,
                                 progress=False)

    @contextlib.contextmanager
    def training(self, styles):
        """Fits train on the bank plus the twins of ``styles`` and read the linked store."""
        import spider.datamodules.episodes as episodes

        real = episodes.training_labels
        texts = [t for s in styles for t in self.twins[s][0]]
        scores = [self.twins[s][1] for s in styles]

        def labels(source, cache, bank=None, **kwargs):
            out = real(source, cache, bank, **kwargs)
            if source != "finetune":
                raise ValueError(f"styled twins carry fine-tuning labels only, not {source!r}")
            return dataclasses.replace(out, spec_texts=list(out.spec_texts) + texts,
                                       scores=np.concatenate([out.scores, *scores]))

        episodes.training_labels = labels
        try:
            with reading_store(self.p, self.store, "styled"):
                yield
        finally:
            episodes.training_labels = real


def run(args: argparse.Namespace) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    styled = StyledBank(p, args.styles, args.workers)
    styled.build()
    recipe = p.zoo.recipe
    pool_domain = {s.id: source_domain(s.source) for s in recipe.pool}
    pool_domain |= {f"{k}.{s}": d for k, d in list(pool_domain.items()) for s in args.styles}
    seen = [rank_targets(train_scorer(p.zoo, FitSpec("token", "finetune", None, seed=s), p.work, log=log),
                         p.zoo, (0,), p.extraction)[0]["pred"] for s in SEEDS]
    # Each style alone, then all of them together.
    subsets = [(s,) for s in args.styles] + ([tuple(args.styles)] if len(args.styles) > 1 else [])
    name = lambda subset: f"bank + twins ({', '.join(subset)})"  # noqa: E731
    settings = [("bank (the report's fits)", seen)]
    for subset in subsets:
        with styled.training(subset):
            settings.append((name(subset), p.fit(f"styled-{'+'.join(subset)}", {})))
    val_rows = [(n, *p.score(preds)) for n, preds in settings]
    for n, w, r in val_rows:
        log(f"{n}: val wtau_paper {w:+.3f}, top-1 regret {r:.2f}")
    held_rows = []
    for target in recipe.val_targets:
        domain = source_domain(target.source)
        if not any(pool_domain[d] == domain for d, _ in (c for s in styled.bank.specs for c in s.classes)):
            continue
        values = [per_target(p, p.fit(f"heldout-{target.id}", {}, [without_domain(pool_domain, domain)]), target.id)]
        for subset in subsets:
            with styled.training(subset):
                values.append(per_target(p, p.fit(f"heldout-{target.id}-styled-{'+'.join(subset)}", {},
                                                  [without_domain(pool_domain, domain)]), target.id))
        held_rows.append((target.id, domain, values))
        log(f"{target.id} ({domain}) held out: " + ", ".join(f"{v:+.3f}" for v in values))
    header = ["bank"] + [name(subset) for subset in subsets]
    write_report(args.out, render(p, args, val_rows, header, held_rows, styled))


def render(p: Probes, args, val_rows, header, held_rows, styled: StyledBank) -> list[str]:
    runs = sum(a.size for _, a in styled.twins.values())
    lines = [*report_head(f"Styled twins of the bank: {p.zoo.name}", "styled_bank.py", args),
             f"Validation targets only; wtau_paper, mean over {len(SEEDS)} seeds. Every one of the bank's "
             f"{styled.bank.num_tasks} tasks gets a twin per style ({', '.join(args.styles)}): the same images "
             f"restyled, every PTM fine-tuned on them with the bank's protocol ({runs} runs), task tokens from the "
             "general encoder on the restyled images. See the script's docstring.", "",
             "## Validation targets", "", "| training tasks | val wtau_paper | val top-1 regret |", "|---|---|---|"]
    lines += [f"| {name} | {w:+.3f} | {r:.2f} |" for name, w, r in val_rows]
    lines += ["", "## Held-out domains", "",
              "The target's domain left out of the bank and of the twins (`held_out_domain.py`'s protocol); "
              "columns: the training tasks kept.", "",
              "| target | domain | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(header)]
    lines += [f"| {t} | {d} | " + " | ".join(f"{v:+.3f}" for v in values) + " |" for t, d, values in held_rows]
    if held_rows:
        mean = np.mean([values for _, _, values in held_rows], axis=0)
        lines += [f"| **mean of the {len(held_rows)} held-out targets** | | " + " | ".join(f"{v:+.3f}" for v in mean) + " |"]
    return lines


@cli_main()
def main(argv=None) -> int:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--styles", nargs="+", choices=sorted(STYLES), default=list(STYLES),
                            help="styles whose twins join the bank (default: all)")
        parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                            help="processes for the fine-tuning runs")

    return probe_main(run, __doc__.splitlines()[0], "styled_bank.md", argv, options)


if __name__ == "__main__":
    sys.exit(main())
