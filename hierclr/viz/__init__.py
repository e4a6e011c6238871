"""Pictures and plain-data views of training: the prototype tree, learning curves, sweep plots, prototype chains,
t-SNE maps of features.

Plots draw on a :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot global state), so they
are safe inside Ray workers and threads.
"""

from hierclr.viz.chains import chain_grid, chain_members, pick_chains
from hierclr.viz.embedding import embedding_plot
from hierclr.viz.plots import ami_curves, cluster_size_histograms, image_grid, learning_curves, metric_vs_params
from hierclr.viz.tree import prototype_tree

__all__ = [
    "ami_curves",
    "chain_grid",
    "chain_members",
    "cluster_size_histograms",
    "embedding_plot",
    "image_grid",
    "learning_curves",
    "metric_vs_params",
    "pick_chains",
    "prototype_tree",
]
