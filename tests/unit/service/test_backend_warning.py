"""``compat: official`` warns when the E-step will not run faiss (issue 17 item 9); no Ray is started."""
import warnings

import pytest

from hierclr.clustering.kmeans import non_faiss_reason
from hierclr.config.clustering import ClusteringConfig
from hierclr.service.actors import ClusteringJob, warn_if_not_official


def job(compat="official", **clustering):
    return ClusteringJob(clustering=ClusteringConfig(**clustering), method="hcsc", pcl_sizes=(), num_rows=10,
                         compat=compat)


def test_reasons():
    assert non_faiss_reason(ClusteringConfig()) is None  # auto on the CPU: faiss
    assert non_faiss_reason(ClusteringConfig(backend="faiss")) is None
    assert "'torch'" in non_faiss_reason(ClusteringConfig(backend="torch"))
    assert "distributed Lloyd" in non_faiss_reason(ClusteringConfig(), distributed=True)


def test_official_compat_warns_on_the_torch_backend():
    j = job(backend="torch")
    with pytest.warns(UserWarning, match="compat: official, but clustering.backend is 'torch'"):
        text = warn_if_not_official(j, j.clustering, distributed=False)
    assert "clustering.backend=faiss" in text
    with pytest.warns(UserWarning, match="distributed Lloyd"):
        warn_if_not_official(job(), job().clustering, distributed=True)


def test_no_warning_on_faiss_or_under_paper_compat():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_not_official(job(), job().clustering, distributed=False) is None
        p = job("paper", backend="torch")
        assert warn_if_not_official(p, p.clustering, distributed=True) is None
