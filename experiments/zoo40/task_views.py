"""Task tokens seen through several cheap encoders (issue 8). VALIDATION targets only.

The task token is the class centres of one general encoder. Here each centre is the general
encoder's features side by side with those of a few cheap zoo PTMs (*anchors*), each view divided
by its mean feature norm on the pool, so the scorer sees the task as specialists of other domains
see it. The anchors are chosen by a rule fixed before measuring, from costs alone: the cheapest
PTMs (extraction time on the validation targets) whose source domains differ from every anchor
already chosen, while the general encoder and the anchors together cost at most 1 % of every PTM's
extraction (the issue's time goal for general-token ranking: a forward baseline extracts every PTM).

One command per zoo, after its report (it reuses the report's caches; fits are fresh)::

    python experiments/zoo40/task_views.py [--zoo-dir artifacts/zoo40] [--out experiments/zoo40/task_views.md]

Rows: single fits over 8 seeds of the shipped setting, with the recipe's general encoder, with it
and the anchors, and with the anchors alone. ``held_out_domain.py --general general,<anchors>``
(the anchors this script prints) would measure the domains no bank task shows; it was not run,
as the views lose on the seen domains already.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probes import CLASS_KEEP_SEEDS, Probes, general_encoder_from, log, probe_main, report_head, write_report  # noqa: E402

from spider.errors import cli_main  # noqa: E402
from spider.zoo.domains import source_domains  # noqa: E402

BUDGET = 0.01  # of a forward baseline's extraction time: the time goal


def ptm_sources(zoo) -> dict[str, tuple[str, ...]]:
    """Every PTM's pre-training datasets (a real PTM's source, a pre-trained spec's sources)."""
    from spider.zoo import get_zoo_model_info

    sources = {n: (get_zoo_model_info(n).source,) for n in zoo.recipe.real_ptms}
    sources.update({s.id: tuple(s.sources) for s in zoo.recipe.pretrained})
    return sources


def pick_anchors(models: list[str], cost: dict[str, float], general_cost: float,
                 domains: dict[str, tuple[str, ...]], budget: float = BUDGET) -> list[str]:
    """Cheapest first, each of source domains no anchor chosen before holds, within ``budget`` x
    the cost of extracting every PTM (``cost``: seconds per PTM, ``general_cost``: the encoder's)."""
    limit, spent, chosen = budget * sum(cost[m] for m in models), general_cost, []
    for m in sorted(models, key=lambda m: (cost[m], m)):
        if spent + cost[m] > limit:
            break
        if all(domains[m] != domains[c] for c in chosen):
            chosen.append(m)
            spent += cost[m]
    return chosen


def run(args) -> None:
    p = Probes(args.zoo_dir, args.work_dir)
    zoo = p.zoo
    cost = {m: sum(p.extraction[m][t] for t in zoo.val_targets) for m in [*zoo.models, zoo.general]}
    sources = ptm_sources(zoo)
    anchors = pick_anchors(zoo.models, cost, cost[zoo.general], {m: source_domains(sources[m]) for m in zoo.models})
    total = sum(cost[m] for m in zoo.models)
    share = (cost[zoo.general] + sum(cost[m] for m in anchors)) / total
    log(f"anchors: {', '.join(anchors)} (with the general encoder {100 * share:.2f} % of every PTM's extraction)")
    rows = []
    for name, views in (("the recipe's general encoder (shipped)", None),
                        ("general encoder + anchors", ",".join([zoo.general, *anchors])),
                        ("anchors alone", ",".join(anchors))):
        if views is None:
            preds = p.fit("views-shipped", {}, seeds=CLASS_KEEP_SEEDS)
        else:
            with general_encoder_from(p, views):
                preds = p.fit(f"views-{views.replace(',', '+')}", {}, seeds=CLASS_KEEP_SEEDS)
        per_seed = [p.score([x])[0] for x in preds]
        rows.append((name, *p.score(preds), float(np.std(per_seed))))
        log(f"{name}: val wtau_paper {rows[-1][1]:+.3f} ± {rows[-1][3]:.3f}, top-1 regret {rows[-1][2]:.2f}")
    named = ", ".join(f"`{a}` ({' + '.join(source_domains(sources[a]))})" for a in anchors)
    lines = [*report_head(f"Task tokens through several encoders: {zoo.name}", "task_views.py", args),
             f"Validation targets only ({', '.join(zoo.val_targets)}); single fits of the shipped setting over "
             f"{len(CLASS_KEEP_SEEDS)} seeds (± std over seeds). Anchors (rule in the script's docstring): "
             f"{named}; with the general encoder "
             f"they cost {100 * share:.2f} % of extracting every PTM on the validation targets "
             f"(the general encoder alone: {100 * cost[zoo.general] / total:.2f} %).", "",
             "| task token | val wtau_paper | val top-1 regret |", "|---|---|---|"]
    lines += [f"| {n} | {w:+.3f} ± {s:.3f} | {r:.2f} |" for n, w, r, s in rows]
    write_report(args.out, lines)


@cli_main()
def main(argv=None) -> int:
    return probe_main(run, __doc__.splitlines()[0], "task_views.md", argv)


if __name__ == "__main__":
    sys.exit(main())
