"""Integration: the real CIFAR-10 JPEG tree ($HIERCLR_TEST_DATA) through prepare-data with its real
3-level hierarchy, read back as parquet shards and decoded in full by the embed stream."""
from __future__ import annotations

import collections

import pytest

from hierclr.data.prepare import PrepareConfig, prepare_data
from hierclr.data.source import open_source
from hierclr.data.streams import StreamConfig, embed_stream
from hierclr.data.transforms import TransformConfig

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.mark.timeout(1200)
def test_prepare_real_cifar10(cifar10_jpg_root, shared_data_dir, tmp_path, ray_session):
    manifests = prepare_data(PrepareConfig(source=str(cifar10_jpg_root), out=str(tmp_path / "cifar10"),
                                           hierarchy=str(shared_data_dir / "cifar10-hierarchy.tsv"), shard_size=2500))
    assert {k: m.num_rows for k, m in manifests.items()} == {"train": 50000, "test": 10000}
    m = manifests["train"]
    assert m.classes == CLASSES and not m.skipped
    assert m.image_stats.formats == {"JPEG": 50000} and m.image_stats.height.min == m.image_stats.height.max == 32
    for split, n in (("train", 50000), ("test", 10000)):
        src = open_source(tmp_path / "cifar10" / split, verify=True)
        assert src.num_rows == n and src.classes == CLASSES
        assert src.hierarchy.sizes == (10, 4, 2) and src.num_levels == 3
        if split == "test":
            # the embed stream decodes every image of a real split; for train, whose 50000 images the scan pass of
            # prepare-data above already decoded with the same decoder (decode_rgb: formats == {"JPEG": 50000},
            # nothing skipped), the rows and their per-level labels are read without decoding them again
            stream = embed_stream(src, StreamConfig(transforms=TransformConfig.preset("cifar"), batch_size=1000,
                                                    num_cpus=4, max_bad_fraction=0.0))
            batches = stream.dataset.iter_batches(batch_size=2000, batch_format="numpy")
        else:
            stream = None
            batches = src.read().select_columns(["id", "label", "labels"]).iter_batches(
                batch_size=5000, batch_format="numpy")
        ids, per_class, levels = [], collections.Counter(), set()
        for b in batches:
            if stream is not None:
                assert b["image"].shape[1:] == (3, 32, 32)
            ids.extend(b["id"].tolist())
            per_class.update(b["label"].tolist())
            levels.update(map(tuple, b["labels"].tolist()))
        assert sorted(ids) == list(range(n))  # every row once (test: every image decoded, max_bad_fraction=0)
        if stream is not None:
            assert stream.bad_images() == []
        assert per_class == {c: n // 10 for c in range(10)}
        # labels per level follow the tsv: cat(3) -> mammal -> animal, truck(9) -> road_vehicle -> vehicle
        names = src.hierarchy.names
        by_class = {lab[0]: (names[1][lab[1]], names[2][lab[2]]) for lab in levels}
        assert by_class[3] == ("mammal", "animal") and by_class[9] == ("road_vehicle", "vehicle")
        assert by_class[0] == ("aircraft_or_ship", "vehicle") and by_class[6] == ("non_mammal", "animal")
