"""HCSCObjective composes ICSC + PCSC (Eq. 10) per the spec, with warm-up and Table 5 ablations."""
import pytest
import torch
import torch.nn.functional as F

from hierclr.clustering import Prototypes, compose_assignments
from hierclr.config.pretrain import HCSCLossConfig, PretrainConfig
from hierclr.losses import HCSCObjective, PCLObjective, icsc_loss, info_nce, pcsc_loss, proto_nce_loss


def unit(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


@pytest.fixture
def batch():
    sizes = (8, 4, 2)
    parents = [torch.arange(8) % 4, torch.arange(4) % 2]
    a0 = torch.randint(0, 8, (30,), generator=torch.Generator().manual_seed(0))
    P = Prototypes([unit(m, 6, seed=m) for m in sizes], parents, [torch.full((m,), 0.2, dtype=torch.float64) for m in sizes],
                   compose_assignments(a0, parents))
    return {"q": unit(5, 6, seed=1), "k": unit(5, 6, seed=2), "queue": unit(9, 6, seed=3), "protos": P, "ids": torch.tensor([0, 4, 8, 12, 29])}


def G():
    return torch.Generator().manual_seed(123)


def test_warmup_is_plain_infonce(batch):
    b = batch
    obj = HCSCObjective(HCSCLossConfig(warmup_epochs=2))
    assert obj.in_warmup(1) and not obj.in_warmup(2)
    loss, m = obj(b["q"], b["k"], b["queue"], None, b["ids"])
    assert loss.item() == pytest.approx(info_nce(b["q"], b["k"], b["queue"], 0.2).item(), rel=1e-12)
    assert set(m) == {"loss/instance", "loss/total"}


def test_full_objective_is_icsc_plus_pcsc(batch):
    b = batch
    loss, m = HCSCObjective()(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=G())
    g = G()  # replay the same draws in the same order: ICSC levels, then PCSC levels
    icsc, _ = icsc_loss(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=g)
    pcsc, _ = pcsc_loss(b["q"], b["protos"], b["ids"], generator=g)
    assert loss.item() == pytest.approx((icsc + pcsc).item(), rel=1e-12)
    assert m["loss/total"].item() == pytest.approx(loss.item())
    assert {"loss/instance_l2", "loss/prototype_l2", "kept_fraction/instance_l0", "kept_fraction/prototype_l1"} <= set(m)


@pytest.mark.parametrize(
    "switches,expected",
    [
        ({"instance_selection": False}, "infonce+pcsc"),
        ({"instance_loss": False}, "pcsc"),
        ({"prototype_loss": False}, "icsc"),
        ({"prototype_selection": False}, "icsc+pcsc_nosel"),
        ({"instance_selection": False, "prototype_selection": False}, "infonce+pcsc_nosel"),
    ],
)
def test_table5_ablations(batch, switches, expected):
    b = batch
    loss, _ = HCSCObjective(HCSCLossConfig(**switches))(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=G())
    g = G()
    parts = {
        "infonce": lambda: info_nce(b["q"], b["k"], b["queue"], 0.2),
        "icsc": lambda: icsc_loss(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=g)[0],
        "pcsc": lambda: pcsc_loss(b["q"], b["protos"], b["ids"], generator=g)[0],
        "pcsc_nosel": lambda: pcsc_loss(b["q"], b["protos"], b["ids"], selection=False)[0],
    }
    want = sum(parts[name]().item() for name in expected.split("+"))
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_single_level_ablation_uses_level0_without_selection(batch):
    b = batch
    loss, m = HCSCObjective(HCSCLossConfig(hierarchical_prototypes=False))(
        b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=G()
    )
    one = b["protos"].truncate(1)
    g = G()
    want = icsc_loss(b["q"], b["k"], b["queue"], one, b["ids"], generator=g)[0] + pcsc_loss(b["q"], one, b["ids"], generator=g)[0]
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    assert "loss/instance_l1" not in m and m["kept_fraction/prototype_l0"].item() == 1.0


def test_multicrop_local_views_reuse_instance_masks(batch):
    b = batch
    views = [unit(5, 6, seed=40), unit(5, 6, seed=41)]
    loss, _ = HCSCObjective()(b["q"], b["k"], b["queue"], b["protos"], b["ids"], local_q=views, generator=G())
    g = G()
    icsc, info = icsc_loss(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=g)
    for v in views:
        icsc = icsc + icsc_loss(v, b["k"], b["queue"], b["protos"], b["ids"], masks=info["masks"])[0]
    pcsc = pcsc_loss(b["q"], b["protos"], b["ids"], generator=g)[0]
    for v in views:
        pcsc = pcsc + pcsc_loss(v, b["protos"], b["ids"], generator=g)[0]
    assert loss.item() == pytest.approx((icsc + pcsc).item(), rel=1e-12)


@pytest.mark.parametrize("local", [False, True])
def test_out_masks_are_the_masks_the_loss_used(batch, local):
    """The hook changes neither the loss nor the draws, and hands out exactly the ICSC masks of the global view."""
    b = batch
    views = [unit(5, 6, seed=40)] if local else []
    obj = HCSCObjective()
    plain, m_plain = obj(b["q"], b["k"], b["queue"], b["protos"], b["ids"], local_q=views, generator=G())
    masks: list = []
    hooked, m_hooked = obj(b["q"], b["k"], b["queue"], b["protos"], b["ids"], local_q=views, generator=G(),
                           out_masks=masks)
    assert hooked.item() == plain.item()  # same draws: bitwise the same loss
    assert {k: v.item() for k, v in m_hooked.items()} == {k: v.item() for k, v in m_plain.items()}
    assert len(masks) == 3 and all(m.shape == (5, 9) for m in masks)
    _, info = icsc_loss(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=G())  # the first draws of G()
    for got, want in zip(masks, info["masks"]):
        assert torch.equal(got, want)
    # fed back as fixed masks, they give the objective's instance term
    inst = icsc_loss(b["q"], b["k"], b["queue"], b["protos"], b["ids"], masks=masks)[0]
    for v in views:
        inst = inst + icsc_loss(v, b["k"], b["queue"], b["protos"], b["ids"], masks=masks)[0]
    assert m_hooked["loss/instance"].item() == pytest.approx(inst.item(), rel=1e-12)
    assert [m.mean().item() for m in masks] == [m_hooked[f"kept_fraction/instance_l{i}"].item() for i in range(3)]


@pytest.mark.parametrize("switches", [{"instance_selection": False}, {"instance_loss": False}])
def test_out_masks_stay_empty_without_instance_selection(batch, switches):
    b = batch
    for protos in (None, b["protos"]):  # warm-up, then an ablation without ICSC masks
        masks: list = []
        HCSCObjective(HCSCLossConfig(**switches))(b["q"], b["k"], b["queue"], protos, b["ids"], generator=G(),
                                                  out_masks=masks)
        assert masks == []


def test_paper_compat_changes_only_the_documented_options(batch):
    b = batch
    paper = PretrainConfig(compat="paper")
    assert paper.loss.negative_drop == "remove" and paper.loss.instance_level_reduction == "mean"
    assert paper.clustering.min_cluster_size == 10
    loss, _ = HCSCObjective(paper.loss)(b["q"], b["k"], b["queue"], b["protos"], b["ids"], generator=G())
    g = G()
    want = icsc_loss(b["q"], b["k"], b["queue"], b["protos"], b["ids"], negative_drop="remove", level_reduction="mean", generator=g)[0]
    want = want + pcsc_loss(b["q"], b["protos"], b["ids"], negative_drop="remove", generator=g)[0]
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)


def test_pcl_objective(batch):
    b = batch
    loss, _ = PCLObjective(num_negatives=None)(b["q"], b["k"], b["queue"], b["protos"], b["ids"])
    want = info_nce(b["q"], b["k"], b["queue"], 0.2) + proto_nce_loss(b["q"], b["protos"], b["ids"])[0]
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)


def test_config_rejects_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="temperature"):
        HCSCLossConfig(temperature=0)
    with pytest.raises(ValidationError, match="both off"):
        HCSCLossConfig(instance_loss=False, prototype_loss=False)
    with pytest.raises(ValidationError, match="negative_drop"):
        HCSCLossConfig(negative_drop="drop")
    with pytest.raises(ValidationError, match="strictly decreasing"):
        PretrainConfig(clustering={"sizes": [100, 200]})
    with pytest.raises(ValidationError, match="extra"):
        PretrainConfig(loss={"temprature": 0.1})
