"""The E-step clustering service (see :mod:`hierclr.service.clustering_service`)."""
from hierclr.service.clustering_service import (
    ClusteringClient,
    ClusteringFailedError,
    ClusteringService,
    EStepStats,
    LevelStats,
    connect,
)

__all__ = ["ClusteringClient", "ClusteringFailedError", "ClusteringService", "EStepStats", "LevelStats", "connect"]
