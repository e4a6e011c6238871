"""Hierarchical prototypes: K-means level by level, cluster concentration, the Prototypes tree."""
from hierclr.clustering.concentration import concentration, concentration_from_distances
from hierclr.clustering.distributed import (
    FeatureShards,
    LocalShards,
    distributed_hierarchical_kmeans,
    distributed_kmeans,
    distributed_level0,
    expand_to_ids,
    reduce_partial_sums,
)
from hierclr.clustering.flat import flat_multi_kmeans, flat_prototypes, majority_parents, validate_num_clusters
from hierclr.clustering.hierarchical import (
    build_hierarchy,
    drop_small_clusters,
    hierarchical_kmeans,
    level0_kmeans,
    prepare_features,
    validate_sizes,
)
from hierclr.clustering.kmeans import (
    KMeansResult,
    assign,
    faiss_has_gpu,
    kmeans,
    lloyd_partial_sums,
    nearest_centroid,
    resolve_backend,
    update_centroids,
)
from hierclr.clustering.prototypes import Prototypes, compose_assignments
from hierclr.clustering.settings import KMeansSettings

__all__ = [
    "FeatureShards",
    "KMeansResult",
    "KMeansSettings",
    "LocalShards",
    "Prototypes",
    "assign",
    "build_hierarchy",
    "compose_assignments",
    "concentration",
    "concentration_from_distances",
    "distributed_hierarchical_kmeans",
    "distributed_kmeans",
    "distributed_level0",
    "drop_small_clusters",
    "expand_to_ids",
    "faiss_has_gpu",
    "flat_multi_kmeans",
    "flat_prototypes",
    "hierarchical_kmeans",
    "kmeans",
    "level0_kmeans",
    "lloyd_partial_sums",
    "majority_parents",
    "nearest_centroid",
    "prepare_features",
    "reduce_partial_sums",
    "resolve_backend",
    "update_centroids",
    "validate_num_clusters",
    "validate_sizes",
]
