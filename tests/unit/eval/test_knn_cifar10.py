"""kNN on the real CIFAR-10 (JPEG tree in $HIERCLR_TEST_DATA) reproduces the data's published floor.

shared/data/README: kNN (k=20, cosine, raw standardised pixels, vote exp(sim/0.07)) train -> test
top-1 = 45.8%; vehicle-vs-animal = 84.0%.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from hierclr.eval.knn import knn_accuracy_from_topk, knn_predict_from_topk, knn_topk


@pytest.fixture(scope="module")
def cifar10(cifar10_jpg_root, shared_data_dir):
    root = cifar10_jpg_root
    classes = sorted(p.name for p in (root / "train").iterdir())

    def load(split):
        xs, ys = [], []
        for c, name in enumerate(classes):
            for f in sorted((root / split / name).iterdir()):
                with Image.open(f) as im:
                    xs.append(np.asarray(im.convert("RGB")))
                ys.append(c)
        return np.stack(xs), np.array(ys)

    xtr, ytr = load("train")
    xte, yte = load("test")
    # per-channel standardisation in float32 (float64 statistics): 150 M training pixels, no float64 copies of them
    train32 = xtr.reshape(-1, 3).astype(np.float32) / 255
    mean, std = train32.mean(0, dtype=np.float64), train32.std(0, dtype=np.float64)
    del train32

    def flat(x):
        out = x.reshape(-1, 3).astype(np.float32) / 255
        out -= mean.astype(np.float32)
        out /= std.astype(np.float32)
        return torch.from_numpy(out.reshape(len(x), -1))
    edges = [line.split("\t") for line in (shared_data_dir / "cifar10-hierarchy.tsv").read_text().splitlines()[1:]]
    parent = {c.strip(): p.strip() for c, p in edges}
    domain = [parent[parent[name]] for name in classes]  # class -> group -> domain
    return flat(xtr), torch.from_numpy(ytr), flat(xte), torch.from_numpy(yte), classes, domain


@pytest.fixture
def two_threads():
    """10000 x 50000 similarities of 3072-dim pixels (~1.5 TFLOP): both cores of the CI machine. The session's
    one-thread setting (tests/conftest.py) is for tiny tensors beside busy Ray workers; no Ray work runs here."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_knn_top1_matches_published_floor(cifar10, two_threads):
    xtr, ytr, xte, yte, classes, domain = cifar10
    assert len(xtr) == 50000 and len(xte) == 10000 and len(classes) == 10
    # One neighbour search (the 1.5 TFLOP part), read twice: "labels" are the training rows' indices, so the same
    # 20 neighbours vote with class labels and with the hierarchy's top level (vehicle vs animal).
    sims, rows = knn_topk(xtr, torch.arange(len(xtr)), xte, k=20)
    acc = knn_accuracy_from_topk(sims, ytr[rows], yte, ks=(20,), num_classes=10)
    assert acc["top1_k20"] == pytest.approx(0.458, abs=0.002)
    dom_ids = {d: i for i, d in enumerate(sorted(set(domain)))}
    to_dom = torch.tensor([dom_ids[d] for d in domain])
    pred = knn_predict_from_topk(sims, to_dom[ytr[rows]], k=20, num_classes=2).argmax(1)
    assert (pred == to_dom[yte]).float().mean().item() == pytest.approx(0.840, abs=0.003)
