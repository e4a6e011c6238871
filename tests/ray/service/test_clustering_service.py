"""The E-step clustering service on a local Ray: same prototypes as one-process clustering, for every
rank; distributed Lloyd over 2 actors == one K-means; actor failures retried once; missing/duplicate ids."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import planted_hierarchy

from hierclr.clustering import KMeansSettings, distributed_kmeans, flat_multi_kmeans, hierarchical_kmeans, kmeans
from hierclr.config.clustering import ClusteringConfig, ClusteringServiceSection
from hierclr.service import ClusteringFailedError, ClusteringService, EStepStats, connect
from hierclr.service.actors import ActorShards, KMeansActor

pytestmark = pytest.mark.timeout(120)

SIZES = (24, 6, 2)


@pytest.fixture(scope="module")
def data():
    """480 unit vectors, d=16, and a split into two rank shards with shuffled ids."""
    rng = np.random.default_rng(0)
    x, _ = planted_hierarchy(rng, branching=(2, 3, 4), per_leaf=20, dim=16)
    ids = rng.permutation(len(x))
    shards = [(ids[:230], x[:230]), (ids[230:], x[230:])]
    return x[np.argsort(ids)], shards


def start(ray_session, num_actors=1, method="hcsc", num_rows=480, max_restarts=1, **clustering):
    cfg = ClusteringConfig(sizes=SIZES, niter=10, nredo=2, **clustering)
    svc = ClusteringService.start(
        f"test-clustering-{uuid.uuid4().hex[:8]}", cfg,
        ClusteringServiceSection(num_actors=num_actors, cpus_per_actor=1, max_restarts=max_restarts),
        method=method, pcl_sizes=(10, 30), num_rows=num_rows,
    )
    return svc, cfg


def run_ranks(name, epoch, shards, world_size=None):
    """Every rank calls ``connect(name).estep`` at once (threads); returns results or raised errors."""
    world = world_size or len(shards)

    def call(rank):
        ids, x = shards[rank]
        try:
            return connect(name).estep(epoch, rank, world, torch.from_numpy(ids), torch.from_numpy(x))
        except Exception as e:  # noqa: BLE001 -- returned to the test, which asserts on it
            return e

    with ThreadPoolExecutor(len(shards)) as pool:
        return list(pool.map(call, range(len(shards))))


def expected(cfg, x, **kw):
    return hierarchical_kmeans(x, cfg.sizes, cfg, **kw)


def assert_same(a, b, atol=1e-6):
    assert a.sizes == b.sizes and a.epoch == b.epoch
    assert torch.equal(a.assignments, b.assignments)
    for p, q in zip(a.parents, b.parents):
        assert torch.equal(p, q)
    for p, q in zip(a.centroids + a.phi, b.centroids + b.phi):
        torch.testing.assert_close(p, q, atol=atol, rtol=atol)


# ------------------------------------------------------------------------------------------------ (a)
def test_two_ray_workers_get_the_prototypes_of_hierarchical_kmeans(ray_session, data):
    x_sorted, shards = data
    svc, cfg = start(ray_session)
    name = svc.name

    @ray_session.remote(num_cpus=0)
    def worker(rank):  # a separate process, like a Ray Train worker
        ids, x = shards[rank]
        return connect(name).estep(3, rank, 2, torch.from_numpy(ids), torch.from_numpy(x))

    try:
        (p0, s0), (p1, s1) = ray_session.get([worker.remote(0), worker.remote(1)])
    finally:
        svc.shutdown()
    assert_same(p0, p1, atol=0)
    assert s0 == s1 and isinstance(s0, EStepStats)
    assert_same(p0, expected(cfg, x_sorted, epoch=3))
    assert (s0.epoch, s0.num_rows, s0.num_clustered, s0.num_missing, s0.attempts) == (3, 480, 480, 0, 1)
    assert [lv.num_prototypes for lv in s0.levels] == list(SIZES)
    assert s0.levels[0].size_max >= s0.levels[0].size_median >= s0.levels[0].size_min
    assert s0.levels[0].phi_mean == pytest.approx(cfg.temperature, rel=1e-5)
    metrics = s0.as_metrics()
    assert metrics["estep/num_missing"] == 0 and "estep/level2/phi_max" in metrics and "estep/cluster_s" in metrics


def test_pcl_single_actor_is_flat_multi_kmeans(ray_session, data):
    x_sorted, shards = data
    svc, cfg = start(ray_session, method="pcl")
    try:
        (p, _), _ = run_ranks(svc.name, 0, shards)
    finally:
        svc.shutdown()
    want = flat_multi_kmeans(x_sorted, (10, 30), cfg, epoch=0)
    assert_same(p, want)


# ------------------------------------------------------------------------------------------------ (b)
def test_two_actor_lloyd_equals_one_kmeans_from_the_same_start(ray_session, data):
    x_sorted, shards = data
    remote = ray_session.remote(KMeansActor).options(num_cpus=1)
    actors = [remote.remote(i, 1) for i in range(2)]
    try:
        refs = [ray_session.put(s) for s in shards]
        loaded = ray_session.get([a.load.remote([r]) for a, r in zip(actors, refs)])
        present = np.sort(np.concatenate([ids[0] for ids, _ in loaded]))
        positions = [np.searchsorted(present, ids[0]) for ids, _ in loaded]
        ray_session.get([a.set_positions.remote(p) for a, p in zip(actors, positions)])
        init = x_sorted[np.random.default_rng(1).choice(480, 24, replace=False)]
        got = distributed_kmeans(ActorShards(actors, positions, 16), 24, KMeansSettings(niter=10, nredo=1),
                                 init_centroids=init)
    finally:
        for a in actors:
            ray_session.kill(a)
    want = kmeans(x_sorted, 24, KMeansSettings(niter=10, nredo=1, backend="torch"), init_centroids=init)
    np.testing.assert_allclose(got.centroids, want.centroids, atol=1e-4)
    np.testing.assert_array_equal(got.assignments, want.assignments)
    np.testing.assert_allclose(got.sq_distances, want.sq_distances, atol=1e-4)


@pytest.mark.parametrize("method", ["hcsc", "pcl"])
def test_two_actor_service_equals_torch_clustering(ray_session, data, method):
    x_sorted, shards = data
    svc, cfg = start(ray_session, num_actors=2, method=method, backend="torch", max_points_per_centroid=15)
    try:  # 480 > 24 * 15: level 0 trains on the seeded subsample, as the one-process torch backend does
        (p, stats), _ = run_ranks(svc.name, 1, shards)
    finally:
        svc.shutdown()
    assert stats.num_actors == 2
    assert (cfg.backend, cfg.max_points_per_centroid) == ("torch", 15)
    want = flat_multi_kmeans(x_sorted, (10, 30), cfg, epoch=1) if method == "pcl" else hierarchical_kmeans(
        x_sorted, SIZES, cfg, epoch=1)
    assert_same(p, want, atol=1e-4)


# ------------------------------------------------------------------------------------------------ (c)
def test_an_actor_crash_is_retried_once(ray_session, data, fault_plan):
    x_sorted, shards = data
    svc, _ = start(ray_session, num_actors=2, backend="torch")
    try:
        pid = ray_session.get(svc.actors[1].ping.remote())
        fault_plan([{"point": "kmeans_actor", "actor": 1, "method": "partial_sums", "action": "exit"}])  # mid-Lloyd
        (p, stats), (p1, _) = run_ranks(svc.name, 5, shards)
        assert ray_session.get(svc.actors[1].ping.remote()) != pid  # restarted
        assert stats.attempts == 2
        want = hierarchical_kmeans(x_sorted, SIZES, KMeansSettings(niter=10, nredo=2, backend="torch"), epoch=5)
        assert_same(p, want, atol=1e-4)
        assert_same(p, p1, atol=0)
        # the next epoch runs normally on the restarted actor
        (p6, s6), _ = run_ranks(svc.name, 6, shards)
        assert s6.attempts == 1 and p6.epoch == 6
    finally:
        svc.shutdown()


def test_a_second_failure_ends_the_estep_with_a_clear_error(ray_session, data, fault_plan):
    """...and the actor, dead for good (max_restarts=1 used up), is replaced: the next epoch (as after a Train
    worker-group restart) gets its prototypes instead of meeting the dead actor again (issue 18)."""
    _, shards = data
    svc, _ = start(ray_session, num_actors=2)
    try:
        fault_plan([{"point": "kmeans_actor", "actor": 1, "method": "load", "action": "exit", "times": 2}])
        errors = run_ranks(svc.name, 2, shards)
        (p3, s3), _ = run_ranks(svc.name, 3, shards)
    finally:
        svc.shutdown()
    for e in errors:  # every waiting rank gets the same error
        assert isinstance(e, ClusteringFailedError), repr(e)
        assert e.epoch == 2 and e.actor == 1
        assert "epoch 2 failed twice" in str(e) and "K-means actor 1 died" in str(e)
    assert s3.attempts == 2 and p3.epoch == 3  # the dead actor failed the first attempt; its replacement ran
    assert p3.sizes == SIZES and (p3.assignments[:, 0] >= 0).all()


def test_a_killed_idle_actor_is_restarted_for_the_next_epoch(ray_session, data):
    x_sorted, shards = data
    svc, cfg = start(ray_session)
    try:
        run_ranks(svc.name, 0, shards)
        ray_session.kill(svc.actors[0], no_restart=False)
        (p, _), _ = run_ranks(svc.name, 1, shards)
    finally:
        svc.shutdown()
    assert_same(p, expected(cfg, x_sorted, epoch=1))


def test_a_killed_coordinator_comes_back_and_the_estep_completes(ray_session, data):
    """Issue 18: killing the coordinator during an E-step raised ActorDiedError in every worker, and every Train
    worker-group restart met the same dead actor. Now Ray restarts it, the submission that was waiting in it is
    retried there, and the epoch's E-step runs from the workers' shards as if nothing happened."""
    x_sorted, shards = data
    svc, cfg = start(ray_session)
    try:
        with ThreadPoolExecutor(2) as pool:
            ids, x = shards[0]
            first = pool.submit(lambda: connect(svc.name).estep(3, 0, 2, torch.from_numpy(ids), torch.from_numpy(x)))
            deadline = time.monotonic() + 60
            while ray_session.get(svc.coordinator.pending.remote()) != {3: ([0], 2)}:  # rank 0 waits in it
                assert time.monotonic() < deadline and not first.done(), first
                time.sleep(0.05)
            ray_session.kill(svc.coordinator, no_restart=False)
            ids1, x1 = shards[1]
            second = pool.submit(lambda: connect(svc.name).estep(3, 1, 2, torch.from_numpy(ids1),
                                                                 torch.from_numpy(x1)))
            (p0, s0), (p1, _) = first.result(timeout=90), second.result(timeout=90)
    finally:
        svc.shutdown()
    assert s0.attempts == 1
    assert_same(p0, expected(cfg, x_sorted, epoch=3))
    assert_same(p1, p0, atol=0)


# ------------------------------------------------------------------------------------------------ (d)
def test_missing_ids_get_minus_one(ray_session, data):
    x_sorted, _ = data
    rng = np.random.default_rng(2)
    ids = np.sort(rng.choice(500, 480, replace=False))  # 20 of 500 ids were never embedded
    perm = rng.permutation(480)
    shards = [(ids[perm[:300]], x_sorted[perm[:300]]), (ids[perm[300:]], x_sorted[perm[300:]])]
    svc, cfg = start(ray_session, num_rows=500)
    try:
        (p, stats), _ = run_ranks(svc.name, 0, shards)
    finally:
        svc.shutdown()
    assert p.num_samples == 500 and (stats.num_clustered, stats.num_missing) == (480, 20)
    missing = np.setdiff1d(np.arange(500), ids)
    assert (p.assignments[missing] == -1).all()
    assert_same(
        type(p)(centroids=p.centroids, parents=p.parents, phi=p.phi, assignments=p.assignments[ids], epoch=p.epoch),
        expected(cfg, x_sorted, epoch=0),
    )


def test_duplicate_and_out_of_range_ids_are_errors(ray_session, data):
    _, shards = data
    svc, _ = start(ray_session)
    try:
        dup = [shards[0], (np.concatenate([shards[1][0][:-1], shards[0][0][:1]]), shards[1][1])]
        errors = run_ranks(svc.name, 0, dup)
        for e in errors:
            assert isinstance(e, ValueError) and "submitted more than once" in str(e), repr(e)
            assert f"id {shards[0][0][0]} by ranks [0, 1]" in str(e)
        bad = [shards[0], (shards[1][0] + 1000, shards[1][1])]
        for e in run_ranks(svc.name, 1, bad):
            assert isinstance(e, ValueError) and "outside [0, num_rows=480)" in str(e), repr(e)
    finally:
        svc.shutdown()


def test_a_new_round_discards_a_stale_partial_round(ray_session, data):
    x_sorted, shards = data
    svc, cfg = start(ray_session)
    try:
        stale = {}
        ids, x = shards[0]
        t = threading.Thread(target=lambda: stale.update(r=_try(lambda: connect(svc.name).estep(
            4, 0, 2, torch.from_numpy(ids), torch.from_numpy(x)))))
        t.start()  # rank 0 of a 2-worker group that then died: rank 1 never comes
        deadline = time.monotonic() + 30
        while ray_session.get(svc.coordinator.pending.remote()) != {4: ([0], 2)}:
            assert time.monotonic() < deadline, "rank 0's submission never arrived"
            time.sleep(0.05)
        # the restarted group has one worker holding every row
        all_ids = np.concatenate([s[0] for s in shards])
        all_x = np.concatenate([s[1] for s in shards])
        p, _ = connect(svc.name).estep(4, 0, 1, torch.from_numpy(all_ids), torch.from_numpy(all_x))
        t.join(30)
    finally:
        svc.shutdown()
    assert isinstance(stale["r"], ClusteringFailedError) and "discarded" in str(stale["r"])
    assert_same(p, expected(cfg, x_sorted, epoch=4))


def _try(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- handed to the test
        return e


def test_bad_service_arguments(ray_session):
    with pytest.raises(ValueError, match="no clustering service named 'nope' is running"):
        connect("nope")
    with pytest.raises(ValueError, match="method must be 'hcsc' or 'pcl'"):
        ClusteringService.start("x", ClusteringConfig(), ClusteringServiceSection(), method="moco", num_rows=10)
    with pytest.raises(ValueError, match="num_clusters must be positive"):
        ClusteringService.start("x", ClusteringConfig(), ClusteringServiceSection(), method="pcl", pcl_sizes=(0,),
                                num_rows=10)
