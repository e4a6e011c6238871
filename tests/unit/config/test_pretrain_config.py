"""The pretraining config: presets, ``--set`` overrides, validation messages, compat, lr scaling, YAML I/O."""
from __future__ import annotations

import math

import pytest
import yaml

from hierclr.config.loader import PRESET_DIR, apply_override, flatten, list_presets
from hierclr.config.pretrain import PretrainConfig, load_config
from hierclr.config.sections import OptimSection

EXPECTED_PRESETS = {"demo", "cifar100-r18", "imagenet-r50-200ep", "imagenet-r50-multicrop", "imagenet-r50-moco"}


# ------------------------------------------------------------------------------------------- presets
def test_list_presets_names_every_yaml_in_the_preset_dir():
    presets = list_presets()
    assert presets == sorted(presets)
    assert set(presets) == {p.stem for p in PRESET_DIR.glob("*.yaml")}
    assert EXPECTED_PRESETS <= set(presets)


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, PretrainConfig)
    assert cfg.name == name  # each preset names its runs after itself
    # the global batch splits over the workers and the queue holds whole global batches
    assert cfg.optim.batch_size % cfg.resources.num_workers == 0
    assert cfg.model.queue_size % cfg.optim.batch_size == 0
    # the preset's file values made it into the tree (not silently replaced by defaults)
    raw = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
    for section in ("data", "model", "optim"):
        for key, value in (raw.get(section) or {}).items():
            got = getattr(getattr(cfg, section), key)
            assert (list(got) if isinstance(got, tuple) else got) == value, (section, key)


def test_demo_preset_values():
    cfg = load_config("demo")
    assert cfg.method == "hcsc"
    assert cfg.clustering.sizes == (32, 16, 8)
    assert cfg.resources.num_workers == 2
    assert cfg.optim.batch_size == 64 and cfg.optim.base_lr == pytest.approx(0.12)
    assert cfg.optim.lr == pytest.approx(0.12 * 64 / 256)  # 0.03, as the preset's comment says
    assert cfg.eval.ks == (10, 20)


def test_official_imagenet_preset_is_the_official_recipe():
    cfg = load_config("imagenet-r50-200ep")
    assert cfg.compat == "official"
    assert cfg.model.backbone == "resnet50" and cfg.model.queue_size == 16384 and cfg.model.momentum == 0.999
    assert cfg.clustering.sizes == (3000, 2000, 1000)
    assert cfg.optim.epochs == 200 and cfg.optim.batch_size == 256
    assert cfg.optim.lr == pytest.approx(0.03)
    assert cfg.loss.warmup_epochs == 20
    assert cfg.data.transforms == "imagenet"
    # official compat keeps the reference code's choices
    assert cfg.loss.negative_drop == "zero" and cfg.loss.instance_level_reduction == "sum"
    assert cfg.clustering.min_cluster_size == 0


def test_moco_preset_is_moco_v2_with_its_queue():
    cfg = load_config("imagenet-r50-moco")
    assert cfg.method == "moco" and not cfg.uses_clustering
    assert cfg.model.backbone == "resnet50" and cfg.model.queue_size == 65536 and cfg.model.momentum == 0.999
    assert cfg.loss.temperature == 0.2 and cfg.optim.lr == pytest.approx(0.03) and cfg.optim.epochs == 200
    assert cfg.optim.schedule == "cosine" and cfg.optim.batch_size == 256


def test_multicrop_preset_inherits_from_its_base():
    base = load_config("imagenet-r50-200ep")
    mc = load_config("imagenet-r50-multicrop")
    assert mc.name == "imagenet-r50-multicrop"
    assert mc.data.transforms == "imagenet_multicrop"
    assert mc.data.num_cpus == 64  # its own override
    assert mc.clustering.sizes == (3000, 2000, 1000)  # from the base
    # everything it does not override is the base's, down to the nested leaves of an overridden section
    assert mc.data.train == base.data.train and mc.data.val == base.data.val
    assert mc.data.decode_batch_size == base.data.decode_batch_size
    assert mc.model == base.model and mc.optim == base.optim and mc.loss == base.loss
    assert mc.resources == base.resources and mc.checkpoint == base.checkpoint
    local = mc.data.transform_config().train.local_crops  # 4 local crops (the comment's recipe), 2 globals
    assert sorted((c.size for c in local), reverse=True) == [192, 160, 128, 96]
    assert base.data.transform_config().train.local_crops == ()


def test_no_source_gives_defaults():
    assert load_config() == PretrainConfig()


