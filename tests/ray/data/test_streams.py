"""The train and embed streams: shapes, value ranges, per-row seeding, device-side finishing,
bad-image accounting and splitting across workers, on real image files through a local Ray."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers.image_files import make_image_folder

from hierclr.data.bad_images import BadImage, BadImageBudget, TooManyBadImagesError
from hierclr.data.source import open_source
from hierclr.data.streams import StreamConfig, embed_stream, finish_views, train_stream
from hierclr.data.transforms import CropSpec, EvalTransformConfig, TransformConfig

CIFAR = TransformConfig.preset("cifar")


@pytest.fixture
def folder(tmp_path):
    make_image_folder(tmp_path / "train", per_class=8)  # 24 images of 24..31 x 30..32 px
    return tmp_path / "train"


def _by_id(ds) -> dict[int, dict]:
    out = {}
    for b in ds.iter_batches(batch_size=7, batch_format="numpy"):
        for i, row_id in enumerate(b["id"]):
            out[int(row_id)] = {k: v[i] for k, v in b.items()}
    return out


def test_train_stream_shapes_ranges_and_labels(folder, ray_session):
    src = open_source(folder)
    stream = train_stream(src, StreamConfig(transforms=CIFAR, batch_size=5, num_cpus=2))
    rows = _by_id(stream.dataset)
    assert sorted(rows) == list(range(24))
    for r in rows.values():
        assert r["view0"].shape == r["view1"].shape == (3, 32, 32) and r["view0"].dtype == np.uint8
        assert not np.array_equal(r["view0"], r["view1"])  # two different augmentations
    truth = {i: int(lab) for i, lab in enumerate(np.repeat(np.arange(3), 8))}
    assert {i: int(r["label"]) for i, r in rows.items()} == truth
    assert all(list(r["labels"]) == [r["label"]] for r in rows.values())
    batch = next(iter(stream.dataset.iter_torch_batches(batch_size=6)))
    views = finish_views(batch, CIFAR, augment_on="cpu")
    mean = torch.tensor(CIFAR.train.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR.train.std).view(1, 3, 1, 1)
    assert torch.allclose(views[0], (batch["view0"].float() / 255 - mean) / std)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert all(((v >= lo - 1e-6) & (v <= hi + 1e-6)).all() for v in views)


def test_multicrop_views(folder, ray_session):
    t = TransformConfig.preset("cifar").model_copy(update={"train": CIFAR.train.model_copy(
        update={"local_crops": (CropSpec(size=24, scale=(0.1, 0.5)), CropSpec(size=16, scale=(0.05, 0.3)))})})
    stream = train_stream(open_source(folder), StreamConfig(transforms=t, batch_size=8))
    b = next(iter(stream.dataset.iter_batches(batch_size=4)))
    assert [b[f"view{i}"].shape[1:] for i in range(4)] == [(3, 32, 32), (3, 32, 32), (3, 24, 24), (3, 16, 16)]
    assert stream.view_names == ("view0", "view1", "view2", "view3")


def test_seeded_per_row_and_new_each_epoch(folder, ray_session):
    src = open_source(folder)
    cfg = StreamConfig(transforms=CIFAR, batch_size=4, seed=7)
    a = train_stream(src, cfg)
    epoch0 = _by_id(a.dataset)
    epoch1 = _by_id(a.dataset)  # the same dataset executed again = the next epoch
    # a fresh stream with another batch size and CPU budget: same views per id (seeded per row, not per batch)
    b = _by_id(train_stream(src, cfg.model_copy(update={"batch_size": 9, "num_cpus": 1})).dataset)
    for i in range(24):
        assert np.array_equal(epoch0[i]["view0"], b[i]["view0"]) and np.array_equal(epoch0[i]["view1"], b[i]["view1"])
    assert sum(not np.array_equal(epoch0[i]["view0"], epoch1[i]["view0"]) for i in range(24)) >= 20
    c = _by_id(train_stream(src, cfg.model_copy(update={"seed": 8})).dataset)
    assert sum(not np.array_equal(epoch0[i]["view0"], c[i]["view0"]) for i in range(24)) >= 20
    # a resumed run continues the epoch sequence
    resumed = train_stream(src, cfg)
    resumed.set_epoch_offset(1)
    r1 = _by_id(resumed.dataset)
    assert all(np.array_equal(epoch1[i]["view0"], r1[i]["view0"]) for i in range(24))


def test_device_side_augmentation_matches_cpu_path(folder, ray_session):
    """augment_on=device ships crops; finishing them on a device gives the CPU path's views (up to the
    uint8 rounding the CPU path ships with)."""
    src = open_source(folder)
    cpu = _by_id(train_stream(src, StreamConfig(transforms=CIFAR, seed=3)).dataset)
    dev_stream = train_stream(src, StreamConfig(transforms=CIFAR, seed=3, augment_on="device"))
    for batch in dev_stream.dataset.iter_torch_batches(batch_size=8):
        views = finish_views(batch, CIFAR, augment_on="device", device="cpu", seed=3, epoch=0)
        ref = finish_views({"view0": torch.stack([torch.from_numpy(cpu[int(i)]["view0"]) for i in batch["id"]]),
                            "view1": torch.stack([torch.from_numpy(cpu[int(i)]["view1"]) for i in batch["id"]]),
                            "id": batch["id"]}, CIFAR, augment_on="cpu")
        step = 1 / 255 / min(CIFAR.train.std) + 1e-5  # one uint8 level after normalisation
        for v, r in zip(views, ref):
            assert (v - r).abs().max() <= step
    with pytest.raises(ValueError, match="needs the epoch"):
        finish_views(batch, CIFAR, augment_on="device")


def test_corrupt_images_skipped_counted_reported(tmp_path, ray_session):
    make_image_folder(tmp_path / "train", per_class=10, corrupt=2)  # 32 files, 2 undecodable
    src = open_source(tmp_path / "train")
    stream = train_stream(src, StreamConfig(transforms=CIFAR, batch_size=6, max_bad_fraction=0.1))
    rows = _by_id(stream.dataset)
    bad = stream.bad_images()
    assert len(rows) == 30 and len(bad) == 2
    assert {b.id for b in bad} == set(range(32)) - set(rows)
    assert all("zz_corrupt" in b.shard and b.reason for b in bad)
    _by_id(stream.dataset)  # a second epoch meets the same ids: still 2
    assert len(stream.bad_images()) == 2
    # the embed stream skips them too
    emb = embed_stream(src, StreamConfig(transforms=CIFAR, max_bad_fraction=0.1))
    assert sorted(_by_id(emb.dataset)) == sorted(rows)


def test_too_many_bad_images_abort(tmp_path, ray_session):
    make_image_folder(tmp_path / "train", per_class=10, corrupt=2)
    stream = train_stream(open_source(tmp_path / "train"), StreamConfig(transforms=CIFAR, max_bad_fraction=0.04))
    with pytest.raises(Exception, match=r"2 undecodable images in .* exceed max_bad_fraction=0.04 of 32 rows \(limit 1\)"):
        _by_id(stream.dataset)


def test_bad_image_budget_by_hand():
    budget = BadImageBudget(num_rows=2000, max_bad_fraction=0.001, name="x")
    assert budget.limit == 2
    assert budget.record([BadImage(5, "s", "r"), BadImage(5, "s", "r")]) == 1  # same id counts once
    assert budget.record([BadImage(9, "s", "r")]) == 2
    with pytest.raises(TooManyBadImagesError, match="3 undecodable images in x"):
        budget.record([BadImage(1, "t", "truncated")])
    assert [b.id for b in budget.report()] == [1, 5, 9]
    with pytest.raises(ValueError, match="max_bad_fraction"):
        BadImageBudget(10, 1.5)


def test_embed_stream_deterministic_every_row_once(folder, ray_session):
    src = open_source(folder)
    cfg = StreamConfig(transforms=TransformConfig(eval=EvalTransformConfig(resize=20, crop=16)), batch_size=5)
    s = embed_stream(src, cfg)
    first = [int(i) for b in s.dataset.iter_batches(batch_size=4) for i in b["id"]]
    second = [int(i) for b in embed_stream(src, cfg).dataset.iter_batches(batch_size=4) for i in b["id"]]
    assert first == second and sorted(first) == list(range(24))
    b = next(iter(s.dataset.iter_batches(batch_size=3)))
    assert b["image"].shape == (3, 3, 16, 16) and b["image"].dtype == np.uint8


def _consume(iterators, key="id"):
    out = [None] * len(iterators)

    def run(i):
        out[i] = [int(x) for b in iterators[i].iter_batches(batch_size=4) for x in b[key]]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(iterators))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_split_across_workers(tmp_path, ray_session):
    make_image_folder(tmp_path / "train", per_class=9)  # 27 rows: not divisible by 2
    src = open_source(tmp_path / "train")
    cfg = StreamConfig(transforms=CIFAR, batch_size=5)
    parts = _consume(train_stream(src, cfg).split(2))
    assert len(parts[0]) == len(parts[1]) == 13 and not set(parts[0]) & set(parts[1])  # equal, disjoint
    parts = _consume(embed_stream(src, cfg).split(2))
    assert sorted(parts[0] + parts[1]) == list(range(27))  # embed keeps every row exactly once


@pytest.mark.timeout(600)
def test_ray_train_workers_get_their_splits(tmp_path, ray_session):
    """Through a real TorchTrainer with 2 workers: train rows split equally, embed rows all kept."""
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hierclr.data.streams import train_data_config

    make_image_folder(tmp_path / "train", per_class=9)  # 27 rows
    src = open_source(tmp_path / "train")
    cfg = StreamConfig(transforms=CIFAR, batch_size=5, num_cpus=1)

    def _train_loop(config):
        import json as _json

        import ray.train

        rank = ray.train.get_context().get_world_rank()
        seen = {}
        for name in ("train", "embed"):
            shard = ray.train.get_dataset_shard(name)
            seen[name] = [int(i) for b in shard.iter_torch_batches(batch_size=4) for i in b["id"]]
        with open(f"{config['out']}/rank{rank}.json", "w") as f:
            _json.dump(seen, f)
        ray.train.report({"rows": len(seen["train"])})

    trainer = TorchTrainer(
        _train_loop, train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        datasets={"train": train_stream(src, cfg).dataset, "embed": embed_stream(src, cfg).dataset},
        dataset_config=train_data_config(),
        run_config=RunConfig(storage_path=str(tmp_path / "runs"), name="split"),
    )
    trainer.fit()
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]["train"]) == len(seen[1]["train"]) == 13
    assert not set(seen[0]["train"]) & set(seen[1]["train"])
    assert sorted(seen[0]["embed"] + seen[1]["embed"]) == list(range(27))
