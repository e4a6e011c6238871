"""Entry point: a trained trunk as a plain torchvision ResNet state dict (``hierclr export``):
``python pipelines/export.py runs/hcsc-.../ resnet50.pth`` or ``python pipelines/export.py mlflow:<run_id> r50.pth``."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