# ------------------------------------------------------------------------------------------ overrides
def test_overrides_parse_yaml_values():
    cfg = load_config("demo", [
        "optim.epochs=7",                  # int
        "clustering.sizes=[100,50]",       # list
        "data.val=null",                   # null
        "optim.amp=true",                  # bool
        "tracking.enabled=false",
        "name=my-run",                     # string
        "optim.base_lr=0.5",               # float
        "model.hidden_dim=",               # empty value: None
    ])
    assert cfg.optim.epochs == 7 and isinstance(cfg.optim.epochs, int)
    assert cfg.clustering.sizes == (100, 50)
    assert cfg.data.val is None
    assert cfg.optim.amp is True and cfg.tracking.enabled is False
    assert cfg.name == "my-run"
    assert cfg.optim.base_lr == 0.5
    assert cfg.model.hidden_dim is None
    # untouched leaves keep the preset's values
    assert cfg.data.train == "builtin://digits/train"


def test_apply_override_creates_missing_sections_and_only_sets_one_leaf():
    tree: dict = {"optim": {"epochs": 3, "batch_size": 64}}
    out = apply_override(tree, "optim.epochs=11")
    assert out is tree
    assert tree == {"optim": {"epochs": 11, "batch_size": 64}}
    apply_override(tree, "a.b.c=[1, 2]")
    assert tree["a"] == {"b": {"c": [1, 2]}}
    apply_override(tree, "x=hello=world")  # only the first '=' splits
    assert tree["x"] == "hello=world"
    # a section set to null is replaced by a fresh section
    tree["loss"] = None
    apply_override(tree, "loss.warmup_epochs=2")
    assert tree["loss"] == {"warmup_epochs": 2}


def test_override_on_defaults_creates_the_section():
    cfg = load_config(None, ["loss.warmup_epochs=3", "pcl.num_clusters=[8, 4]"])
    assert cfg.loss.warmup_epochs == 3
    assert cfg.pcl.num_clusters == (8, 4)


