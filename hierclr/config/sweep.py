"""The search-space file of ``hierclr sweep``: which pretraining config to start from and what to vary.

A sweep file is YAML::

    name: hier-sizes                 # Tune experiment, MLflow experiment and sweep directory name
    command: pretrain                # what every trial runs: pretrain | finetune | hcal
    base: cifar100-r18               # preset (of that command) or config file every trial starts from
    set: {optim.epochs: 50}          # dotted overrides of the base, applied to every trial
    metric: knn/top1_best            # what ASHA and "best" read (any per-epoch metric)
    mode: max
    scope: last                      # how a trial is scored: last | all | avg | last-5-avg | last-10-avg (Tune's)
    num_samples: 1                   # samples per grid point (random choices are redrawn for each)
    max_concurrent_trials: 2
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    space:
      clustering.sizes: {grid: [[3000, 2000, 1000], [1000, 500, 200], [3000, 2000, 1000, 500], [6000]]}
      loss.temperature: {choice: [0.1, 0.2]}
      clustering.temperature: {loguniform: [0.05, 0.5]}

Space keys are dotted fields of the command's config (:class:`~hierclr.config.pretrain.PretrainConfig`,
:class:`~hierclr.config.supervised.SupervisedConfig` for finetune / hcal); ``hierarchy.sizes`` is accepted
as an alias of ``clustering.sizes`` (the paper's word). Each value is one of ``grid`` (every value, crossed
with the other grids), ``choice`` (one drawn per trial), ``uniform``/``loguniform`` ``[low, high]``,
``randint`` ``[low, high)`` or ``value`` (fixed). Every listed value is validated against the config before
Ray starts, so a typo fails in the first second, not in trial 7.
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from hierclr.config.jobs import JOBS, Command, Job
from hierclr.config.loader import SWEEP_PRESET_DIR, Section, apply_override, describe, read_mapping, read_yaml
from hierclr.config.pretrain import PretrainConfig

SWEEP_DIR = SWEEP_PRESET_DIR

Scope = Literal["last", "all", "avg", "last-5-avg", "last-10-avg"]
ALIASES = {"hierarchy.sizes": "clustering.sizes", "hierarchy.temperature": "clustering.temperature"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class Dimension(Section):
    """One swept config field: exactly one of the sampling kinds."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    value: Any = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("grid", "choice", "uniform", "loguniform", "randint", "value")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint, value (got "
                             f"{', '.join(kinds) or 'none'})")
        for k in ("grid", "choice"):
            if getattr(self, k) is not None and not getattr(self, k):
                raise ValueError(f"{k} needs at least one value")
        for k in ("uniform", "loguniform", "randint"):
            lo_hi = getattr(self, k)
            if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{k}: low must be below high, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs positive bounds, got {list(self.loguniform)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint", "value")
                    if getattr(self, k) is not None)

    def candidates(self) -> list[Any]:
        """Values to validate up front (both bounds of a range)."""
        kind = self.kind
        if kind in ("grid", "choice"):
            return list(getattr(self, kind))
        if kind == "value":
            return [self.value]
        lo, hi = getattr(self, kind)
        return [lo, hi - 1] if kind == "randint" else [lo, hi]

    def to_tune(self):
        from ray import tune

        kind = self.kind
        if kind == "grid":
            return tune.grid_search(list(self.grid))
        if kind == "choice":
            return tune.choice(list(self.choice))
        if kind == "uniform":
            return tune.uniform(*self.uniform)
        if kind == "loguniform":
            return tune.loguniform(*self.loguniform)
        if kind == "randint":
            return tune.randint(*self.randint)
        return self.value

    def describe(self) -> str:
        kind = self.kind
        return f"{kind} {getattr(self, kind)!r}" if kind != "value" else repr(self.value)


class SchedulerSection(Section):
    type: Literal["asha", "fifo"] = "asha"
    time_attr: str = Field("epochs_done", description="progress measure ASHA compares (epochs completed)")
    grace_period: int | None = Field(None, ge=1, description="epochs every trial gets before it can be stopped "
                                     "(default: one more than the trials' warm-up epochs, so that every trial's "
                                     "clustering has acted at the first rung; 1 without warm-up)")
    reduction_factor: float = Field(2.0, gt=1)
    brackets: int = Field(1, ge=1)
    max_t: int | None = Field(None, ge=1, description="default: the base config's optim.epochs")


