"""Training checkpoints: exact round trip of every part, the COMPLETE marker, and finding the latest one."""
from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.config.pretrain import load_config
from hierclr.io.checkpoint import (
    MARKER,
    BrokenCheckpointError,
    TrainingState,
    checkpoints_in,
    latest_checkpoint,
    latest_run,
    load_checkpoint,
    read_checkpoint_file,
    read_state_json,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from hierclr.models import MoCo


def _prototypes(seed: int = 0, n: int = 20, dim: int = 8, epoch: int | None = 3) -> Prototypes:
    g = torch.Generator().manual_seed(seed)
    c0 = F.normalize(torch.randn(6, dim, generator=g), dim=1)
    c1 = F.normalize(torch.randn(3, dim, generator=g), dim=1)
    c2 = F.normalize(torch.randn(2, dim, generator=g), dim=1)
    parents = (torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1]))
    phi = tuple(torch.rand(c.shape[0], generator=g) * 0.3 + 0.05 for c in (c0, c1, c2))
    level0 = torch.randint(0, 6, (n,), generator=g)
    return Prototypes(centroids=(c0, c1, c2), parents=parents, phi=phi,
                      assignments=compose_assignments(level0, parents), epoch=epoch)


def _minimal_state(epoch: int, **kw) -> TrainingState:
    return TrainingState(epoch=epoch, model={"w": torch.full((2,), float(epoch))}, optimizer={"state": {}}, **kw)


