"""Label hierarchies for image datasets: fine class labels plus coarser levels above them.

Level 0 is the finest level, i.e. the dataset's own class labels in label order; levels
``1 .. L-1`` are successively coarser. ``parents[l][i]`` is the index at level ``l + 1`` of class
``i`` of level ``l``, so every fine label has exactly one class at every level (a tree / forest).

Hierarchies come from three places:

* a JSON file written by :meth:`LabelHierarchy.to_json` (``{"level_names", "names", "parents"}``);
* an edge list, one ``child parent`` pair per line, the usual way the WordNet hierarchy of
  ImageNet is shipped (:func:`hierclr.labels.edge_list.from_edge_list`), either levelled by distance
  from the root or cut at given depths;
* the built-in CIFAR-100 fine -> superclass taxonomy (:func:`hierclr.labels.cifar100.cifar100`).

Every problem raises :class:`HierarchyError` (a ``ValueError``) whose message names the file
(when there is one) and the offending class, line or value.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hierclr.io.atomic import write_atomic
from hierclr.io.errors import DataFormatError

__all__ = ["HierarchyError", "LabelHierarchy"]

PathLike = str | os.PathLike

_MAX_LISTED = 10  # names listed in one error message before "... and N more"


class HierarchyError(DataFormatError):
    """An invalid hierarchy, hierarchy file or label; the message names the file and the culprit.

    A :class:`~hierclr.io.errors.DataFormatError`, hence a ``ValueError``.
    """


def _where(source: object | None) -> str:
    """``"<source>: "`` prefix for error messages, empty without a source."""
    return f"{source}: " if source is not None else ""


def _listed(items: Iterable[object]) -> str:
    """Comma-separated ``repr``s, cut after ``_MAX_LISTED`` items."""
    items = list(items)
    shown = ", ".join(repr(x) for x in items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... and {len(items) - _MAX_LISTED} more"
    return shown


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# the hierarchy
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LabelHierarchy:
    """Class names per level (finest first) and the parent of each class one level up.

    Immutable and validated on construction; lists are accepted and stored as tuples. Equality is
    identity (``eq=False``): compare ``names`` / ``parents`` / ``level_names`` for content.
    """

    names: tuple[tuple[str, ...], ...]
    parents: tuple[tuple[int, ...], ...]
    level_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = self._check_names(self.names)
        parents = self._check_parents(self.parents, names)
        level_names = self._check_level_names(self.level_names, len(names))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "level_names", level_names)
        # table[i, l] = class at level l of fine class i (column 0 = identity); read-only, shared
        table = np.empty((len(names[0]), len(names)), dtype=np.int64)
        table[:, 0] = np.arange(len(names[0]))
        for level, par in enumerate(parents):
            table[:, level + 1] = np.asarray(par, dtype=np.int64)[table[:, level]]
        table.setflags(write=False)
        object.__setattr__(self, "_table", table)

    # -- validation ---------------------------------------------------------------------------
    @staticmethod
    def _check_names(names: object) -> tuple[tuple[str, ...], ...]:
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise HierarchyError(f"names must be a sequence of levels (lists of class names), got {names!r}")
        levels = []
        for level, level_names in enumerate(names):
            if isinstance(level_names, str) or not isinstance(level_names, Iterable):
                raise HierarchyError(f"names[{level}] must be a sequence of class names, got {level_names!r}")
            level_names = tuple(level_names)
            seen: set[str] = set()
            for i, name in enumerate(level_names):
                if not isinstance(name, str) or not name:
                    raise HierarchyError(f"level {level}: class {i} must be a non-empty string, got {name!r}")
                if name in seen:
                    raise HierarchyError(f"level {level}: duplicate class name {name!r} (at index {i})")
                seen.add(name)
            if not level_names:
                raise HierarchyError(f"level {level} has no classes")
            levels.append(level_names)
        if not levels:
            raise HierarchyError("a hierarchy needs at least one level (names is empty)")
        return tuple(levels)

    @staticmethod
    def _check_parents(parents: object, names: tuple[tuple[str, ...], ...]) -> tuple[tuple[int, ...], ...]:
        if isinstance(parents, str) or not isinstance(parents, Iterable):
            raise HierarchyError(f"parents must be a sequence of index lists, got {parents!r}")
        parents = list(parents)
        if len(parents) != len(names) - 1:
            raise HierarchyError(
                f"{len(names)} levels need {len(names) - 1} parent lists (one per level but the coarsest), "
                f"got {len(parents)}"
            )
        out = []
        for level, par in enumerate(parents):
            if isinstance(par, str) or not isinstance(par, Iterable):
                raise HierarchyError(f"parents[{level}] must be a sequence of indices, got {par!r}")
            par = tuple(par)
            here, up = names[level], names[level + 1]
            if len(par) != len(here):
                raise HierarchyError(
                    f"parents[{level}] has {len(par)} entries but level {level} has {len(here)} classes"
                )
            for i, p in enumerate(par):
                if not _is_int(p):
                    raise HierarchyError(
                        f"level {level}: parent of class {here[i]!r} must be an integer index, got {p!r}"
                    )
                if not 0 <= p < len(up):
                    raise HierarchyError(
                        f"level {level}: parent of class {here[i]!r} is {p}, out of range for level {level + 1} "
                        f"with {len(up)} classes (valid 0..{len(up) - 1})"
                    )
            par = tuple(int(p) for p in par)
            childless = sorted(set(range(len(up))) - set(par))
            if childless:
                raise HierarchyError(
                    f"level {level + 1}: class(es) {_listed(up[j] for j in childless)} have no children at "
                    f"level {level}"
                )
            out.append(par)
        return tuple(out)

    @staticmethod
    def _check_level_names(level_names: object, num_levels: int) -> tuple[str, ...]:
        if isinstance(level_names, str) or not isinstance(level_names, Iterable):
            raise HierarchyError(f"level_names must be a sequence of strings, got {level_names!r}")
        level_names = tuple(level_names)
        if not level_names:
            return tuple(f"level{i}" for i in range(num_levels))
        if len(level_names) != num_levels:
            raise HierarchyError(f"{len(level_names)} level_names {list(level_names)} for {num_levels} levels")
        for name in level_names:
            if not isinstance(name, str) or not name:
                raise HierarchyError(f"level names must be non-empty strings, got {name!r}")
        dup = sorted({n for n in level_names if level_names.count(n) > 1})
        if dup:
            raise HierarchyError(f"duplicate level name(s) {_listed(dup)} in {list(level_names)}")
        return level_names

    # -- shape ---------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of classes per level, finest first."""
        return tuple(len(n) for n in self.names)

    def __repr__(self) -> str:
        levels = " -> ".join(f"{n}:{s}" for n, s in zip(self.level_names, self.sizes))
        return f"LabelHierarchy({levels})"

    # -- maps ----------------------------------------------------------------------------------
    def _level(self, level: object, top: int, what: str) -> int:
        if not _is_int(level) or not 0 <= int(level) <= top:
            raise HierarchyError(f"{what} level must be an integer in 0..{top}, got {level!r}")
        return int(level)

    def parent_map(self, level: int) -> np.ndarray:
        """``(sizes[level],)`` int64: class index at ``level + 1`` of each class of ``level``."""
        level = self._level(level, self.num_levels - 2, "parent_map")
        return np.asarray(self.parents[level], dtype=np.int64)

    def composed_map(self, level: int) -> np.ndarray:
        """``(sizes[0],)`` int64: class index at ``level`` of each fine class (identity for level 0)."""
        level = self._level(level, self.num_levels - 1, "composed_map")
        return self._table[:, level].copy()

    def ancestors(self, i: int) -> tuple[int, ...]:
        """Indices at levels ``1 .. L-1`` of fine class ``i`` (empty for a one-level hierarchy)."""
        if not _is_int(i) or not 0 <= int(i) < self.sizes[0]:
            raise HierarchyError(f"fine class {i!r} is out of range (the hierarchy has {self.sizes[0]} classes)")
        return tuple(int(x) for x in self._table[int(i), 1:])

    # -- labels --------------------------------------------------------------------------------
    @staticmethod
    def _as_labels(labels: object, source: object | None) -> np.ndarray:
        arr = np.asarray(labels)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
            if arr.size == 0 and arr.ndim == 1:  # np.asarray([]) is float64
                return arr.astype(np.int64)
            raise HierarchyError(f"{_where(source)}labels must be integers, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise HierarchyError(f"{_where(source)}labels must be 1-D, got shape {arr.shape}")
        return arr.astype(np.int64, copy=False)

    def labels_at_all_levels(self, labels: Sequence[int] | np.ndarray, source: str | None = None) -> np.ndarray:
        """``(N, L)`` int64: column 0 = ``labels``, column ``l`` = their class at level ``l``.

        ``-1`` (unlabelled) stays ``-1`` at every level; anything else outside ``[0, sizes[0])``
        raises, naming the value, the class count and ``source`` (e.g. the dataset file).
        """
        arr = self._as_labels(labels, source)
        n = self.sizes[0]
        bad = (arr < -1) | (arr >= n)
        if bad.any():
            first = int(arr[np.argmax(bad)])
            raise HierarchyError(
                f"{_where(source)}label {first} is out of range: the hierarchy has {n} classes "
                f"(valid 0..{n - 1}, or -1 for unlabelled); {int(bad.sum())} label(s) affected"
            )
        out = np.full((arr.shape[0], self.num_levels), -1, dtype=np.int64)
        known = arr >= 0
        out[known] = self._table[arr[known]]
        return out

    def covers(self, labels: Sequence[int] | np.ndarray) -> bool:
        """Whether every label is a fine class of this hierarchy or ``-1`` (unlabelled)."""
        arr = self._as_labels(labels, None)
        return bool(((arr >= -1) & (arr < self.sizes[0])).all())

    def check_covers(self, labels: Sequence[int] | np.ndarray, source: str | None = None) -> None:
        """Raise when some label has no class in the hierarchy (e.g. a dataset with more classes)."""
        arr = self._as_labels(labels, source)
        n = self.sizes[0]
        if arr.size and int(arr.max()) >= n:
            raise HierarchyError(
                f"{_where(source)}the hierarchy does not cover label {int(arr.max())} (it has {n} classes)"
            )
        if arr.size and int(arr.min()) < -1:
            raise HierarchyError(
                f"{_where(source)}label {int(arr.min())} is not a class index (only -1 marks unlabelled)"
            )

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"level_names": [...], "names": [[...], ...], "parents": [[...], ...]}``."""
        return {
            "level_names": list(self.level_names),
            "names": [list(n) for n in self.names],
            "parents": [list(p) for p in self.parents],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | os.PathLike | None = None) -> LabelHierarchy:
        """Inverse of :meth:`to_dict`; ``level_names`` is optional, unknown keys are rejected (typos)."""
        where = _where(source)
        if not isinstance(d, Mapping):
            raise HierarchyError(f"{where}expected a JSON object with keys names/parents, got {type(d).__name__}")
        missing = [k for k in ("names", "parents") if k not in d]
        if missing:
            raise HierarchyError(f"{where}missing key(s) {_listed(missing)} (found {_listed(sorted(d))})")
        unknown = sorted(set(d) - {"names", "parents", "level_names"})
        if unknown:
            raise HierarchyError(f"{where}unknown key(s) {_listed(unknown)} (expected level_names, names, parents)")
        try:
            return cls(names=d["names"], parents=d["parents"], level_names=d.get("level_names") or ())
        except HierarchyError as err:
            raise HierarchyError(f"{where}{err}") from None

    def to_json(self, path: PathLike) -> None:
        """Write the JSON form atomically (temporary file in the same folder, then ``os.replace``)."""
        write_atomic(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode("utf-8"))

    @classmethod
    def from_json(cls, path: PathLike) -> LabelHierarchy:
        """Read a file written by :meth:`to_json`; every error names ``path``."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise HierarchyError(f"{path}: malformed JSON: {err}") from None
        except UnicodeDecodeError as err:
            raise HierarchyError(f"{path}: not UTF-8 text: {err}") from None
        return cls.from_dict(d, source=path)

    @classmethod
    def cifar100(cls) -> LabelHierarchy:
        """The built-in CIFAR-100 hierarchy (see :func:`hierclr.labels.cifar100.cifar100`)."""
        from hierclr.labels.cifar100 import cifar100

        return cifar100()

    @classmethod
    def from_edge_list(cls, source: PathLike, classes: Sequence[str], **kwargs: Any) -> LabelHierarchy:
        """Same as :func:`hierclr.labels.edge_list.from_edge_list`."""
        from hierclr.labels.edge_list import from_edge_list

        return from_edge_list(source, classes, **kwargs)
