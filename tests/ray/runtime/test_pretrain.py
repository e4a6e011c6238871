"""End-to-end pretraining on a local Ray: real Ray Train (2 gloo workers), Ray Data streams over real parquet
shards (scikit-learn's digits, built in), the clustering actor, checkpoints and a local MLflow store."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hierclr.config.pretrain import load_config
from hierclr.io.checkpoint import checkpoints_in, load_checkpoint
from hierclr.runtime.driver import run_training
from hierclr.runtime.faults import write_plan

pytestmark = pytest.mark.timeout(1200)  # the module fixture makes two runs


def tiny_config(tmp: Path, cache: Path, *extra: str, **_):
    return load_config("demo", [
        f"checkpoint.storage_path={tmp}/runs", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        f"data.builtin_cache={cache}", "data.train=builtin://digits/val", "data.val=builtin://digits/val",
        "data.decode_batch_size=64", "model.backbone=resnet10", "model.hidden_dim=128", "model.queue_size=128",
        "model.momentum=0.9", "optim.batch_size=32", "optim.epochs=3", "optim.base_lr=0.24", "loss.warmup_epochs=1",
        "clustering.sizes=[16,8,4]", "clustering.nredo=1", "service.cpus_per_actor=0", "resources.num_workers=2",
        "eval.ks=[5,10]", *extra])


def _mlflow(cfg):
    from mlflow.tracking import MlflowClient

    from hierclr.runtime.tracking import resolved_uri

    return MlflowClient(tracking_uri=resolved_uri(cfg.tracking))


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


EVERY_EPOCH = ["epoch", "lr", "loss/total", "loss/instance", "train/images_per_s", "train/steps", "time/embed",
               "time/cluster", "time/broadcast", "time/train", "time/epoch", "knn/top1_k5", "knn/top1_k10",
               "knn/top1_best"]
HCSC_EPOCHS = [f"loss/{t}_l{level}" for t in ("instance", "prototype") for level in range(3)] + \
    [f"kept_fraction/{t}_l{level}" for t in ("instance", "prototype") for level in range(3)] + \
    [f"prototypes/level{level}/{s}" for level in range(3) for s in (
        "size_min", "size_median", "size_max", "empty_clusters", "phi_min", "phi_mean", "phi_max")] + \
    ["loss/prototype"]
SELECTION = [f"selection/{m}_l{level}" for m in ("precision", "recall", "kept_true_negatives") for level in range(3)] + \
    ["selection/false_negative_rate"]  # paper Fig. 5: digits has labels


# The faults of the shared run (indices name their markers, ``<plan>.<index>.0``): the clustering actor dies in
# its first E-step (epoch 1, first part: Ray restarts it and the E-step is retried); in the resumed part, run with
# service.max_restarts=0, the actor dies in epoch 2's E-step for good (the coordinator replaces it), then a worker
# raises in epoch 2 and the worker group restarts from the epoch-1 checkpoint (checkpoint.max_failures=1).
ACTOR_EXIT, WORKER_RAISE, ACTOR_LOST = 0, 1, 2
PLAN = [{"point": "kmeans_actor", "actor": 0, "method": "cluster", "action": "exit"},
        {"point": "train_step", "epoch": 2, "rank": 1, "step": 2},
        {"point": "kmeans_actor", "actor": 0, "method": "cluster", "epoch": 2, "action": "exit"}]


@pytest.fixture(scope="module")
def pretrained(ray_session, tmp_path_factory, digits_cache, fault_plan_file):
    """One 4-epoch HCSC run on 2 workers that every test below reads (each end-to-end run costs a Ray Train
    start-up and minutes of ResNet on 2 cores, so the run carries every event they check): stopped after
    epoch 1 (``--stop-after-epoch``) with the clustering actor killed during that part's E-step, then resumed
    (``--resume latest``) with the clustering actor lost for good in epoch 2's E-step and, after it, a worker failing
    in epoch 2 and the worker group restarted from the epoch-1 checkpoint."""
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = tiny_config(tmp, digits_cache, "optim.epochs=4", "checkpoint.max_failures=1")
    write_plan(fault_plan_file, PLAN)
    markers = [Path(f"{fault_plan_file}.{i}.0") for i in range(len(PLAN))]
    try:
        first = run_training(cfg, stop_after_epoch=1, echo=lambda *a: None)
        fired_first = [m.is_file() for m in markers]
        saved = load_checkpoint(first.checkpoint)
        result = run_training(cfg.model_copy(update={"service": cfg.service.model_copy(update={"max_restarts": 0})}),
                              resume="latest", echo=lambda *a: None)
        fired = [m.stat().st_mtime_ns if m.is_file() else 0 for m in markers]  # when each fault fired (0: never)
    finally:
        write_plan(fault_plan_file, [])
    return SimpleNamespace(cfg=cfg, tmp=tmp, first=first, saved=saved, result=result, fired_first=fired_first,
                           fired=fired)


def test_pretrain_end_to_end_logs_every_metric_and_artifact(pretrained, tmp_path, monkeypatch):
    """Every metric once per epoch, artifacts, checkpoints and models of the (stopped, resumed, failed and
    restarted) run: nothing of the interruptions shows in what it logged."""
    cfg, result = pretrained.cfg, pretrained.result
    assert [int(r["epoch"]) for r in result.history] == [0, 1, 2, 3]
    client = _mlflow(cfg)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.batch_size"] == "32"
    assert run.data.params["clustering.sizes"] in ("[16, 8, 4]", "(16, 8, 4)")
    for key in EVERY_EPOCH:
        assert _steps(client, run.info.run_id, key) == [0, 1, 2, 3], key
    for key in HCSC_EPOCHS + SELECTION:
        assert _steps(client, run.info.run_id, key) == [1, 2, 3], key
    h = result.history
    # the warm-up epoch is plain InfoNCE; afterwards the objective has ICSC (3 levels summed) + PCSC
    assert "loss/prototype" not in h[0] and h[1]["loss/prototype"] > 0
    # it learns: the kNN monitor rises (the loss terms are no gauge here: the instance terms sit near chance,
    # ln(129), in 33 steps, and each epoch's prototype term is measured against that epoch's new prototypes
    # and their concentrations phi)
    assert h[3]["knn/top1_best"] > h[0]["knn/top1_best"], [r["knn/top1_best"] for r in h]
    assert all(0 < r[f"kept_fraction/instance_l{level}"] <= 1 for r in h[1:] for level in range(3))
    assert not any(k.startswith("selection/") for k in h[0])  # warm-up: no selection
    assert all(0.0 <= r[k] <= 1.0 for r in h[1:] for k in SELECTION), [{k: r[k] for k in SELECTION} for r in h[1:]]
    # 10 balanced digit classes: about a tenth of the queue shares the query's class
    assert all(0.03 < r["selection/false_negative_rate"] < 0.25 for r in h[1:])
    assert h[1]["prototypes/level0/size_max"] >= h[1]["prototypes/level0/size_min"]
    assert 0.5 < h[-1]["knn/top1_best"] <= 1.0  # 10 digit classes: chance is 0.1
    assert all(r["lr"] > 0 for r in h) and h[0]["lr"] > h[-1]["lr"]
    # artifacts
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "prototypes", "history.json"} <= arts, arts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == ["config/resolved.yaml"]
    # checkpoints: last one holds the final prototypes, both encoders and the queue
    state = load_checkpoint(result.checkpoint)
    assert state.epoch == 3 and state.prototypes is not None and state.prototypes.epoch == 3
    assert state.prototypes.sizes == (16, 8, 4)
    assert {"encoder_q.backbone.conv1.weight", "encoder_k.backbone.conv1.weight", "queue", "queue_ids"} <= set(
        state.model)
    assert (state.model["queue_ids"] >= 0).all()  # the queue was filled with real ids
    assert Path(result.run_dir, "best_encoder.pt").is_file()
    # the last and best query encoders are MLflow PyTorch models of this run, with a signature
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    ours = {m.name: m for m in models if m.source_run_id == run.info.run_id}
    assert set(ours) == {"encoder_last", "encoder_best"}, set(ours)
    import mlflow

    from hierclr.runtime.tracking import resolved_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", resolved_uri(cfg.tracking))  # models:/ URIs resolve globally
    info = mlflow.models.get_model_info(f"models:/{ours['encoder_last'].model_id}")
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    assert info.signature.outputs.inputs[0].shape == (-1, 512)  # resnet10 avgpool features
    _check_hierarchy_artifacts(client, run.info.run_id, tmp_path, e_steps=[1, 2, 3], levels=3)


def _check_hierarchy_artifacts(client, run_id: str, tmp: Path, *, e_steps: list[int], levels: int) -> None:
    """Issue-5 artifacts: per-E-step tree + histograms, AMI per label level (digits: 2 label levels), learning
    curves, the final tree and the chain image grid; PNGs are valid images, the tree is the final prototypes'."""
    import json

    from PIL import Image

    for m in range(2):
        assert _steps(client, run_id, f"prototypes/ami/label{m}") == e_steps
        for level in range(levels):
            assert _steps(client, run_id, f"prototypes/ami/proto{level}_label{m}") == e_steps
    ami = client.get_run(run_id).data.metrics
    assert all(-0.1 <= ami[f"prototypes/ami/label{m}"] <= 1.0 for m in range(2))
    assert ami["prototypes/ami/label0"] > 0.1  # the level-0 prototypes carry the digit classes (chance: 0)
    paths = {f.path for d in ("hierarchy/final", "hierarchy/chains", "plots", f"hierarchy/epoch_{e_steps[0]:03d}")
             for f in client.list_artifacts(run_id, d)}
    assert {"hierarchy/final/tree.json", "hierarchy/final/cluster_sizes.png", "hierarchy/chains/chains.png",
            "plots/learning_curves.png", "plots/ami.png", "plots/selection_quality.png",
            f"hierarchy/epoch_{e_steps[0]:03d}/tree.json",
            f"hierarchy/epoch_{e_steps[0]:03d}/cluster_sizes.png"} <= paths, paths
    for png in [p for p in paths if p.endswith(".png")]:
        with Image.open(client.download_artifacts(run_id, png, str(tmp))) as im:
            assert im.format == "PNG" and min(im.size) > 100, png
    tree = json.loads(Path(client.download_artifacts(run_id, "hierarchy/final/tree.json", str(tmp))).read_text())
    assert tree["num_levels"] == levels and len(tree["levels"]) == levels
    assert sum(tree["levels"][0]["members"]) == 359  # every training image is a member of one leaf