class SweepConfig(Section):
    """A validated sweep: the base pretraining config, the space, Tune's options."""

    name: str = "sweep"
    command: Command = Field("pretrain", description="what each trial runs: pretrain, finetune or hcal")
    base: str = Field("demo", description="preset name (of the command) or config file every trial starts from")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted overrides applied to the base")
    space: dict[str, Dimension]
    metric: str = "knn/top1_best"
    mode: Literal["max", "min"] = "max"
    scope: Scope = Field("last", description="how each trial is scored, as Tune's get_best_result(scope=...): "
                         "last = the last epoch's value, all = the best epoch's (by mode), avg = the mean of all "
                         "epochs, last-5-avg / last-10-avg = the mean of the last 5 / 10")
    skip_warmup: bool = Field(True, description="leave a trial's warm-up epochs out of its score (HCSC / PCL "
                              "loss.warmup_epochs: no prototypes yet, so the swept clustering has no effect)")
    num_samples: int = Field(1, ge=1)
    max_concurrent_trials: int = Field(1, ge=0, description="0: as many as the cluster holds")
    scheduler: SchedulerSection = SchedulerSection()
    trial_cpus: float = Field(0.01, gt=0, description="CPUs of each trial's driver process, which only waits (the "
                              "Train workers, data and clustering actors take theirs from the config); Tune "
                              "refuses 0")
    storage_path: str = Field("./hierclr_sweeps", description="Tune experiment and the trials' Ray Train runs")
    seed: int | None = Field(0, description="seed of Tune's random sampling (null: unseeded)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"sweep name {v!r} must be letters, digits, '_', '-', '.' (it names directories)")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, Dimension]) -> dict[str, Dimension]:
        if not v:
            raise ValueError("the search space is empty: list at least one config field under space")
        out = {}
        for key, dim in v.items():
            key = ALIASES.get(key, key)
            if key in out:
                raise ValueError(f"space: {key} is listed twice (maybe under its alias)")
            if key == "name" or key.startswith(("checkpoint.storage_path", "tracking.")):
                raise ValueError(f"space: {key} is set by the sweep itself and cannot be swept")
            out[key] = dim
        return out

    # ------------------------------------------------------------------ derived
    @property
    def grid_size(self) -> int:
        return math.prod(len(d.grid) for d in self.space.values() if d.kind == "grid")

    @property
    def num_trials(self) -> int:
        return self.grid_size * self.num_samples

    @property
    def job(self) -> Job:
        return JOBS[self.command]

    def base_tree(self) -> dict:
        tree = read_yaml(self.base, self.job.preset_dir)
        for key, value in self.set.items():
            apply_override(tree, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
        return self.job.fix_tree(tree)

    def trial_config(self, params: dict[str, Any], base_tree: dict | None = None) -> PretrainConfig:
        """The validated config of one trial (``params``: dotted field -> value)."""
        import copy

        tree = copy.deepcopy(base_tree if base_tree is not None else self.base_tree())
        for key, value in params.items():
            _set_dotted(tree, ALIASES.get(key, key), value)
        try:
            return self.job.config_cls.model_validate(tree)
        except ValidationError as e:
            raise ValueError(describe(e, f"(sweep {self.name}, trial params {params})", self.job.config_cls)) from None

    def validate_space(self) -> PretrainConfig:
        """Check every listed value (each grid/choice value, both ends of each range) against the config;
        returns the config of the first grid point. Raises ValueError naming the field and value."""
        base = self.base_tree()
        first = {k: d.candidates()[0] for k, d in self.space.items()}
        cfg = self.trial_config(first, base)  # also proves the base config itself is valid
        for key, dim in self.space.items():
            for value in dim.candidates():
                try:
                    self.trial_config({**first, key: value}, base)
                except ValueError as e:
                    raise ValueError(f"space.{key}: value {value!r} does not make a valid config:\n{e}") from None
        if self.scheduler.type == "asha":
            warmup = self.max_warmup_epochs()
            grace = self.scheduler.grace_period or warmup + 1  # = asha_grace_period(), without a second pass
            if self.max_t(cfg) < grace:
                raise ValueError(f"scheduler.grace_period ({grace}) exceeds the trials' {self.max_t(cfg)} epochs")
            if self.skip_warmup and self.scheduler.time_attr == "epochs_done" and grace <= warmup:
                # ASHA's first rung compares trials after grace_period epochs; were they all warm-up epochs (no
                # prototypes yet), the swept clustering would not have acted and the stops would be chance.
                raise ValueError(f"scheduler.grace_period ({grace}) must exceed the trials' {warmup} warm-up epochs "
                                 f"(loss.warmup_epochs): ASHA would stop trials before their clustering has acted, "
                                 f"on epochs their score leaves out (skip_warmup). Set scheduler.grace_period >= "
                                 f"{warmup + 1} (or leave it out: that is its default), or skip_warmup: false to "
                                 "score warm-up epochs too")
        return cfg

    def max_t(self, cfg: PretrainConfig) -> int:
        return self.scheduler.max_t or cfg.optim.epochs

    def max_warmup_epochs(self) -> int:
        """The most warm-up epochs of any trial (:func:`warmup_epochs` of the base with the space's first values,
        and with each listed value of each dimension: a swept ``loss.warmup_epochs`` counts at its largest)."""
        base = self.base_tree()
        first = {k: d.candidates()[0] for k, d in self.space.items()}
        points = [first, *({**first, k: v} for k, d in self.space.items() for v in d.candidates())]
        return max(warmup_epochs(self.trial_config(p, base)) for p in points)

    def asha_grace_period(self) -> int:
        """ASHA's grace period in epochs: ``scheduler.grace_period``, by default the first epoch after every
        trial's warm-up."""
        return self.scheduler.grace_period or self.max_warmup_epochs() + 1

    def grid_points(self) -> list[dict[str, Any]]:
        """The grid's points (for dry runs and docs); random dimensions are shown by their spec."""
        keys = [k for k, d in self.space.items() if d.kind == "grid"]
        combos = itertools.product(*(self.space[k].grid for k in keys)) if keys else [()]
        return [dict(zip(keys, c)) for c in combos]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def warmup_epochs(cfg: BaseModel) -> int:
    """Epochs at the start of a run in which clustering does not act yet (HCSC / PCL ``loss.warmup_epochs``, plain
    InfoNCE); 0 for a run without clustering or one that is all warm-up by design (then it is MoCo v2)."""
    if isinstance(cfg, PretrainConfig) and cfg.uses_clustering and cfg.loss.warmup_epochs < cfg.optim.epochs:
        return cfg.loss.warmup_epochs
    return 0


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ValueError(f"space: {key}: {p!r} is a value, not a section")  # noqa: TRY004 - user input
        node = child
    node[parts[-1]] = value


def list_sweep_presets() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def load_sweep(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read and validate a sweep file (or a built-in one by name); ``overrides`` (``key=value``) apply to the
    sweep file itself (e.g. ``num_samples=4``, ``set.optim.epochs=2``, ``name=try2``)."""
    path = Path(source)
    if not path.is_file() and not path.suffix and (SWEEP_DIR / f"{source}.yaml").is_file():
        path = SWEEP_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ValueError(f"sweep file {str(source)!r} does not exist (built-in sweeps: "
                         f"{', '.join(list_sweep_presets())})")
    tree = read_mapping(path, "sweep file")
    base = tree.get("base")
    if isinstance(base, str) and not Path(base).is_absolute() and (path.parent / base).is_file():
        tree["base"] = str((path.parent / base).resolve())  # a base file next to the sweep file
    for o in overrides:
        key, _, raw = o.partition("=")
        if key.startswith("set."):  # set.<dotted config key>=value: one flat entry of `set`
            tree.setdefault("set", {})[key[4:]] = yaml.safe_load(raw)
        else:
            apply_override(tree, o)
    try:
        return SweepConfig.model_validate(tree)
    except ValidationError as e:
        raise ValueError(describe(e, path, SweepConfig)) from None