@pytest.fixture(scope="module")
def trained():
    """A real MoCo after one SGD step and an enqueue: non-trivial params, momentum buffers and queue."""
    torch.manual_seed(0)
    model = MoCo("resnet10", queue_size=64, cifar_stem=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(4, 3, 16, 16)
    q, k = model(x, x.flip(3))
    loss = -(q * k).sum(dim=1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.enqueue(k, torch.tensor([5, 9, 2, 7]))
    return model, opt


def test_full_round_trip(tmp_path, trained):
    model, opt = trained
    protos = _prototypes()
    history = [{"epoch": 0.0, "loss/total": 7.5, "lr": 0.03}, {"epoch": 1.0, "loss/total": 7.1, "lr": 0.029}]
    config = load_config("demo").to_yaml()
    rng = rng_state()
    state = TrainingState(
        epoch=1, model={k: v.clone() for k, v in model.state_dict().items()}, optimizer=opt.state_dict(),
        prototypes=protos, history=history, best={"epoch": 1, "knn_top1": 0.25}, mlflow_run_id="abc123",
        config=config, rng=rng,
    )
    out = save_checkpoint(tmp_path / "checkpoint_000001", state)
    assert out == tmp_path / "checkpoint_000001"
    assert {p.name for p in out.iterdir()} == {"model.pt", "optimizer.pt", "prototypes.pt", "rng.pt", "config.yaml",
                                                "state.json", MARKER}

    loaded = load_checkpoint(out)
    assert loaded.epoch == 1 and loaded.next_epoch == 2
    # model: every tensor, including the queue, its ids and its pointer
    ref = model.state_dict()
    assert set(loaded.model) == set(ref)
    for name, t in ref.items():
        assert torch.equal(loaded.model[name], t), name
    assert loaded.model["queue_ptr"].item() == 4
    assert loaded.model["queue_ids"][:4].tolist() == [5, 9, 2, 7]
    assert (loaded.model["queue_ids"][4:] == -1).all()
    # it loads back into a fresh model
    fresh = MoCo("resnet10", queue_size=64, cifar_stem=True)
    fresh.load_state_dict(loaded.model)
    assert torch.equal(fresh.queue, model.queue)

    # optimizer: param groups and every momentum buffer
    ref_opt = opt.state_dict()
    assert loaded.optimizer["param_groups"] == ref_opt["param_groups"]
    assert set(loaded.optimizer["state"]) == set(ref_opt["state"]) and len(ref_opt["state"]) > 0
    for i, s in ref_opt["state"].items():
        assert torch.equal(loaded.optimizer["state"][i]["momentum_buffer"], s["momentum_buffer"])
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(loaded.optimizer)
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["weight_decay"] == 1e-4

    # prototypes: every tensor
    p = loaded.prototypes
    assert p is not None and p.epoch == 3 and p.sizes == (6, 3, 2)
    for a, b in zip(p.centroids + p.parents + p.phi, protos.centroids + protos.parents + protos.phi):
        assert torch.equal(a, b)
    assert torch.equal(p.assignments, protos.assignments)

    assert loaded.history == history
    assert loaded.best == {"epoch": 1, "knn_top1": 0.25}
    assert loaded.mlflow_run_id == "abc123"
    assert loaded.config == config
    assert load_config(out / "config.yaml") == load_config("demo")
    assert read_state_json(out)["has_prototypes"] is True


def test_rng_states_reproduce_the_draws(tmp_path):
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    state = rng_state()
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    # move every generator on, then restore from disk
    torch.rand(100)
    np.random.rand(100)
    random.random()
    save_checkpoint(tmp_path / "c", _minimal_state(0, rng=state))
    loaded = load_checkpoint(tmp_path / "c")
    set_rng_state(loaded.rng)
    assert torch.equal(torch.rand(5), expected[0])
    assert np.array_equal(np.random.rand(5), expected[1])
    assert [random.random() for _ in range(5)] == expected[2]


def test_optional_parts_absent(tmp_path):
    save_checkpoint(tmp_path / "c", _minimal_state(4))
    assert not (tmp_path / "c" / "prototypes.pt").exists() and not (tmp_path / "c" / "rng.pt").exists()
    loaded = load_checkpoint(tmp_path / "c")
    assert loaded.prototypes is None and loaded.rng is None
    assert loaded.history == [] and loaded.best is None and loaded.mlflow_run_id is None and loaded.config == ""
    assert torch.equal(loaded.model["w"], torch.full((2,), 4.0))


def test_rewriting_a_checkpoint_replaces_it(tmp_path):
    d = tmp_path / "c"
    save_checkpoint(d, _minimal_state(1, prototypes=_prototypes()))
    save_checkpoint(d, _minimal_state(2))
    loaded = load_checkpoint(d)
    assert loaded.epoch == 2 and torch.equal(loaded.model["w"], torch.full((2,), 2.0))
    assert not any(p.name.startswith(".") for p in d.iterdir())  # no temp files left behind


def test_incomplete_checkpoint_is_refused(tmp_path):
    d = save_checkpoint(tmp_path / "checkpoint_000000", _minimal_state(0))
    (d / MARKER).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        load_checkpoint(d)
    with pytest.raises(ValueError, match="incomplete"):
        latest_checkpoint(d)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope")


def test_corrupt_model_file_is_named(tmp_path):
    d = save_checkpoint(tmp_path / "c", _minimal_state(0))
    size = (d / "model.pt").stat().st_size
    (d / "model.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(BrokenCheckpointError, match=rf"broken: model\.pt has 24 of {size} bytes"):
        load_checkpoint(d)


def test_a_same_size_damaged_file_fails_its_sha256(tmp_path):
    d = save_checkpoint(tmp_path / "c", _minimal_state(0, prototypes=_prototypes()))
    data = bytearray((d / "prototypes.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "prototypes.pt").write_bytes(bytes(data))
    read_state_json(d)  # sizes match: listing still sees it...
    with pytest.raises(BrokenCheckpointError, match=r"prototypes\.pt does not match its sha256"):
        load_checkpoint(d)  # ...but nothing loads it
    with pytest.raises(BrokenCheckpointError, match=r"prototypes\.pt does not match its sha256"):
        read_checkpoint_file(d, "prototypes.pt")
    assert read_checkpoint_file(d, "model.pt") == (d / "model.pt").read_bytes()


def test_state_json_lists_every_file_with_size_and_sha256(tmp_path):
    import hashlib

    d = save_checkpoint(tmp_path / "c", _minimal_state(0, prototypes=_prototypes(), rng=rng_state()))
    files = read_state_json(d)["files"]
    assert set(files) == {"model.pt", "optimizer.pt", "prototypes.pt", "rng.pt", "config.yaml"}
    for name, rec in files.items():
        data = (d / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert Prototypes.load(d / "prototypes.pt").sizes == (6, 3, 2)  # the file format Prototypes.save writes


def test_a_checkpoint_without_the_file_list_still_loads(tmp_path):
    """Checkpoints written before state.json listed the files (format 1): the marker is all there is to check."""
    d = save_checkpoint(tmp_path / "c", _minimal_state(3))
    meta = json.loads((d / "state.json").read_text())
    del meta["files"]
    meta["format"] = 1
    (d / "state.json").write_text(json.dumps(meta))
    assert load_checkpoint(d).epoch == 3
    (d / "model.pt").write_bytes(b"garbage")
    with pytest.raises(BrokenCheckpointError, match=r"cannot read model\.pt"):
        load_checkpoint(d)


# ----------------------------------------------------------------- a disk that fills while Ray copies a checkpoint
def _copy_onto_a_filling_disk(src, dst, free_bytes: int) -> None:
    """What Ray Train's upload did on a filling disk (issue 18): it copies a checkpoint's files on several threads,
    so the small ones (state.json, COMPLETE, config.yaml) land whole while a big one is cut off where the disk
    filled; the failed copy left what it had written. This writer copies in that order with a byte budget and
    stops a file at ENOSPC."""
    import errno

    dst.mkdir(parents=True)
    order = sorted((p for p in src.iterdir()), key=lambda p: p.stat().st_size)
    for path in order:
        data = path.read_bytes()
        with open(dst / path.name, "wb") as f:
            try:
                if len(data) > free_bytes:
                    f.write(data[:free_bytes])
                    raise OSError(errno.ENOSPC, "No space left on device")
                f.write(data)
            except OSError:
                pass  # the copy thread's error went to Ray; the files stayed
        free_bytes = max(free_bytes - len(data), 0)


def test_a_checkpoint_cut_by_a_full_disk_is_never_loaded_and_is_quarantined(tmp_path, trained):
    from hierclr.io.checkpoint import QUARANTINE, quarantine_broken
    from hierclr.models.loading import read_weights

    model, opt = trained
    run = tmp_path / "run"
    good = save_checkpoint(run / "checkpoint_000000", TrainingState(epoch=0, model=model.state_dict(),
                                                                    optimizer=opt.state_dict()))
    local = save_checkpoint(tmp_path / "local", TrainingState(epoch=1, model=model.state_dict(),
                                                              optimizer=opt.state_dict(), prototypes=_prototypes()))
    model_size = (local / "model.pt").stat().st_size
    small = sum(p.stat().st_size for p in local.iterdir() if p.name != "model.pt")
    _copy_onto_a_filling_disk(local, run / "checkpoint_000001", free_bytes=small + model_size // 2)
    cut = run / "checkpoint_000001"
    assert (cut / MARKER).is_file() and (cut / "state.json").is_file()  # what the old readers trusted
    assert (cut / "model.pt").stat().st_size == model_size // 2

    with pytest.raises(BrokenCheckpointError, match=rf"broken: model\.pt has {model_size // 2} of {model_size} bytes"):
        read_state_json(cut)
    with pytest.raises(BrokenCheckpointError, match=r"model\.pt"):
        load_checkpoint(cut)
    with pytest.raises(BrokenCheckpointError, match=r"model\.pt"):
        latest_checkpoint(cut)  # --resume PATH of the broken checkpoint itself
    # every finder (resume, export, evaluate, model.init) takes the newest intact checkpoint instead
    assert checkpoints_in(run) == [(0, good)]
    assert latest_checkpoint(run) == good
    assert torch.equal(read_weights(run)["encoder_q.backbone.conv1.weight"],
                       model.state_dict()["encoder_q.backbone.conv1.weight"])
    # ... and it is moved aside, whole, for a person to look at
    moved = quarantine_broken(run)
    assert moved == [run / QUARANTINE / "checkpoint_000001"] and not cut.exists()
    assert (moved[0] / "model.pt").stat().st_size == model_size // 2
    assert quarantine_broken(run) == [] and checkpoints_in(run) == [(0, good)]


def test_quarantine_leaves_what_ray_restores_from_and_writes_in_progress(tmp_path):
    from hierclr.io.checkpoint import RAY_SNAPSHOT, check_ray_latest, quarantine_broken

    run = tmp_path / "run"
    good = save_checkpoint(run / "checkpoint_000000", _minimal_state(0))
    listed = save_checkpoint(run / "checkpoint_000001", _minimal_state(1))
    (listed / "optimizer.pt").write_bytes(b"")
    in_progress = save_checkpoint(run / "checkpoint_000002", _minimal_state(2))
    (in_progress / MARKER).unlink()
    (run / RAY_SNAPSHOT).write_text(json.dumps({
        "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_000000"},
                               {"checkpoint_dir_name": "checkpoint_000001"}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000001"}}))
    assert quarantine_broken(run) == []  # Ray refuses a run whose recorded checkpoints are gone
    assert listed.is_dir() and in_progress.is_dir()
    # Ray would restore --resume latest from the broken one: refused before Ray starts, naming the way on
    with pytest.raises(BrokenCheckpointError, match=rf"optimizer\.pt has 0 of .* --resume {good}"):
        check_ray_latest(run)
    (run / RAY_SNAPSHOT).write_text(json.dumps({
        "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_000000"}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_000000"}}))
    check_ray_latest(run)


def test_missing_optimizer_file_is_named(tmp_path):
    d = save_checkpoint(tmp_path / "c", _minimal_state(0))
    (d / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match=r"optimizer\.pt is missing"):
        load_checkpoint(d)


def test_checkpoints_in_lists_complete_ones_by_epoch(tmp_path):
    run = tmp_path / "run"
    # directory names deliberately out of epoch order: sorting is by the saved epoch
    save_checkpoint(run / "checkpoint_000002", _minimal_state(10))
    save_checkpoint(run / "checkpoint_000000", _minimal_state(2))
    save_checkpoint(run / "checkpoint_000001", _minimal_state(5))
    broken = save_checkpoint(run / "checkpoint_000003", _minimal_state(11))
    (broken / MARKER).unlink()
    save_checkpoint(run / "other_000004", _minimal_state(12))  # not a checkpoint_* directory
    (run / "checkpoint_file").write_text("x")  # a file, not a directory
    found = checkpoints_in(run)
    assert [(e, p.name) for e, p in found] == [(2, "checkpoint_000000"), (5, "checkpoint_000001"),
                                               (10, "checkpoint_000002")]
    assert checkpoints_in(tmp_path / "missing") == []
    assert latest_checkpoint(run) == run / "checkpoint_000002"
    assert latest_checkpoint(str(run)) == run / "checkpoint_000002"


def test_latest_checkpoint_accepts_a_checkpoint_dir(tmp_path):
    d = save_checkpoint(tmp_path / "run" / "checkpoint_000007", _minimal_state(7))
    save_checkpoint(tmp_path / "run" / "checkpoint_000009", _minimal_state(9))
    assert latest_checkpoint(d) == d  # itself, not the run's newest


def test_latest_checkpoint_on_an_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "empty")
    # a run dir whose only checkpoint is incomplete is empty too
    d = save_checkpoint(tmp_path / "run" / "checkpoint_000000", _minimal_state(0))
    (d / MARKER).unlink()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        latest_checkpoint(tmp_path / "run")


def _run(storage, name: str, *, checkpoint: bool = True, age: float = 0.0):
    d = storage / name
    d.mkdir(parents=True)
    if checkpoint:
        save_checkpoint(d / "checkpoint_000000", _minimal_state(0))
    t = time.time() - 1000 + age
    os.utime(d, (t, t))
    return d


def test_latest_run_picks_the_newest_matching_run(tmp_path):
    s = tmp_path / "runs"
    _run(s, "demo-20240101-120000", age=1)
    _run(s, "demo-20240301-120000", age=3)
    _run(s, "demo-20240201-120000", age=2)
    _run(s, "demo-20240401-120000", checkpoint=False, age=4)  # newer but holds no checkpoint
    _run(s, "demo2-20240501-120000", age=5)  # another config's name
    _run(s, "demo-old", age=6)  # not a timestamp suffix
    (s / "demo-20240601-120000").write_text("a file")
    assert latest_run(s, "demo") == "demo-20240301-120000"
    assert latest_run(str(s), "demo2") == "demo2-20240501-120000"
    assert latest_run(s, "dem") is None
    assert latest_run(s, "other") is None
    assert latest_run(tmp_path / "missing", "demo") is None


def test_latest_run_escapes_the_name(tmp_path):
    s = tmp_path / "runs"
    _run(s, "a.b-20240101-120000", age=1)
    _run(s, "axb-20240101-120000", age=2)
    assert latest_run(s, "a.b") == "a.b-20240101-120000"


def test_latest_run_accepts_the_bare_name_and_a_numbered_suffix(tmp_path):
    s = tmp_path / "runs"
    _run(s, "demo", age=1)
    assert latest_run(s, "demo") == "demo"
    _run(s, "demo-20240101-120000-2", age=2)
    assert latest_run(s, "demo") == "demo-20240101-120000-2"

