"""Entry point: hierarchical K-means of a feature file (``hierclr kmeans``); also runs under
``ray job submit -- python pipelines/kmeans.py FEATURES.npy --device cuda`` on a GPU node."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["kmeans", *sys.argv[1:]]))
