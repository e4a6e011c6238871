"""The bad-image budget's abort names the shards the bad images came from, the worst first."""
from __future__ import annotations

import pytest

from hierclr.data.bad_images import BadImage, BadImageBudget, TooManyBadImagesError


def test_a_whole_corrupt_shard_is_named_first():
    budget = BadImageBudget(num_rows=1000, max_bad_fraction=0.01, name="data.train")
    budget.record([BadImage(7, "s3://b/train/part-00001.parquet", "cannot identify image file")])
    damaged = [BadImage(100 + i, "s3://b/train/part-00003.parquet", "cannot identify image file") for i in range(12)]
    with pytest.raises(TooManyBadImagesError) as e:
        budget.record(damaged)
    assert ("by shard: s3://b/train/part-00003.parquet (12 images), s3://b/train/part-00001.parquet (1 image);"
            in str(e.value))
    assert "13 undecodable images in data.train exceed max_bad_fraction=0.01 of 1000 rows (limit 10)" in str(e.value)


def test_many_shards_are_summarised():
    budget = BadImageBudget(num_rows=10, max_bad_fraction=1.0)
    budget.record([BadImage(i, f"shard-{i}", "x") for i in range(8)])
    assert budget.by_shard().endswith("and 3 more shards")