def test_resume_latest_records_each_epoch_once(pretrained):
    first, saved, second = pretrained.first, pretrained.saved, pretrained.result
    assert [int(r["epoch"]) for r in first.history] == [0, 1]
    assert saved.epoch == 1 and saved.prototypes is not None

    assert second.run_dir == first.run_dir and second.mlflow_run_id == first.mlflow_run_id
    assert [int(r["epoch"]) for r in second.history] == [0, 1, 2, 3]
    assert second.history[:2] == first.history  # the carried history is the first run's, unchanged
    client = _mlflow(pretrained.cfg)
    for key in ("loss/total", "epoch", "knn/top1_k10"):
        assert _steps(client, second.mlflow_run_id, key) == [0, 1, 2, 3], key
    assert _steps(client, second.mlflow_run_id, "loss/prototype_l0") == [1, 2, 3]
    # the checkpoint the resumed run started from still holds exactly the saved prototypes
    by_epoch = dict(checkpoints_in(second.run_dir))
    restored = load_checkpoint(by_epoch[1]).prototypes
    for a, b in zip(restored.centroids + restored.phi, saved.prototypes.centroids + saved.prototypes.phi):
        assert torch.equal(a, b)
    assert torch.equal(restored.assignments, saved.prototypes.assignments)
    final = load_checkpoint(second.checkpoint)
    assert final.epoch == 3 and final.prototypes.epoch == 3
    assert client.get_run(second.mlflow_run_id).info.status == "FINISHED"


