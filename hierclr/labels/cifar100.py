"""The built-in CIFAR-100 taxonomy: 100 fine classes -> 20 superclasses (the table is ``cifar100.json``, the
official meta file's names in label order)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from hierclr.labels.hierarchy import HierarchyError, LabelHierarchy


@lru_cache(maxsize=1)
def cifar100() -> LabelHierarchy:
    """CIFAR-100: 100 fine classes -> 20 superclasses, both in the official label order.

    Level names ``("fine", "coarse")``; ``composed_map(1)`` reproduces the dataset's
    ``coarse_labels`` from its ``fine_labels``. Cached: the hierarchy is immutable.
    """
    table = json.loads(Path(__file__).with_name("cifar100.json").read_text())
    fine, coarse = tuple(table["fine"]), table["coarse"]
    coarse_of = {f: j for j, members in enumerate(coarse.values()) for f in members}
    if sorted(coarse_of) != sorted(fine) or len(coarse_of) != 100:  # guards the table
        raise HierarchyError("built-in CIFAR-100 table is inconsistent")
    return LabelHierarchy(
        names=(fine, tuple(coarse)),
        parents=(tuple(coarse_of[f] for f in fine),),
        level_names=("fine", "coarse"),
    )