@pytest.mark.parametrize("bad, fragment", [
    ("optim.epochs", "key=value"),
    ("optim..epochs=3", "bad key"),
    ("=3", "bad key"),
    ("optim.epochs=[1, 2", "not valid YAML"),
])
def test_bad_override_syntax(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        apply_override({}, bad)


def test_override_through_a_value_is_an_error():
    with pytest.raises(ValueError, match="'epochs' is a value, not a section"):
        apply_override({"optim": {"epochs": 3}}, "optim.epochs.x=1")


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override, field", [
    ("optim.batch_size=abc", "optim.batch_size"),
    ("optim.batch_size=0", "optim.batch_size"),
    ("clustering.sizes=[10,50]", "clustering.sizes"),
    ("clustering.sizes=[]", "clustering.sizes"),
    ("optim.bogus=1", "optim.bogus"),
    ("method=simclr", "method"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("data.max_bad_fraction=2", "data.max_bad_fraction"),
    ("pcl.num_clusters=[0]", "pcl.num_clusters"),
    ("model.backbone=vit", "model.backbone"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ValueError) as info:
        load_config("demo", [override])
    msg = str(info.value)
    assert "invalid config demo" in msg
    assert f"  {field}:" in msg, msg


def test_several_errors_are_all_reported():
    with pytest.raises(ValueError) as info:
        load_config(None, ["optim.epochs=0", "eval.temperature=-1"])
    msg = str(info.value)
    assert "optim.epochs:" in msg and "eval.temperature:" in msg


def test_batch_must_divide_over_workers():
    with pytest.raises(ValueError, match=r"optim.batch_size \(256\) must be divisible by resources.num_workers \(3\)"):
        load_config(None, ["resources.num_workers=3"])
    ok = load_config(None, ["resources.num_workers=4"])
    assert ok.optim.batch_size // ok.resources.num_workers == 64


def test_queue_must_be_a_multiple_of_the_global_batch():
    with pytest.raises(ValueError, match=r"model.queue_size \(1000\) must be a multiple of the global batch"):
        load_config(None, ["model.queue_size=1000"])
    with pytest.raises(ValueError, match="queue_size"):
        load_config("demo", ["optim.batch_size=96"])  # 1024 % 96 != 0 (and 96 % 2 == 0)
    assert load_config("demo", ["optim.batch_size=128"]).model.queue_size == 1024


# --------------------------------------------------------------------------------------------- compat
def test_compat_paper_switches_the_documented_differences():
    cfg = load_config(None, ["compat=paper"])
    assert cfg.compat == "paper"
    assert cfg.loss.negative_drop == "remove"
    assert cfg.loss.instance_level_reduction == "mean"
    assert cfg.clustering.min_cluster_size == 10
    # the other leaves of those sections keep their defaults
    default = PretrainConfig()
    assert cfg.loss.warmup_epochs == default.loss.warmup_epochs
    assert cfg.clustering.sizes == default.clustering.sizes


def test_compat_paper_keeps_explicit_settings():
    cfg = load_config(None, ["compat=paper", "loss.negative_drop=zero", "clustering.min_cluster_size=3"])
    assert cfg.loss.negative_drop == "zero"  # explicit wins
    assert cfg.loss.instance_level_reduction == "mean"  # the unset switch still follows compat
    assert cfg.clustering.min_cluster_size == 3


def test_compat_paper_from_a_file_keeps_the_files_sections(tmp_path):
    f = tmp_path / "paper.yaml"
    f.write_text("base: demo\ncompat: paper\nloss:\n  instance_level_reduction: sum\nclustering:\n  sizes: [20, 10]\n")
    cfg = load_config(f)
    assert cfg.loss.instance_level_reduction == "sum"
    assert cfg.loss.negative_drop == "remove"
    assert cfg.loss.warmup_epochs == 1  # from the demo base
    assert cfg.clustering.sizes == (20, 10) and cfg.clustering.min_cluster_size == 10
    assert cfg.clustering.nredo == 2  # from the demo base


def test_compat_official_changes_nothing():
    assert load_config(None, ["compat=official"]).loss == PretrainConfig().loss


# ------------------------------------------------------------------------------------------------ lr
@pytest.mark.parametrize("base_lr, batch", [(0.03, 256), (0.03, 512), (0.06, 256), (0.12, 64), (0.5, 1)])
def test_lr_is_linearly_scaled_by_batch(base_lr, batch):
    optim = OptimSection(base_lr=base_lr, batch_size=batch)
    assert math.isclose(optim.lr, base_lr * batch / 256, rel_tol=1e-12)


def test_official_recipe_lr():
    assert OptimSection().lr == pytest.approx(0.03)  # defaults: base 0.03, batch 256
    assert OptimSection(batch_size=1024).lr == pytest.approx(0.12)


# ------------------------------------------------------------------------------------------ files I/O
def test_yaml_file_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nmethod: moco\noptim:\n  epochs: 5\n  batch_size: 32\nmodel:\n  queue_size: 64\n")
    cfg = load_config(str(f), ["optim.epochs=6"])
    assert cfg.name == "mine" and cfg.method == "moco"
    assert cfg.optim.epochs == 6 and cfg.optim.batch_size == 32 and cfg.model.queue_size == 64
    assert load_config(f).optim.epochs == 5  # a Path works too


def test_empty_yaml_file_is_all_defaults(tmp_path):
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing\n")
    assert load_config(f) == PretrainConfig()


def test_non_mapping_yaml_is_rejected(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping, got list"):
        load_config(f)


def test_invalid_yaml_is_rejected(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("optim: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(f)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError) as info:
        load_config("no-such-preset")
    msg = str(info.value)
    assert "'no-such-preset' is neither a file nor a preset" in msg
    for name in EXPECTED_PRESETS:
        assert name in msg


def test_flatten_produces_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    assert flatten(3, "x") == {"x": 3}
    flat = flatten(load_config("demo"))
    assert flat["optim.batch_size"] == 64
    assert flat["clustering.sizes"] == [32, 16, 8]  # sequences stay values
    assert flat["name"] == "demo"
    assert flat["data.hierarchy"] is None
    assert all(not isinstance(v, dict) for v in flat.values())
    # one key per leaf of the dumped tree
    dumped = load_config("demo").model_dump(mode="json")
    assert len(flat) == sum(len(v) if isinstance(v, dict) else 1 for v in dumped.values())


@pytest.mark.parametrize("source, overrides", [
    ("demo", ()),
    ("imagenet-r50-multicrop", ()),
    ("cifar100-r18", ("compat=paper", "method=pcl", "pcl.num_negatives=null", "data.val=null")),
])
def test_to_yaml_round_trips(tmp_path, source, overrides):
    cfg = load_config(source, list(overrides))
    f = tmp_path / "resolved.yaml"
    f.write_text(cfg.to_yaml())
    again = load_config(f)
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()
    assert "base" not in yaml.safe_load(f.read_text())  # the resolved tree, not the preset chain


def test_compat_paper_is_one_rule_wherever_a_config_is_built():
    """The rule is a validator of PretrainConfig, so configs built in code, by a sweep trial or re-validated in a
    worker from their JSON dump get it too, and re-validation keeps explicit values."""
    built = PretrainConfig(compat="paper", loss={"negative_drop": "zero"})
    assert built.loss.negative_drop == "zero" and built.loss.instance_level_reduction == "mean"
    assert built.clustering.min_cluster_size == 10
    again = PretrainConfig.model_validate(built.model_dump(mode="json"))
    assert again == built
    assert PretrainConfig(compat="official").loss.negative_drop == "zero"