def test_worker_failure_restarts_from_last_checkpoint(pretrained):
    # the failure happened in the resumed part (epoch 2), not before
    assert not pretrained.fired_first[WORKER_RAISE] and pretrained.fired[WORKER_RAISE]
    result = pretrained.result
    assert [int(r["epoch"]) for r in result.history] == [0, 1, 2, 3]
    client = _mlflow(pretrained.cfg)
    assert _steps(client, result.mlflow_run_id, "loss/total") == [0, 1, 2, 3]


def test_a_worker_group_restart_after_the_clustering_actor_was_lost_reruns_the_estep(pretrained):
    """Issue 18 item 4: the actor died for good in epoch 2's E-step (max_restarts=0) and the coordinator replaced
    it; then a worker failed and Ray Train restarted the worker group. The service outlived the group, and the
    restarted group's E-step of epoch 2, re-run from its workers' shards, completed at the first attempt on the
    replacement (the dead actor would have cost a failed attempt). Each epoch is recorded once."""
    assert not pretrained.fired_first[ACTOR_LOST]
    assert 0 < pretrained.fired[ACTOR_LOST] < pretrained.fired[WORKER_RAISE]  # the actor was lost, then the restart
    result = pretrained.result
    assert [int(r["epoch"]) for r in result.history] == [0, 1, 2, 3]
    restarted = result.history[2]  # the epoch-2 attempt that lost the actor never reported: this is the re-run
    assert restarted["prototypes/attempts"] == 1 and restarted["prototypes/level0/num_prototypes"] == 16
    assert restarted["loss/prototype"] > 0 and result.history[3]["prototypes/attempts"] == 1
    client = _mlflow(pretrained.cfg)
    for key in ("loss/total", "epoch"):
        assert _steps(client, result.mlflow_run_id, key) == [0, 1, 2, 3], key
    assert _steps(client, result.mlflow_run_id, "prototypes/attempts") == [1, 2, 3]
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and "hierclr.error" not in run.data.tags


