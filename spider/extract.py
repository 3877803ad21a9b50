"""``spider extract`` / ``python -m spider.extract``: write a model's features into the feature store.

    python -m spider.extract --store features/ --model resnet10t --checkpoint r10.pth \\
        --images my_photos/ --dataset photos [--split train] [--batch-size 128]

The library is :mod:`spider.pipeline.extract`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spider.errors import cli_main
from spider.pipeline.extract import (ArraySource, ExtractError, ImageFolderSource, ImageSource, model_kind,
                                     extract_to_store, load_model)
from spider.store import FeatureStore

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spider.extract",
        description="Write a model's penultimate features and source logits into the feature store.",
    )
    parser.add_argument("--store", required=True, help="feature store directory")
    parser.add_argument("--model", required=True, help="zoo model name or timm architecture")
    parser.add_argument("--model-id", help="id of the model in the store (default: --model)")
    parser.add_argument("--checkpoint", help="weights file (required for timm models)")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: from checkpoint)")
    parser.add_argument("--in-chans", type=int, choices=(1, 3), help="input channels of a timm model")
    parser.add_argument("--input-size", type=int, nargs="+", metavar="PX", help="H [W] override")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean override")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std override")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", help="image folder, one sub-folder per class")
    data.add_argument("--arrays", help=".npz file with x (images) and y (labels)")
    data.add_argument("--zoo-dataset", help="dataset of spider.zoo (its --split is read)")
    parser.add_argument("--dataset", required=True, help="dataset id in the store")
    parser.add_argument("--split", default="train", help="split id (default: train)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--amp", action="store_true", help="float16 autocast on GPU")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@cli_main()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.input_size is not None and len(args.input_size) not in (1, 2):
        raise ExtractError("--input-size: expected H or H W")
    size = None if args.input_size is None else (args.input_size[0], args.input_size[-1])
    if args.checkpoint is None and model_kind(args.model) == "timm":
        raise ExtractError(f"--checkpoint is required for timm model {args.model!r} "
                           f"(weights are never downloaded)")
    if args.images:
        source: ImageSource = ImageFolderSource(args.images)
    elif args.arrays:
        source = ArraySource.from_npz(args.arrays)
    else:
        source = ArraySource.from_zoo_dataset(args.zoo_dataset, args.split)
    store = FeatureStore(args.store)
    model_id = args.model_id or args.model
    if store.has(model_id, args.dataset, args.split) and not args.overwrite:
        print(f"skip {model_id}/{args.dataset}/{args.split}: already in {args.store}")
        return 0
    model = load_model(args.model, checkpoint=args.checkpoint, num_classes=args.num_classes,
                       in_chans=args.in_chans, input_size=size, mean=args.mean, std=args.std)
    entry, _ = extract_to_store(store, model, source, dataset=args.dataset, split=args.split,
                                model_id=model_id, batch_size=args.batch_size,
                                device=args.device, amp=args.amp,
                                progress=not args.no_progress, overwrite=args.overwrite)
    logits = entry.manifest["arrays"].get("logits")
    print(f"wrote {entry.path}: {entry.num_samples} samples, {entry.dim}-d features"
          + (f", {logits['shape'][1]} logits" if logits else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
