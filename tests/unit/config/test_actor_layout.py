"""Where the clustering actors go and what every process asks of Ray (``hierclr.config.clustering.actor_layout``):
today's layout on CPU workers, ``service.gpu_share`` on GPU workers, and the refusals of what Ray could never
schedule (no Ray; the placement itself: ``tests/ray/service/test_gpu_placement.py``)."""
from __future__ import annotations

import pytest

from hierclr.config.clustering import ClusteringServiceSection, actor_layout
from hierclr.config.pretrain import load_config
from hierclr.config.sections import ResourcesSection
from hierclr.methods import plan_for
from hierclr.runtime.driver import run_needs

GPU8 = ["resources.use_gpu=true", "resources.num_workers=8", "resources.gpus_per_worker=1",
        "resources.cpus_per_worker=4", "data.num_cpus=48", "service.gpus_per_actor=0", "service.num_actors=null"]


def test_cpu_runs_keep_todays_layout_whatever_gpu_share_says():
    for extra in ([], ["service.gpu_share=0.1"]):
        cfg = load_config("demo", ["resources.num_workers=2", "service.cpus_per_actor=1.5", *extra])
        layout = cfg.actor_layout()
        assert (layout.num_actors, layout.actor_options, layout.worker_gpus, layout.on_worker_gpus) == (
            1, {"num_cpus": 1.5}, 0.0, False)
        assert run_needs(cfg) == (2 * 1 + 1 + 1.5, 0.0)  # 2 workers, 1 data CPU, one 1.5-CPU actor
    whole = actor_layout(ClusteringServiceSection(gpus_per_actor=1, num_actors=2),
                         ResourcesSection(use_gpu=True, num_workers=8))
    assert (whole.num_actors, whole.actor_options, whole.worker_gpus) == (2, {"num_cpus": 0.0, "num_gpus": 1}, 1.0)


def test_gpu_share_puts_one_actor_on_every_training_gpu_inside_its_workers_request():
    cfg = load_config("demo", [*GPU8, "service.gpu_share=0.1"])
    layout = cfg.actor_layout()
    assert layout.num_actors == 8 and layout.on_worker_gpus
    assert layout.actor_options == {"num_cpus": 0.0, "num_gpus": 0.1}
    assert layout.worker_gpus == 0.9  # 1 - 0.1: the worker and its actor hold one GPU together
    assert plan_for(cfg).worker_gpus() == 0.9  # what the driver's ScalingConfig asks per worker
    cpu, gpu = run_needs(cfg)
    assert cpu == 8 * 4 + 48 and gpu == pytest.approx(8.0)  # one 8-GPU node; the actors take no CPU of their own
    # without gpu_share the same run needs a ninth GPU for a whole-GPU actor
    assert run_needs(load_config("demo", [*GPU8, "service.gpus_per_actor=1"]))[1] == 9


@pytest.mark.parametrize(("g", "s", "per_gpu_pairs"), [(1.0, 0.25, 1), (0.5, 0.1, 2), (0.25, 0.05, 4)])
def test_a_worker_and_its_actor_never_ask_more_than_the_workers_gpu(g, s, per_gpu_pairs):
    layout = actor_layout(ClusteringServiceSection(gpu_share=s),
                          ResourcesSection(use_gpu=True, num_workers=8, gpus_per_worker=g))
    assert layout.worker_gpus == pytest.approx(g - s) and layout.actor_gpus == s
    # the workers that share one GPU, each with its actor, fill it at most (Ray never schedules more than 1)
    assert per_gpu_pairs * (layout.worker_gpus + layout.actor_gpus) == pytest.approx(per_gpu_pairs * g)
    assert per_gpu_pairs * (layout.worker_gpus + layout.actor_gpus) <= 1 + 1e-9


def test_fewer_actors_than_workers_may_be_asked_for():
    layout = load_config("demo", [*GPU8, "service.gpu_share=0.1", "service.num_actors=1"]).actor_layout()
    assert layout.num_actors == 1 and layout.worker_gpus == 0.9
    assert run_needs(load_config("demo", [*GPU8, "service.gpu_share=0.1", "service.num_actors=1"]))[1] == (
        pytest.approx(8 * 0.9 + 0.1))


@pytest.mark.parametrize(("overrides", "message"), [
    (["service.gpu_share=1"], "service.gpu_share: Input should be less than 1"),
    (["service.gpu_share=0"], "service.gpu_share: Input should be greater than 0"),
    (["service.gpu_share=0.1", "service.gpus_per_actor=1"], ("service.gpu_share (0.1: actors on the training "
     "workers' GPUs) and service.gpus_per_actor (1: actors on GPUs of their own) exclude each other")),
    (["service.gpu_share=0.12345"], "has more than 4 decimals: Ray rounds GPU requests to 1e-4"),
    (["service.gpu_share=0.1", "resources.gpus_per_worker=2"], ("resources.gpus_per_worker is 2: a worker and its "
     "actor must share one GPU (gpus_per_worker <= 1)")),
    (["service.gpu_share=0.5", "resources.gpus_per_worker=0.5"], ("service.gpu_share (0.5) must be smaller than "
     "resources.gpus_per_worker (0.5)")),
    (["service.gpu_share=0.1", "service.num_actors=9"], ("service.num_actors (9) > resources.num_workers (8): with "
     "service.gpu_share each K-means actor takes the share of one training worker's GPU; at most 8 actors")),
])
def test_combinations_ray_could_never_schedule_are_refused_on_load(overrides, message):
    with pytest.raises(ValueError) as e:
        load_config("demo", [*GPU8, *overrides])
    assert message in str(e.value)


def test_moco_starts_no_actor_and_ignores_the_service():
    cfg = load_config("demo", [*GPU8, "method=moco", "service.gpu_share=0.1", "service.num_actors=9"])
    assert plan_for(cfg).worker_gpus() == 1.0 and run_needs(cfg) == (8 * 4 + 48, 8.0)


@pytest.mark.parametrize("preset", ["imagenet-r50-200ep", "imagenet-r50-multicrop"])
def test_the_imagenet_presets_fit_one_8_gpu_node_and_a_laptop(preset):
    cfg = load_config(preset)
    assert cfg.service.gpu_share == 0.1 and cfg.resources.gpus_per_worker == 1 and cfg.service.num_actors == 1
    assert run_needs(cfg)[1] == pytest.approx(8 * 0.9 + 0.1)  # 8 workers at 0.9 + one actor at 0.1: 8 GPUs hold it
    layout = cfg.actor_layout()
    assert layout.on_worker_gpus and layout.worker_gpus + layout.actor_gpus <= 1
    laptop = load_config(preset, ["resources.use_gpu=false", "service.num_actors=1", "service.cpus_per_actor=0"])
    assert laptop.actor_layout().actor_options == {"num_cpus": 0} and run_needs(laptop)[1] == 0.0
