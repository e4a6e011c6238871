"""Training methods on the one engine: each module holds a method's worker hooks and its driver plan.

- :mod:`~hierclr.methods.contrastive`: HCSC, MoCo v2, PCL v2 (``hierclr pretrain``), with the plain-torch step in
  :mod:`~hierclr.methods.contrastive_step`;
- :mod:`~hierclr.methods.supervised`: CE, SupCon, CLCE, VarCon (``hierclr finetune``), step in
  :mod:`~hierclr.methods.supervised_step`;
- :mod:`~hierclr.methods.hcal`: HCAL (``hierclr hcal``).

The contract (:class:`~hierclr.methods.base.Method`, :class:`~hierclr.methods.base.Plan`) is in
:mod:`~hierclr.methods.base`; :func:`plan_class` is where the driver and the workers look a method up.
"""
from __future__ import annotations

from hierclr.methods.base import Method, Plan, Prepared


def plan_class(name: str) -> type[Plan]:
    """The plan registered as ``name`` (what the driver puts in ``train_loop_config["plan"]``)."""
    from hierclr.methods.contrastive import ContrastivePlan
    from hierclr.methods.hcal import HCALPlan
    from hierclr.methods.supervised import SupervisedPlan

    plans = {p.name: p for p in (ContrastivePlan, SupervisedPlan, HCALPlan)}
    if name not in plans:
        raise KeyError(f"no training method plan named {name!r} (known: {', '.join(sorted(plans))})")
    return plans[name]


def plan_for(cfg) -> Plan:
    """The plan of a validated config: pretraining configs are contrastive; supervised ones by ``task``."""
    from hierclr.config.pretrain import PretrainConfig

    if isinstance(cfg, PretrainConfig):
        return plan_class("contrastive")(cfg)
    return plan_class("hcal" if cfg.task == "hcal" else "supervised")(cfg)


__all__ = ["Method", "Plan", "Prepared", "plan_class", "plan_for"]
