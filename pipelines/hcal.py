"""Entry point: ``hierclr hcal`` as a Ray job (local Ray on a laptop, or
``ray job submit --working-dir . -- python pipelines/hcal.py --config ...`` on a cluster)."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["hcal", *sys.argv[1:]]))
