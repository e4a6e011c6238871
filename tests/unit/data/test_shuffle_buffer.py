"""The training workers' local shuffle buffer (issue 17 item 8): arguments per (seed, epoch, rank), the config
default, and the benchmark's measure of how much batches repeat across epochs (its pure function, tiny sizes)."""
from __future__ import annotations

import pytest
from helpers.benchmark_scripts import load_benchmark

from hierclr.config.pretrain import load_config
from hierclr.data.streams import train_batch_kwargs


def _bench():
    return load_benchmark("input_pipeline")


def test_train_batch_kwargs():
    assert train_batch_kwargs(0, 0, 3, 1) == {}
    kw = train_batch_kwargs(1024, 0, 3, 1)
    assert kw["local_shuffle_buffer_size"] == 1024 and isinstance(kw["local_shuffle_seed"], int)
    assert kw == train_batch_kwargs(1024, 0, 3, 1)  # reproducible (resume)
    seeds = {train_batch_kwargs(1024, s, e, r)["local_shuffle_seed"] for s in (0, 1) for e in (0, 1) for r in (0, 1)}
    assert len(seeds) == 8  # a new order per seed, epoch and rank
    with pytest.raises(ValueError, match="shuffle_buffer must be >= 0"):
        train_batch_kwargs(-1, 0, 0, 0)
    assert load_config(None, []).data.shuffle_buffer == 1024
    with pytest.raises(ValueError, match="shuffle_buffer"):
        load_config(None, ["data.shuffle_buffer=-5"])


def test_batch_overlap_measure():
    overlap = _bench().batch_overlap
    same = [{0, 1, 2, 3}, {4, 5, 6, 7}]
    assert overlap(same, [{4, 5, 6, 7}, {0, 1, 2, 3}]) == 1.0  # the same batches in another order
    assert overlap(same, [{0, 1, 4, 5}, {2, 3, 6, 7}]) == 0.5
    assert overlap(same, [{0, 4, 8, 12}]) == 0.25
