"""The MLflow artifacts that let the UI answer the questions users ask of a prototype hierarchy.

* per E-step (rank 0): ``hierarchy/epoch_<e>/tree.json`` (parents, members, phi per level) and
  ``hierarchy/epoch_<e>/cluster_sizes.png`` (per-level histograms of cluster sizes);
* every epoch (rank 0): ``plots/learning_curves.png`` and, with labels, ``plots/ami.png`` and
  ``plots/selection_quality.png`` (overwritten, so an ASHA-stopped trial still has them);
* at the end (driver): the final tree and histograms under ``hierarchy/final/`` and image grids of prototype
  chains from the finest to the coarsest level (paper Fig. 3/6) under ``hierarchy/chains/``.

Each writer is best-effort: a plotting failure logs a warning and never stops training.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _safe(what: str):
    def wrap(fn):
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - an artifact must never stop a training run
                log.warning("could not write the %s artifact: %s", what, err)
                return None
        inner.__doc__ = fn.__doc__
        return inner
    return wrap


@_safe("prototype hierarchy")
def log_hierarchy(tracker, protos, folder: str) -> None:
    """The tree as JSON and the per-level cluster-size histograms under ``folder`` (e.g. ``hierarchy/epoch_003``)."""
    from hierclr.viz.plots import cluster_size_histograms
    from hierclr.viz.tree import prototype_tree

    if tracker is None or not tracker.enabled or protos is None:
        return
    protos = protos.to("cpu")  # once: on a GPU run the assignments are N x L
    tracker.log_dict(prototype_tree(protos), f"{folder}/tree.json")
    with tempfile.TemporaryDirectory() as tmp:
        cluster_size_histograms(protos, Path(tmp, "cluster_sizes.png"), title="cluster sizes")  # + the epoch
        tracker.log_artifact(Path(tmp, "cluster_sizes.png"), folder)


@_safe("learning curves")
def log_curves(tracker, history: list[dict]) -> None:
    """Learning curves (losses, kNN, lr) and, when measured, AMI per label level and the precision / recall of
    ICSC's dropped false negatives per level (paper Fig. 5) versus epoch."""
    from hierclr.viz.plots import ami_curves, learning_curves, selection_quality_curves

    if tracker is None or not tracker.enabled or not history:
        return
    with tempfile.TemporaryDirectory() as tmp:
        learning_curves(history, Path(tmp, "learning_curves.png"))
        if any(k.startswith("prototypes/ami/") for row in history for k in row):
            ami_curves(history, Path(tmp, "ami.png"))
        if any(k.startswith("selection/") for row in history for k in row):
            selection_quality_curves(history, Path(tmp, "selection_quality.png"))
        tracker.log_artifact(tmp, "plots")


@_safe("prototype chain grids")
def log_chains(tracker, protos, source, *, num_chains: int, seed: int) -> None:
    """Images of the members of ``num_chains`` chains of prototypes, finest level at the top."""
    from hierclr.viz.chains import chain_grid

    if tracker is None or not tracker.enabled or protos is None or num_chains <= 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        chain_grid(protos.to("cpu"), source, Path(tmp, "chains.png"), num_chains=num_chains, seed=seed)
        tracker.log_artifact(tmp, "hierarchy/chains")
