"""The raw-pixel kNN floor (per-channel standardisation with the train split's statistics, cosine, Eq. 11 vote)
against a loop written from the definition, and the demo's floor on the built-in digits."""
import numpy as np
import pytest

from hierclr.eval.pixel_floor import pixel_knn_floor


def _reference(xtr, ytr, xte, yte, k, num_classes, tau=0.07):
    flat = xtr.reshape(-1, xtr.shape[-1]).astype(np.float64) / 255.0
    mean, std = flat.mean(0), flat.std(0)

    def feats(x):
        f = ((x.astype(np.float64) / 255.0 - mean) / std).reshape(len(x), -1)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    a, b = feats(xtr), feats(xte)
    correct = 0
    for i in range(len(b)):
        sims = [float(a[j] @ b[i]) for j in range(len(a))]
        top = sorted(range(len(a)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * num_classes
        for j in top:
            votes[ytr[j]] += np.exp(sims[j] / tau)
        correct += int(np.argmax(votes) == yte[i])
    return correct / len(b)


def test_floor_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, size=(3, 4, 4, 3))
    ytr, yte = rng.integers(0, 3, 60), rng.integers(0, 3, 20)
    noise = lambda n: rng.normal(0, 60, size=(n, 4, 4, 3))
    xtr = np.clip(centres[ytr] + noise(60), 0, 255).astype(np.uint8)
    xte = np.clip(centres[yte] + noise(20), 0, 255).astype(np.uint8)
    got = pixel_knn_floor(xtr, ytr, xte, yte, ks=(1, 5), num_classes=3)
    for k in (1, 5):
        assert got[f"top1_k{k}"] == pytest.approx(_reference(xtr, ytr, xte, yte, k, 3))
    assert got["top1_best"] == max(got["top1_k1"], got["top1_k5"])


def test_digits_split_pixels_and_the_demo_floor():
    from hierclr.commands.pretrain import digits_floor
    from hierclr.config.pretrain import load_config
    from hierclr.data.builtin import digits_pixels

    xtr, ytr = digits_pixels("train")
    xva, yva = digits_pixels("val")
    assert xtr.shape == (1438, 32, 32, 3) and xva.shape == (359, 32, 32, 3) and xva.dtype == np.uint8
    assert sorted(set(yva.tolist())) == list(range(10))
    with pytest.raises(ValueError, match="splits"):
        digits_pixels("test")
    floor = digits_floor(load_config("demo"))
    assert floor["top1_k20"] == pytest.approx(_reference(xtr, ytr, xva, yva, 20, 10))
    assert digits_floor(load_config("demo", ["data.train=/data/shards/train"])) is None  # not the digits
