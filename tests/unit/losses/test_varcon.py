"""VarCon (the spec's five steps, as the authors' code computes them) against explicit loops over
classes and samples (float64; autograd through the loops for the gradients)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hierclr.losses.varcon import varcon_loss


def unit(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def ref_varcon(z, labels, tau1=0.1, eps=0.02, centroid_source=None, detach_tau2=False):
    """Slow, obvious VarCon. Centroids come from ``centroid_source`` (default ``z.detach()``)."""
    source = z.detach() if centroid_source is None else centroid_source
    lab = labels.tolist()
    classes = sorted(set(lab))
    centroids = []
    for r in classes:
        members = [source[j] for j in range(len(lab)) if lab[j] == r]
        mean = sum(members) / len(members)
        centroids.append(mean / torch.sqrt(sum(v * v for v in mean)))
    kls, nlls, tau2s = [], [], []
    for i in range(z.shape[0]):
        logits = [z[i] @ w / tau1 for w in centroids]
        top = max(v.item() for v in logits)
        total = sum(torch.exp(v - top) for v in logits)
        p = [torch.exp(v - top) / total for v in logits]
        y = classes.index(lab[i])
        tau2 = torch.clamp((tau1 - eps) + 2 * eps * p[y], min=1e-6)
        if detach_tau2:
            tau2 = tau2.detach()
        weights = [torch.exp(1 / tau2) if r == y else torch.ones((), dtype=z.dtype) for r in range(len(classes))]
        q = [w / sum(weights) for w in weights]
        kls.append(sum(q[r] * (torch.log(q[r]) - torch.log(p[r])) for r in range(len(classes))))
        nlls.append(-torch.log(p[y]))
        tau2s.append(tau2)
    n = z.shape[0]
    kl, nll = sum(kls) / n, sum(nlls) / n
    return kl + nll, {"kl": kl, "nll": nll, "tau2_mean": sum(tau2s) / n, "num_classes": len(classes)}


def value_and_grad(fn, z, *args, **kwargs):
    z = z.detach().clone().requires_grad_()
    out = fn(z, *args, **kwargs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return out, z.grad


def random_labels(n, classes, seed):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed + 100))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("tau1", "eps"), [(0.1, 0.02), (0.2, 0.05)])
def test_matches_loops_value_grad_and_parts(seed, tau1, eps):
    z, labels = unit(12, 5, seed), random_labels(12, 4, seed)
    (got, parts), g = value_and_grad(varcon_loss, z, labels, tau1=tau1, epsilon=eps, return_parts=True)
    (want, ref_parts), g_ref = value_and_grad(lambda x: ref_varcon(x, labels, tau1, eps), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    for key in ("kl", "nll", "tau2_mean"):
        assert parts[key].item() == pytest.approx(ref_parts[key].item(), abs=1e-10), key
        assert not parts[key].requires_grad
    assert int(parts["num_classes"]) == ref_parts["num_classes"]
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_float32_matches_float64_loops():
    z = unit(16, 8, 3)
    labels = torch.tensor([40, 40, 7, 7, 7, 13, 13, 40, 7, 13, 40, 40, 13, 7, 99, 99])
    got, g = value_and_grad(varcon_loss, z.float(), labels)
    (want, _), g_ref = value_and_grad(lambda x: ref_varcon(x, labels), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    torch.testing.assert_close(g.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_no_gradient_reaches_the_centroids():
    """The gradient is the reference's with centroids from z.detach(), and not the one with live centroids."""
    z, labels = unit(10, 4, 4), random_labels(10, 3, 4)
    _, g = value_and_grad(varcon_loss, z, labels)
    (_, _), g_ref = value_and_grad(lambda x: ref_varcon(x, labels), z)
    (_, _), g_live = value_and_grad(lambda x: ref_varcon(x, labels, centroid_source=x), z)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)
    assert (g - g_live).abs().max() > 1e-3


def test_gradient_flows_through_tau2():
    z, labels = unit(10, 4, 5), random_labels(10, 3, 5)
    _, g = value_and_grad(varcon_loss, z, labels, epsilon=0.05)
    (_, _), g_detached = value_and_grad(lambda x: ref_varcon(x, labels, eps=0.05, detach_tau2=True), z)
    assert (g - g_detached).abs().max() > 1e-5  # about 3e-4 here


