"""Start or join Ray the same way from every entry point.

Under ``ray job submit`` (``RAY_ADDRESS`` set) or inside a Ray worker we join the running cluster and
must not pass resources; on a laptop or CI we start a local instance with an explicit CPU count,
because Ray on a small machine otherwise waits forever for resources that are not there.
"""
from __future__ import annotations

import os

# Ray Train's settings for a Ray this process starts on its own machine (read by the driver at ``fit()`` and passed
# on to Train's controller and workers; a value the user set is kept):
# - the controller polls its workers every 0.5 s instead of 2 s: a run's end (and each worker-group transition) is
#   noticed sooner; polling a handful of local workers costs nothing;
# - no preemption watcher actor per run (one more process on a small machine): a local Ray is one node that no
#   autoscaler drains.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def use_local_train_env() -> None:
    """Set :data:`LOCAL_TRAIN_ENV` in this process's environment, keeping what the user set."""
    for key, value in LOCAL_TRAIN_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(num_cpus: int | None = None, **kwargs) -> None:
    import ray

    from hierclr.runtime.console import ray_runtime_env

    if ray.is_initialized():
        return
    kwargs = {"runtime_env": ray_runtime_env(), **kwargs}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        # The dashboard (on when ray[default] is installed) serves the State API, without which Ray Train's
        # placement-group cleaner cannot tell that a killed run's controller is gone and leaves its workers'
        # placement group behind; it also gives the local run the usual UI at http://127.0.0.1:8265.
        # address="local": always a new local instance with these CPUs. Without it ray.init joins any cluster
        # that `ray start` left running on this machine and then refuses num_cpus (join one on purpose with
        # resources.address=auto).
        use_local_train_env()
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


# Actors and tasks hierclr starts itself (clustering actors, the epoch clock, data listing tasks) take their own
# resources. An explicit "DEFAULT" strategy keeps them out of a caller's placement group: inside a Ray Tune
# trial every child would otherwise be captured into the trial's tiny bundle and never schedule.
OWN_RESOURCES = "DEFAULT"
