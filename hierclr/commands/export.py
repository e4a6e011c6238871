"""``hierclr export``: a trained trunk -> a plain torchvision ResNet state dict (+ OUT.json: arch, how to load)."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="write a trained trunk as a plain torchvision ResNet state dict")
    p.add_argument("source", help="hierclr checkpoint / run dir / best_encoder.pt / best_model.pt, torchvision or "
                                  "official MoCo-style state dict, mlflow:<run_id>[/<model>], runs:/<run_id>/<model>"
                                  " or models:/<model_id>")
    p.add_argument("out", help="output file (e.g. resnet50.pth); OUT.json records the architecture and provenance")
    p.add_argument("--num-classes", dest="num_classes", type=int, default=None,
                   help="rows of fc (default: the source's classifier, else 1000); fc is the source's classifier "
                        "when it has one of this size, else zeros")
    p.add_argument("--no-classifier", dest="classifier", action="store_false",
                   help="zero fc even when the source has a classifier")
    p.add_argument("--tracking-uri", dest="tracking_uri", default=None,
                   help="MLflow store of an mlflow:/runs:/models: source (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hierclr.models.export import export_backbone

    try:
        result = export_backbone(args.source, args.out, num_classes=args.num_classes,
                                 classifier=args.classifier, tracking_uri=args.tracking_uri)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    print(json.dumps({"out": result.path, "sidecar": result.sidecar, "arch": result.arch,
                      "cifar_stem": result.cifar_stem, "feature_dim": result.feature_dim,
                      "num_classes": result.num_classes, "fc": result.fc, "kind": result.kind,
                      "origin": result.origin, "epoch": result.epoch, "which": result.which,
                      "load": result.load}, indent=2))
    # the human-readable part on stderr: stdout stays one JSON document
    if result.cifar_stem or result.arch in (None, "resnet10"):
        why = "a CIFAR stem (3x3 conv1, no max-pool)" if result.cifar_stem else f"{result.arch or 'this layout'}"
        print(f"hierclr export: no torchvision constructor builds {why} as is; load it like this:", file=sys.stderr)
    else:
        print("hierclr export: load it without hierclr like this:", file=sys.stderr)
    print(result.load, file=sys.stderr)
    return 0
