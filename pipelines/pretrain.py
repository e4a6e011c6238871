"""Entry point: distributed HCSC / MoCo v2 / PCL v2 pretraining (``hierclr pretrain``). Runs unchanged on a
laptop (local Ray) or on a cluster:
``ray job submit --working-dir . -- python pipelines/pretrain.py --config imagenet-r50-200ep``."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
