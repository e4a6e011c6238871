"""The ``hierclr`` command: a table of verbs, each a thin module of :mod:`hierclr.commands` (parse, load the
config, call the runtime, print a summary).

    hierclr pretrain --config PRESET|FILE [--set k=v ...]   distributed pretraining on Ray (HCSC, MoCo v2, PCL v2)
    hierclr finetune --loss ce|supcon|clce|varcon [--config ...]   supervised training / fine-tuning on Ray Train
    hierclr hcal [--config ...]        hierarchical classification (HCAL) on a dataset with a label hierarchy
    hierclr evaluate --source CKPT [--config ...]   kNN / linear / semi-supervised / clustering / hierarchy protocols
    hierclr sweep --space FILE         a Ray Tune sweep of training runs
    hierclr export SOURCE OUT         a trained trunk -> torchvision ResNet state dict (+ OUT.json: arch, how to load)
    hierclr prepare-data SRC OUT ...  ImageFolder tree / CIFAR archive -> parquet shards + manifest (on Ray)
    hierclr inspect-data URI          list a dataset (parquet / webdataset / imagefolder) and decode a sample
    hierclr kmeans FEATURES.npy ...   hierarchical K-means of a feature file into Prototypes
    hierclr demo                      single-process HCSC on synthetic images (no download, CPU)
    hierclr version
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from hierclr.commands import demo, evaluate, export, finetune, kmeans, prepare_data, pretrain, sweep
from hierclr.io.mlflow_store import COMMAND_ENV

VERBS = (pretrain, finetune, evaluate, sweep, demo, kmeans, prepare_data, export)  # finetune registers hcal too


def _version(_: argparse.Namespace) -> int:
    import hierclr

    print(hierclr.__version__)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierclr", description="Hierarchical contrastive representation learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.register(sub)
    sub.add_parser("version", help="print the hierclr version").set_defaults(func=_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line as typed (a resume hint repeats it)
    # the runs it makes record it (tag hierclr.command), in Ray workers too (they inherit the environment)
    os.environ.setdefault(COMMAND_ENV, shlex.join(["hierclr", *args.argv]))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ValueError as e:  # configuration and input errors: one clear line, no traceback
        print(f"hierclr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
