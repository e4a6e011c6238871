"""Entry point: a Ray Tune sweep of pretraining runs (``hierclr sweep``). Runs unchanged on a laptop (local Ray)
or on a cluster: ``ray job submit --working-dir . -- python pipelines/sweep.py --space my-sweep.yaml``."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