def test_epsilon_zero_gives_constant_tau2():
    z, labels = unit(10, 4, 6), random_labels(10, 3, 6)
    (got, parts), g = value_and_grad(varcon_loss, z, labels, tau1=0.1, epsilon=0.0, return_parts=True)
    assert parts["tau2_mean"].item() == pytest.approx(0.1, abs=1e-15)
    (want, _), g_const = value_and_grad(lambda x: ref_varcon(x, labels, 0.1, 0.0, detach_tau2=True), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g, g_const, atol=1e-10, rtol=1e-8)


def test_invariant_to_relabelling():
    z = unit(12, 5, 7)
    labels = random_labels(12, 4, 7)
    new_ids = torch.tensor([93, 5, 1000, 42])  # a permutation into arbitrary, non-contiguous ids
    (a, pa), ga = value_and_grad(varcon_loss, z, labels, return_parts=True)
    (b, pb), gb = value_and_grad(varcon_loss, z, new_ids[labels], return_parts=True)
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    torch.testing.assert_close(ga, gb, atol=1e-12, rtol=1e-10)
    assert all(pa[k].item() == pytest.approx(pb[k].item(), abs=1e-12) for k in pa)


@pytest.mark.parametrize("seed", range(5))
def test_loss_at_least_nll(seed):
    z, labels = unit(16, 6, seed), random_labels(16, 5, seed)
    loss, parts = varcon_loss(z, labels, return_parts=True)
    assert parts["kl"].item() >= 0.0
    assert loss.item() >= parts["nll"].item()


def test_singleton_classes():
    z, labels = unit(6, 4, 8), torch.tensor([9, 3, 7, 1, 0, 5])
    (got, parts), g = value_and_grad(varcon_loss, z, labels, return_parts=True)
    (want, _), g_ref = value_and_grad(lambda x: ref_varcon(x, labels), z)
    assert int(parts["num_classes"]) == 6
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)


def test_one_class_gives_zero():
    z = unit(6, 4, 9)
    (got, parts), g = value_and_grad(varcon_loss, z, torch.full((6,), 4), return_parts=True)
    assert got.item() == 0.0 and int(parts["num_classes"]) == 1
    assert torch.equal(g, torch.zeros_like(g))


def test_duplicates_and_all_equal_embeddings_are_finite():
    z = unit(4, 4, 10).repeat(3, 1)  # every row three times
    labels = torch.tensor([0, 1, 2, 3] * 3)
    (got, _), g = value_and_grad(varcon_loss, z, labels, return_parts=True)
    (want, _), g_ref = value_and_grad(lambda x: ref_varcon(x, labels), z)
    assert got.item() == pytest.approx(want.item(), abs=1e-10)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-8)
    same = F.normalize(torch.ones(8, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    (got, parts), g = value_and_grad(varcon_loss, same, labels, return_parts=True)
    # all centroids equal: p uniform over 4 classes, nll = log 4
    assert parts["nll"].item() == pytest.approx(math.log(4), rel=1e-6)
    assert torch.isfinite(got) and torch.isfinite(g).all()


def test_class_with_zero_mean_is_finite():
    e = torch.eye(3, dtype=torch.float64)
    z = torch.stack([e[0], -e[0], e[1], e[2]])  # class 0 averages to the zero vector
    (got, _), g = value_and_grad(varcon_loss, z, torch.tensor([0, 0, 1, 2]), return_parts=True)
    assert torch.isfinite(got) and torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_gives_fp32_result(dtype):
    z = unit(16, 8, 11, dtype=torch.float32).to(dtype)
    labels = random_labels(16, 4, 11)
    zh = z.clone().requires_grad_()
    got = varcon_loss(zh, labels, tau1=0.05, epsilon=0.02)
    want = varcon_loss(z.float(), labels, tau1=0.05, epsilon=0.02)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), abs=1e-6)
    got.backward()
    assert zh.grad.dtype == dtype and torch.isfinite(zh.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = varcon_loss(z.float(), labels, tau1=0.05, epsilon=0.02)
    assert under_amp.dtype == torch.float32 and under_amp.item() == pytest.approx(want.item(), abs=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_cost_is_linear_in_the_batch():
    """No op builds an N x N tensor: every tensor is at most N x max(d, classes)."""
    n, d, classes = 600, 16, 10
    z = unit(n, d, 12, dtype=torch.float32).requires_grad_()
    labels = random_labels(n, classes, 12)
    with LargestTensor() as mode:
        varcon_loss(z, labels).backward()
    assert 0 < mode.largest <= n * max(d, classes)
