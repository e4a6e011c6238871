"""KMeansSettings: one object passed whole reaches faiss unchanged; the config section is one."""
import faiss
import numpy as np
import pydantic
import pytest
import torch

from hierclr.clustering import KMeansSettings, hierarchical_kmeans, kmeans
from hierclr.config.clustering import ClusteringConfig


def direct_faiss(x, k, s: KMeansSettings):
    """The reference: faiss's own Python K-means with the same settings, no hierclr in between."""
    km = faiss.Kmeans(
        x.shape[1], k, niter=s.niter, nredo=s.nredo, seed=s.seed, spherical=False,
        max_points_per_centroid=s.max_points_per_centroid, min_points_per_centroid=s.min_points_per_centroid,
    )
    km.train(x)
    _, idx = km.index.search(x, 1)
    return km.centroids, idx[:, 0]


@pytest.mark.parametrize(
    "settings",
    [
        KMeansSettings(backend="faiss"),
        KMeansSettings(backend="faiss", niter=3, nredo=1, seed=11),
        KMeansSettings(backend="faiss", niter=7, nredo=3, seed=2, max_points_per_centroid=20, min_points_per_centroid=2),
    ],
    ids=["defaults", "niter3-nredo1-seed11", "subsampled"],
)
def test_settings_reach_faiss(rng, settings):
    x = rng.standard_normal((600, 6)).astype(np.float32)  # no structure: every setting changes the result
    got = kmeans(x, 10, settings)
    cent, idx = direct_faiss(x, 10, settings)
    np.testing.assert_array_equal(got.centroids, cent)
    np.testing.assert_array_equal(got.assignments, idx)


def test_each_setting_changes_the_result(rng):
    x = rng.standard_normal((600, 6)).astype(np.float32)
    base = KMeansSettings(backend="faiss", niter=5, nredo=1, seed=0)
    ref = kmeans(x, 10, base).centroids
    for update in ({"niter": 6}, {"nredo": 5}, {"seed": 1}, {"max_points_per_centroid": 30}):
        changed = kmeans(x, 10, base.model_copy(update=update)).centroids
        assert not np.array_equal(changed, ref), update


def test_settings_validate_and_are_frozen():
    with pytest.raises(pydantic.ValidationError, match="niter"):
        KMeansSettings(niter=0)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        KMeansSettings(sizes=(3, 2))  # sizes belong to the config section, not to K-means
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        KMeansSettings().niter = 3
    assert KMeansSettings(device=torch.device("cpu")).device == "cpu"


def test_clustering_config_is_the_settings_plus_sizes_and_features(planted):
    cfg = ClusteringConfig(sizes=(20, 5), nredo=1, seed=3, temperature=0.3)
    assert isinstance(cfg, KMeansSettings)
    # the run-level choices: the hierarchy's sizes and which features the E-step clusters
    assert set(ClusteringConfig.model_fields) == set(KMeansSettings.model_fields) | {"sizes", "features"}
    assert cfg.features == "embed_pass"
    for name, field in KMeansSettings.model_fields.items():
        assert ClusteringConfig.model_fields[name].default == field.default, name
    points, _ = planted
    a = hierarchical_kmeans(points, cfg.sizes, cfg)
    b = hierarchical_kmeans(points, cfg.sizes, KMeansSettings(nredo=1, seed=3, temperature=0.3))
    for x, y in zip(a.centroids + a.phi + a.parents, b.centroids + b.phi + b.parents):
        assert torch.equal(x, y)
    assert torch.equal(a.assignments, b.assignments)
