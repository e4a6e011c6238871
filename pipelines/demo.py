"""Entry point: single-process HCSC demo (``hierclr demo``); runs as ``python pipelines/demo.py``."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
