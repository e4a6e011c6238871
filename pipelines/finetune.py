"""Entry point: ``hierclr finetune`` as a Ray job (local Ray on a laptop, or
``ray job submit --working-dir . -- python pipelines/finetune.py --config ...`` on a cluster)."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
