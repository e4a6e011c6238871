"""Where the pool's K-means actors go (no Ray started): today's actors anywhere outside any caller's placement
group; with ``service.gpu_share`` pinned to their rank's node, and started by the coordinator at the first E-step
(after the workers hold their GPUs), replacements on the same rank's node."""
from __future__ import annotations

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hierclr.config.clustering import ClusteringServiceSection, actor_layout
from hierclr.config.sections import ResourcesSection
from hierclr.service.actors import ActorSpec, kmeans_actor_options
from hierclr.service.coordinator import EStepCoordinator
from hierclr.service.stats import EStepStats

NODE_A, NODE_B = "a1" * 28, "b2" * 28  # Ray node ids are 28-byte hex strings


def spec(layout) -> ActorSpec:
    return ActorSpec(name="svc", resources=dict(layout.actor_options), max_restarts=1, num_threads=1,
                     on_worker_gpus=layout.on_worker_gpus)


def test_todays_actors_take_their_own_resources_anywhere():
    s = spec(actor_layout(ClusteringServiceSection(cpus_per_actor=2)))
    assert kmeans_actor_options(s, 1) == {"max_restarts": 1, "name": "svc-kmeans-1", "num_cpus": 2.0,
                                          "scheduling_strategy": "DEFAULT"}
    assert kmeans_actor_options(s, 1, generation=2)["name"] == "svc-kmeans-1-r2"


def test_shared_gpu_actors_are_pinned_to_their_ranks_node():
    layout = actor_layout(ClusteringServiceSection(gpu_share=0.1),
                          ResourcesSection(use_gpu=True, num_workers=4, gpus_per_worker=1))
    s = spec(layout)
    opts = kmeans_actor_options(s, 3, node_id=NODE_B)
    where = opts.pop("scheduling_strategy")
    assert isinstance(where, NodeAffinitySchedulingStrategy) and where.node_id == NODE_B and not where.soft
    assert opts == {"max_restarts": 1, "name": "svc-kmeans-3", "num_cpus": 0.0, "num_gpus": 0.1}

    coord = EStepCoordinator([], job=None, max_restarts=1, spec=s, num_actors=layout.num_actors)
    started = []
    coord._place_actors = lambda epoch: started.append(epoch)  # Ray is not started here
    coord._attempt = lambda epoch, refs, attempt: ("protos", EStepStats(
        epoch=epoch, num_rows=4, num_clustered=4, num_missing=0, num_actors=4, attempts=attempt, gather_s=0.0,
        cluster_s=0.0, total_s=0.0, levels=[]))
    nodes = [NODE_A, NODE_A, NODE_B, NODE_B]
    assert coord._estep(5, ["r0", "r1", "r2", "r3"], submitted_at=0.0, nodes=nodes)[0] == ["protos"]
    assert started == [5]  # no actor before the first E-step, when every worker has submitted from its node
    assert [coord._node_of(i) for i in range(4)] == nodes  # actor i (and its replacement) on rank i's node


def test_todays_coordinator_starts_nothing_itself():
    layout = actor_layout(ClusteringServiceSection(num_actors=2))
    coord = EStepCoordinator([], job=None, max_restarts=1, spec=spec(layout), num_actors=2)
    coord._nodes = [NODE_A, NODE_B]
    assert coord._node_of(0) is None  # not pinned: the driver started them, anywhere
