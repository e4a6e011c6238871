"""A diverging loss is caught with its epoch, step, lr and loss terms; finite training passes untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hierclr.runtime.divergence import DivergenceGuard, TrainingDivergedError, nonfinite_tensors


def _train(lr: float, steps: int, guard: DivergenceGuard) -> nn.Module:
    """A tiny regression trained by SGD; the metrics go to ``guard`` the way the epoch loop hands them over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(32, 4) * 10, torch.randn(32, 1)
    for step in range(1, steps + 1):
        mse = ((model(x) - y) ** 2).mean()
        l1 = (model(x) - y).abs().mean()
        loss = mse + l1
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.add(step, {"loss/total": loss.detach(), "loss/mse": mse.detach(), "loss/l1": l1.detach(),
                         "train/acc": torch.tensor(0.5)})
    return model


def test_absurd_lr_fails_with_epoch_step_lr_and_terms():
    guard = DivergenceGuard(epoch=3, lr=1e6)
    model = _train(1e6, 12, guard)
    first = int(guard.first_step)
    assert 1 < first <= 12  # the first step is finite; a later one is the first non-finite
    with pytest.raises(TrainingDivergedError) as e:
        guard.check(12, model)
    msg = str(e.value)
    assert f"epoch 3, step {first}" in msg and "lr 1e+06" in msg
    for term in ("loss/total=", "loss/mse=", "loss/l1="):
        assert term in msg
    assert "train/acc" not in msg  # only loss terms are watched and reported
    # the terms reported are those of the first bad step, and not all finite
    assert not all(torch.isfinite(torch.tensor(list(guard.local_report()["terms"].values()))))


def test_the_first_bad_step_is_kept_when_later_steps_are_finite_again():
    guard = DivergenceGuard(epoch=0, lr=0.1)
    values = [1.0, 2.0, float("inf"), 3.0, float("nan")]
    for step, v in enumerate(values, 1):
        guard.add(step, {"loss/total": torch.tensor(v), "loss/a": torch.tensor(v / 2)})
    report = guard.local_report()
    assert report["step"] == 3 and report["terms"] == {"loss/total": float("inf"), "loss/a": float("inf")}


def test_finite_training_passes_every_check():
    guard = DivergenceGuard(epoch=0, lr=0.01)
    model = _train(0.01, 20, guard)
    assert int(guard.first_step) == -1
    guard.check(20)
    guard.check(20, model)  # the end-of-epoch check also reads the weights


def test_nonfinite_weights_with_finite_losses_fail_at_the_end_of_the_epoch():
    guard = DivergenceGuard(epoch=5, lr=0.5)
    model = _train(0.01, 3, guard)
    with torch.no_grad():
        model[2].weight[0, 1] = float("nan")
    assert nonfinite_tensors(model) == ["2.weight"]
    guard.check(3)  # mid-epoch: the losses are all that is looked at
    with pytest.raises(TrainingDivergedError, match=r"non-finite weights after epoch 5 .*lr 0.5.*2\.weight"):
        guard.check(3, model)


def test_a_step_without_loss_terms_is_ignored():
    guard = DivergenceGuard(epoch=0, lr=1.0)
    guard.add(1, {"train/acc": torch.tensor(float("nan"))})
    assert guard.local_report() is None


def test_every_rank_raises_for_the_earliest_bad_step_of_any_rank():
    """What :meth:`DivergenceGuard.check` does with the all-gathered reports: a finite rank raises too (DDP keeps
    the ranks in lockstep, so no rank goes on alone), naming the rank and step that went bad first."""
    guard = DivergenceGuard(epoch=2, lr=0.3)
    reports = [None, {"step": 9, "terms": {"loss/total": float("nan")}},
               {"step": 4, "terms": {"loss/total": float("inf")}}, {"step": None, "tensors": ["w"]}]
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, step 4 \(rank 2\), lr 0.3: loss/total=inf"):
        guard.raise_if_any(10, reports)
    guard.raise_if_any(10, [None, None])
    with pytest.raises(TrainingDivergedError, match=r"non-finite weights after epoch 2 \(step 10, rank 1\)"):
        guard.raise_if_any(10, [None, {"step": None, "tensors": ["encoder_q.fc.weight"]}])
