"""Hierarchical prototypes: K-means level by level, cluster concentration, the Prototypes tree."""
from hierclr.clustering.concentration import concentration, concentration_from_distances
from hierclr.clustering.hierarchical import hierarchical_kmeans, validate_sizes
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

__all__ = [
    "KMeansResult",
    "Prototypes",
    "assign",
    "compose_assignments",
    "concentration",
    "concentration_from_distances",
    "faiss_has_gpu",
    "hierarchical_kmeans",
    "kmeans",
    "lloyd_partial_sums",
    "nearest_centroid",
    "resolve_backend",
    "update_centroids",
    "validate_sizes",
]
