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
import os
import shlex
import sys

from hierclr.commands import demo, evaluate, export, finetune, kmeans, prepare_data, pretrain, sweep
from hierclr.io.mlflow_store import COMMAND_ENV
from hierclr.runtime import console

VERBS = (pretrain, finetune, evaluate, sweep, demo, kmeans, prepare_data, export)  # finetune registers hcal too


def _version(_: argparse.Namespace) -> int:
    import hierclr

    print(hierclr.__version__)
    return 0


VERBOSE_HELP = "print everything: hierclr's INFO logs and Ray's, Ray Train's, Ray Data's and Tune's own output"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierclr", description="Hierarchical contrastive representation learning.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.register(sub)
    sub.add_parser("version", help="print the hierclr version").set_defaults(func=_version)
    for verb_parser in sub.choices.values():  # also after the verb (`python pipelines/pretrain.py -v`)
        verb_parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line as typed (a resume hint repeats it)
    # the runs it makes record it (tag hierclr.command), in Ray workers too (they inherit the environment)
    os.environ.setdefault(COMMAND_ENV, shlex.join(["hierclr", *args.argv]))
    console.setup(args.verbose)
    try:
        return args.func(args)
    except ValueError as e:  # configuration and input errors: one clear line, no traceback
        print(f"hierclr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C: one line, and how to continue when a checkpoint was written
        from hierclr.commands.common import resume_command

        run_name = getattr(e, "resumable_run", None)
        print(console.interrupted_line(args.command, resume_command(args, run_name) if run_name else None),
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
