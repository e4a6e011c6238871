"""Entry point: ``hierclr evaluate`` as a Ray job (local Ray on a laptop, or
``ray job submit --working-dir . -- python pipelines/evaluate.py --config imagenet-r50 --source ...`` on a cluster)."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
