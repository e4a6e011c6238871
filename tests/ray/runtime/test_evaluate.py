"""``hierclr evaluate`` end to end: real local Ray Train feature workers, real digits parquet shards, faiss,
sqlite MLflow; every protocol on a pretraining checkpoint made in the test."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hierclr.config.evaluate import load_evaluate_config
from hierclr.io.checkpoint import TrainingState, save_checkpoint
from hierclr.models import MoCo
from hierclr.runtime.evaluate import run_evaluate

pytestmark = pytest.mark.timeout(900)


def _pretrain_checkpoint(tmp: Path, tracking_uri: str) -> tuple[Path, str, MoCo]:
    """A hierclr pretraining checkpoint (random resnet10 MoCo) whose state names an MLflow run of this store, with
    hierarchical prototypes over the 359 val digits (ids 0..358)."""
    from hierclr.clustering import KMeansSettings, hierarchical_kmeans
    from hierclr.config.sections import TrackingSection
    from hierclr.runtime.tracking import Tracker

    torch.manual_seed(0)
    moco = MoCo("resnet10", dim=16, hidden_dim=32, queue_size=32)
    tracker = Tracker.start(TrackingSection(uri=tracking_uri, experiment="pre"), run_name="pretrain", params={})
    protos = hierarchical_kmeans(np.random.default_rng(0).normal(size=(359, 8)).astype(np.float32), (12, 4),
                                 KMeansSettings(nredo=1, seed=0))
    ckpt = tmp / "pretrain-run" / "checkpoint_000000"
    run_id = tracker.run_id
    save_checkpoint(ckpt, TrainingState(epoch=0, model=moco.state_dict(), optimizer={}, prototypes=protos,
                                        mlflow_run_id=run_id))
    tracker.finish("FINISHED")
    return ckpt.parent, run_id, moco


def test_evaluate_every_protocol_nested_under_the_pretraining_run(ray_session, tmp_path, digits_cache, monkeypatch):
    """Also issue 19 item 1: the source, output and MLflow store are given relative to the working directory (as
    the README writes them), which is not the Ray workers' (Ray started before the chdir)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir, parent, moco = _pretrain_checkpoint(tmp_path, uri)
    monkeypatch.chdir(tmp_path)
    # the trained protocols on one worker (DDP finetuning: test_supervised.py); the feature pass keeps two
    short = ["optim.epochs=2", "optim.milestones=[1]", "optim.batch_size=32", "resources.num_workers=1"]
    cfg = load_evaluate_config("digits", [
        f"source={run_dir.name}", "model.backbone=resnet10", f"data.builtin_cache={digits_cache}",
        "data.train=builtin://digits/val", "data.decode_batch_size=64", "tracking.uri=sqlite:///mlflow.db",
        "output_dir=eval", "knn.ks=[5,10]", "clustering.overcluster=3", f"linear.set={short}",
        f"semi.set={short}", "semi.fractions=[0.5]", "plot_points=200"])
    result = run_evaluate(cfg, echo=lambda *a: None)
    assert Path(result.output_dir).parent == tmp_path / "eval"
    r = result.results
    for key in ("knn/top1_k5", "knn/top5_k5", "knn/top1_k10", "knn/top1_best", "clustering/kmeans_k10/nmi",
                "clustering/kmeans_k10/ami", "clustering/kmeans_k10/acc", "clustering/kmeans_k30/acc",
                "clustering/prototypes_l0/ami", "clustering/prototypes_l1/acc", "hierarchy/kmeans_label0",
                "hierarchy/kmeans_label1", "hierarchy/prototypes_label0", "hierarchy/prototypes_label1",
                "linear/top1_best", "linear/top1_last", "linear/top5_best", "semi0.5/top1_best"):
        assert key in r, (key, sorted(r))
        assert -0.1 <= r[key] <= 1.0, (key, r[key])
    assert r["knn/top1_k5"] > 0.2  # random conv features still cluster digits well above chance (0.1)
    assert r["knn/top5_k5"] >= r["knn/top1_k5"]

    # the features the Ray workers extracted are the trunk's features of the eval-transformed images, by id
    from hierclr.data import open_source
    from hierclr.data.decode import decode_rgb
    from hierclr.data.fetch import fetch_images
    from hierclr.data.transforms import eval_transform
    from hierclr.runtime.runs import data_path

    feats = {}
    for f in sorted(Path(result.output_dir, "features").rglob("val-rank*.npz")):
        z = np.load(f)
        feats.update(dict(zip(z["ids"].tolist(), z["feats"])))
    assert sorted(feats) == list(range(359))  # every row once, over both workers
    # the paper's clustering protocol (Table 4): the checkpoint's own prototypes against the labels, by id
    from hierclr.eval.clustering_scores import clustering_scores
    from hierclr.io.checkpoint import latest_checkpoint, load_checkpoint

    labels = {}
    for f in sorted(Path(result.output_dir, "features").rglob("train-rank*.npz")):
        z = np.load(f)
        labels.update(dict(zip(z["ids"].tolist(), z["labels"].tolist())))
    ids = np.array(sorted(labels))
    assign = load_checkpoint(latest_checkpoint(run_dir)).prototypes.assignments.numpy()
    for level in (0, 1):
        want = clustering_scores(np.array([labels[i] for i in ids]), assign[ids, level])
        for m in ("nmi", "ami", "acc"):
            assert r[f"clustering/prototypes_l{level}/{m}"] == pytest.approx(want[m], abs=1e-12), (level, m)
    assert r["clustering/prototypes_l0/k"] == 12 and r["clustering/prototypes_l1/k"] == 4
    src = open_source(data_path(cfg.data.train, cfg))
    ev = cfg.data.transform_config().eval
    trunk = moco.encoder_q.backbone.eval()
    mean, std = torch.tensor(ev.mean).view(1, 3, 1, 1), torch.tensor(ev.std).view(1, 3, 1, 1)
    for i, raw in fetch_images(src, [0, 200, 358]).items():
        x = eval_transform(decode_rgb(raw), ev).float().unsqueeze(0) / 255.0
        with torch.no_grad():
            want = trunk((x - mean) / std)[0].numpy()
        assert np.allclose(feats[i], want, atol=1e-4), i

    # results.json, MLflow: nested under the pretraining run, with the trained protocols nested below it
    payload = json.loads(Path(result.results_path).read_text())
    assert payload["results"] == r and payload["source_kind"] == "hierclr-pretrain"
    assert payload["status"] == "finished" and payload["source"] == str(run_dir)
    assert payload["done"] == ["features", "knn", "clustering/prototypes", "clustering/kmeans", "hierarchy", "linear",
                               "semi0.5"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent and result.parent_run_id == parent
    assert run.data.metrics["knn/top1_k5"] == pytest.approx(r["knn/top1_k5"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "results.txt"} <= arts
    assert "plots/embedding_tsne.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(c.data.tags["hierclr.protocol"] for c in children) == ["linear", "semi0.5"]
    assert {c.data.params["model.init"] for c in children} == {str(run_dir)}  # absolute for the workers
    assert all(c.info.status == "FINISHED" for c in children)
    semi = next(c for c in children if c.data.tags["hierclr.protocol"] == "semi0.5")
    assert semi.data.params["subset.ids_file"].endswith("subset_0.5.npy")
    assert len(np.load(semi.data.params["subset.ids_file"])) == pytest.approx(180, abs=6)  # half of every class


def test_evaluate_wrong_checkpoint_fails_before_ray(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    cfg = load_evaluate_config("digits", [f"source={path}", "model.backbone=resnet50"])
    with pytest.raises(ValueError, match="missing keys"):
        run_evaluate(cfg, echo=lambda *a: None)
    with pytest.raises(ValueError, match="protocols"):
        load_evaluate_config("digits", ["source=x", "protocols=[knn,knn]"])
    with pytest.raises(ValueError, match="protocols"):
        load_evaluate_config("digits", ["source=x", "protocols=[tsne]"])
