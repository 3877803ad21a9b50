"""The ``spider`` console command: ``spider <fit|rank|zoo|labels|baselines|extract|transfergraph|model-score> [args]``.

Each subcommand is the ``main(argv)`` of its module, so ``spider fit ...`` and
``python -m spider.fit ...`` are the same program (``spider zoo build ...`` = ``python -m spider.zoo build ...``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module whose main(argv) runs it, one-line help)
COMMANDS = {
    "fit": ("spider.fit", "train a PTM ranker (configs/ groups and key=value overrides)"),
    "rank": ("spider.rank", "rank the zoo's PTMs for a new task from a checkpoint"),
    "zoo": ("spider.zoo.__main__", "build or inspect a zoo recipe (spider zoo build minizoo)"),
    "labels": ("spider.labels", "build or check a label cache of training tasks"),
    "baselines": ("spider.baselines.__main__", "score stored features with transferability baselines"),
    "extract": ("spider.extract", "extract PTM features of a dataset into a feature store"),
    "transfergraph": ("spider.transfergraph.cli", "fit TransferGraph on a zoo's fine-tuning history, rank with it"),
    "model-score": ("spider.model_score", "rank PTMs with a score that needs the model (LGC: per-sample gradients)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, COMMANDS))
        print("usage: spider <command> [args]\n\ncommands:\n" +
              "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()))
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
