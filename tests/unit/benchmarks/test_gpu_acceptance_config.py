"""The GPU acceptance script's end-to-end overrides are valid configs of the commands it runs (smoke and GPU),
checked without Ray: a renamed config field fails here, not on the lent GPU."""
import pytest
from helpers.benchmark_scripts import load_benchmark

from hierclr.config.evaluate import load_evaluate_config
from hierclr.config.pretrain import load_config


@pytest.fixture(scope="module")
def acceptance():
    return load_benchmark("gpu_acceptance")


@pytest.mark.parametrize("smoke", [True, False])
def test_end_to_end_overrides_load(acceptance, tmp_path, smoke):
    pretrain, evaluate = acceptance.e2e_overrides(smoke, tmp_path / "shards", f"sqlite:///{tmp_path}/m.db", tmp_path)
    cfg = load_config("demo", pretrain)
    assert cfg.optim.epochs == 2 and cfg.loss.warmup_epochs == 1 and cfg.resources.num_workers == 1
    assert cfg.resources.use_gpu is (not smoke) and cfg.data.train == str(tmp_path / "shards" / "train")
    ev = load_evaluate_config("digits", [f"source={tmp_path / 'runs'}", *evaluate])
    assert ev.model.backbone == cfg.model.backbone  # evaluate builds the trunk the pretrain trained
    assert ev.resources.use_gpu is (not smoke)