def test_a_diverging_run_fails_with_its_step_and_writes_nothing(ray_session, tmp_path, digits_cache):
    """An absurd lr (issue 18: trained through to exit 0 with every weight NaN, the NaN encoder logged as a model).
    Also the failure path of any worker error without retries (``max_failures=0``): the run fails with the cause
    of the failing worker, its MLflow run is FAILED with the cause in ``hierclr.error``, and a run that wrote no
    checkpoint leaves no directory. MoCo v2 on one worker: no clustering actor to start."""
    from hierclr.runtime.driver import RunFailedError

    cfg = tiny_config(tmp_path, digits_cache, "method=moco", "resources.num_workers=1", "optim.epochs=2",
                      "optim.base_lr=1e8", "data.val=null")  # lr 1.25e7: NaN at the 4th step, 11 steps an epoch
    with pytest.raises(RunFailedError) as e:
        run_training(cfg, echo=lambda *a: None)
    err = e.value
    assert err.cause.startswith("TrainingDivergedError: training diverged: non-finite loss at epoch 0, step "), err
    assert "lr 1.25e+07" in err.cause and "loss/total=nan" in err.cause and "loss/instance=nan" in err.cause
    assert err.checkpoint is None and "wrote no checkpoint" in str(err)
    assert not Path(err.run_dir).exists() and list(Path(tmp_path, "runs").iterdir()) == []  # no empty run folder
    client = _mlflow(cfg)
    runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["hierclr.error"] == err.cause
    assert client.search_logged_models(experiment_ids=[runs[0].info.experiment_id]) == []  # no NaN encoder
    assert not client.get_metric_history(runs[0].info.run_id, "loss/total")  # no epoch was reported


def test_pcl_baseline_from_the_same_command(ray_session, tmp_path, digits_cache):
    """PCL v2 (flat K-means at each granularity through the clustering service, ProtoNCE) on one worker."""
    cfg = tiny_config(tmp_path, digits_cache, "method=pcl", "pcl.num_clusters=[8,20]", "pcl.num_negatives=4",
                      "resources.num_workers=1", "optim.epochs=2", "data.val=null", "tracking.log_models=false")
    result = run_training(cfg, echo=lambda *a: None)
    h = result.history
    assert [int(r["epoch"]) for r in h] == [0, 1]
    assert "loss/prototype" not in h[0] and h[1]["loss/prototype"] > 0
    assert h[1]["prototypes/level0/num_prototypes"] == 8 and h[1]["prototypes/level1/num_prototypes"] == 20
    assert load_checkpoint(result.checkpoint).prototypes.sizes == (8, 20)


def test_clustering_actor_killed_during_estep_is_restarted(pretrained):
    assert pretrained.fired_first[ACTOR_EXIT]  # the actor died in the first part's E-step (epoch 1)
    h = pretrained.first.history
    assert [int(r["epoch"]) for r in h] == [0, 1]
    assert h[1]["prototypes/attempts"] == 2  # the first attempt died with the actor, the retry finished the epoch
    assert pretrained.saved.prototypes.sizes == (16, 8, 4)


def test_a_run_the_local_cluster_cannot_hold_fails_fast(ray_session, tmp_path, digits_cache):
    cfg = tiny_config(tmp_path, digits_cache, "resources.num_workers=8", "optim.batch_size=64", "model.queue_size=128")
    with pytest.raises(ValueError, match=r"the run needs 9 CPU \(cluster has 4\)"):
        run_training(cfg, echo=lambda *a: None)
