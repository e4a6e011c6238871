"""Entry point: convert raw images into parquet shards (``hierclr prepare-data``); also runs under
``ray job submit --working-dir . -- python pipelines/prepare_data.py /data/imagenet s3://bucket/imagenet``,
where the conversion tasks spread over the cluster's CPUs."""
import sys

from hierclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-data", *sys.argv[1:]]))
