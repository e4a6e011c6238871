"""The kinds of training run hierclr launches, by command name: their config class, presets and the task they
fix. The sweep reads configs through this table (and runs every kind with the one driver,
:func:`hierclr.runtime.driver.run_training`), so every command is sweepable."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from hierclr.config.loader import PRESET_DIR
from hierclr.config.pretrain import PretrainConfig
from hierclr.config.supervised import SUPERVISED_PRESET_DIR, SupervisedConfig

Command = Literal["pretrain", "finetune", "hcal"]


@dataclass(frozen=True)
class Job:
    command: str
    config_cls: type[BaseModel]
    preset_dir: Path
    task: str | None  # the SupervisedConfig.task it fixes

    def fix_tree(self, tree: dict) -> dict:
        """The command decides the task: a finetune sweep over an hcal preset is an error, not a surprise."""
        if self.task is not None:
            if tree.get("task", self.task) != self.task:
                raise ValueError(f"the base config is a {tree['task']!r} config, but the sweep's command is "
                                 f"{self.command!r}")
            tree["task"] = self.task
        return tree


JOBS: dict[str, Job] = {
    "pretrain": Job("pretrain", PretrainConfig, PRESET_DIR, None),
    "finetune": Job("finetune", SupervisedConfig, SUPERVISED_PRESET_DIR, "finetune"),
    "hcal": Job("hcal", SupervisedConfig, SUPERVISED_PRESET_DIR, "hcal"),
}

