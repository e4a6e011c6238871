"""KeyBank (clustering.features: train_keys): ownership, latest key per id, drop_last remainders, the embed
pass's fill after a resume; the E-step's choice between the pass and the bank in Contrastive.before_epoch."""
import types

import pytest
import torch
import torch.nn.functional as F

from hierclr.clustering import Prototypes, compose_assignments
from hierclr.config.pretrain import HCSCLossConfig, PretrainConfig
from hierclr.losses import HCSCObjective
from hierclr.methods.contrastive import Contrastive
from hierclr.methods.contrastive_step import hcsc_train_step
from hierclr.methods.key_bank import KeyBank
from hierclr.models import MoCo


def keys(n, d=4, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_ranks_own_disjoint_ids_and_keep_the_latest_key():
    """Two ranks fed the same all-gathered steps (as the enqueue gives them): every id is held by exactly one
    rank, with the key of the last step that trained on it, whichever worker computed it."""
    banks = [KeyBank(10, 4, rank=r, world=2) for r in range(2)]
    k0, k1 = keys(6, seed=1), keys(4, seed=2)
    ids0, ids1 = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([3, 6, 7, 0])
    for b in banks:  # epoch 0 trains ids0; epoch 1 trains ids1 (3 and 0 again, now from another worker)
        b.begin_epoch(0)
        b.record(ids0, k0)
        b.begin_epoch(1)
        b.record(ids1, k1)
    shards = [b.shard() for b in banks]
    assert [s[0].tolist() for s in shards] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    latest = {}
    for i, k in [*zip(ids0.tolist(), k0), *zip(ids1.tolist(), k1)]:
        latest[i] = k
    for ids, ks in shards:
        torch.testing.assert_close(ks, torch.stack([latest[i] for i in ids.tolist()]), rtol=0, atol=0)
    assert banks[0].num_missing == 1 and banks[1].num_missing == 1  # ids 8 and 9 were never trained on
    # ages at the E-step of epoch 2: ids of epoch 1 are 1 epoch old, epoch 0's remainders (2, 4 / 1, 5) are 2
    assert sorted(banks[0].ages(2).tolist()) == [1, 1, 2, 2]
    assert sorted(banks[1].ages(2).tolist()) == [1, 1, 2, 2]


def test_fill_missing_sets_only_ids_without_a_key_and_refills_a_resumed_bank():
    trained = keys(3, seed=3)
    bank = KeyBank(6, 4)
    bank.begin_epoch(0)
    bank.record(torch.tensor([1, 4, 5]), trained)
    pass_feats = keys(6, seed=4)
    assert bank.fill_missing(torch.arange(6), pass_feats) == 3
    ids, ks = bank.shard()
    assert ids.tolist() == list(range(6))
    torch.testing.assert_close(ks[[1, 4, 5]], trained, rtol=0, atol=0)  # trained keys win over the pass
    torch.testing.assert_close(ks[[0, 2, 3]], pass_feats[[0, 2, 3]], rtol=0, atol=0)
    # a resume starts an empty bank (it is not checkpointed): one pass fills every id, shard == the pass
    resumed = KeyBank(6, 4, rank=1, world=2)
    assert resumed.num_missing == 3 and resumed.shard()[0].numel() == 0
    assert resumed.fill_missing(torch.arange(6), pass_feats) == 3
    ids, ks = resumed.shard()
    assert ids.tolist() == [1, 3, 5]
    torch.testing.assert_close(ks, pass_feats[[1, 3, 5]], rtol=0, atol=0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        KeyBank(5, 4, rank=2, world=2)
    bank = KeyBank(5, 4)
    with pytest.raises(ValueError, match=r"ids must be in \[0, 5\)"):
        bank.fill_missing(torch.tensor([0, 5]), keys(2))
    with pytest.raises(ValueError, match="features must be"):
        bank.fill_missing(torch.tensor([0, 1]), keys(2, d=3))


def test_the_step_records_its_enqueued_keys():
    torch.manual_seed(0)
    model = MoCo("resnet10", dim=8, hidden_dim=16, queue_size=8, cifar_stem=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    bank = KeyBank(12, 8)
    images = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    objective = HCSCObjective(HCSCLossConfig(warmup_epochs=0))
    for ids in (torch.tensor([3, 0, 7, 9]), torch.tensor([1, 2, 11, 4])):
        hcsc_train_step(model, objective, optimizer, images[ids], images[ids].flip(3), ids, None, key_bank=bank)
    ids, ks = bank.shard()
    assert ids.tolist() == [0, 1, 2, 3, 4, 7, 9, 11]
    slot = {int(i): s for s, i in enumerate(model.queue_ids.tolist())}
    torch.testing.assert_close(ks, model.queue[[slot[i] for i in ids.tolist()]], rtol=0, atol=0)


class FakeService:
    """The clustering service's estep: records what it was given, returns fixed prototypes."""

    def __init__(self, protos):
        self.protos, self.calls = protos, []

    def estep(self, epoch, rank, world, ids, feats, device=None):
        self.calls.append((epoch, ids.clone(), feats.clone()))
        stats = types.SimpleNamespace(cluster_s=0.0, total_s=0.0, num_missing=0, as_metrics=lambda prefix: {})
        return self.protos, stats


def worker_method(features: str, num_rows: int, passes: list):
    """A Contrastive worker without Ray: fake service and embed pass (whose features are recorded)."""
    cfg = PretrainConfig.model_validate({
        "model": {"backbone": "resnet10", "dim": 4, "queue_size": 8}, "optim": {"batch_size": 4, "epochs": 5},
        "clustering": {"sizes": [2], "features": features}, "loss": {"warmup_epochs": 1},
        "eval": {"ami": False, "selection_quality": False}})
    parents = []
    protos = Prototypes([keys(2)], parents, [torch.full((2,), 0.2)],
                        compose_assignments(torch.arange(num_rows) % 2, parents))
    run = types.SimpleNamespace(num_rows=num_rows)
    env = types.SimpleNamespace(rank=0, world=1, device=torch.device("cpu"), amp_dtype=None, channels_last=False)
    m = Contrastive.__new__(Contrastive)
    m.cfg, m.run, m.env, m.tracker = cfg, run, env, None
    m.objective, m.service, m.level_map = HCSCObjective(cfg.loss), FakeService(protos), None
    m.labels_by_id = m.fine_by_id = m.protos = m.selection_cache = m.selection = None
    m.check_ids, m.estep_done, m.embed_it = False, False, None
    m.key_bank = KeyBank(num_rows, 4) if features == "train_keys" else None

    def fake_embed(model, iterator, *, head, backbone, amp_dtype=None):
        feats = keys(num_rows, seed=100 + len(passes))
        passes.append(feats)
        return {"ids": torch.arange(num_rows), "labels": torch.full((num_rows,), -1), "head": feats}

    m._embed = fake_embed
    return m


def test_train_keys_runs_the_pass_once_per_process_then_clusters_the_bank():
    model = types.SimpleNamespace(queue=keys(8))
    passes: list = []
    m = worker_method("train_keys", 6, passes)
    trained = keys(4, seed=7)
    m.before_epoch(model, 0, {})  # warm-up: no E-step, but the bank starts recording
    m.key_bank.record(torch.tensor([0, 1, 2, 3]), trained)  # ids 4, 5: drop_last remainder of epoch 0
    row: dict = {}
    m.before_epoch(model, 1, row)  # first E-step: the pass, which fills 4 and 5; the pass is clustered
    assert len(passes) == 1 and "bank/stale_fraction" not in row
    torch.testing.assert_close(m.service.calls[-1][2], passes[0])
    ids, ks = m.key_bank.shard()
    torch.testing.assert_close(ks, torch.cat([trained, passes[0][4:]]))
    m.key_bank.record(torch.tensor([5, 2, 0, 1]), keys(4, seed=8))  # epoch 1 trains these; 3 and 4 remain
    row = {}
    m.before_epoch(model, 2, row)  # later E-steps: no pass, the bank as it is
    assert len(passes) == 1 and row["time/embed"] < 0.5
    epoch, ids, feats = m.service.calls[-1]
    assert epoch == 2
    assert ids.tolist() == list(range(6))
    torch.testing.assert_close(feats, m.key_bank.keys[:6])
    # id 3's key is from epoch 0 (2 epochs old); id 4's from the pass at epoch 1's E-step (1 epoch, not stale)
    assert row["bank/stale_fraction"] == pytest.approx(1 / 6)
    assert m.selection_cache is not None

    # resume at epoch 3: a new process, an empty bank: the first E-step runs the pass and refills every id
    resumed = worker_method("train_keys", 6, passes)
    resumed.before_epoch(model, 3, {})
    assert len(passes) == 2
    torch.testing.assert_close(resumed.key_bank.shard()[1], passes[1])


def test_embed_pass_mode_runs_the_pass_every_e_step():
    model = types.SimpleNamespace(queue=keys(8))
    passes: list = []
    m = worker_method("embed_pass", 6, passes)
    for epoch in range(3):
        m.before_epoch(model, epoch, {})
    assert len(passes) == 2 and m.key_bank is None  # epochs 1 and 2 (epoch 0 is warm-up)
    assert PretrainConfig().clustering.features == "embed_pass"
    assert PretrainConfig.model_validate({"compat": "paper"}).clustering.features == "embed_pass"
