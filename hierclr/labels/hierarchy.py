"""Label hierarchies for image datasets: fine class labels plus coarser levels above them.

Level 0 is the finest level, i.e. the dataset's own class labels in label order; levels
``1 .. L-1`` are successively coarser. ``parents[l][i]`` is the index at level ``l + 1`` of class
``i`` of level ``l``, so every fine label has exactly one class at every level (a tree / forest).

Hierarchies come from three places:

* a JSON file written by :meth:`LabelHierarchy.to_json` (``{"level_names", "names", "parents"}``);
* an edge list, one ``child parent`` pair per line, the usual way the WordNet hierarchy of
  ImageNet is shipped (:func:`from_edge_list`), either levelled by distance from the root or cut
  at given depths;
* the built-in CIFAR-100 fine -> superclass taxonomy (:func:`cifar100`).

Every problem raises :class:`HierarchyError` (a ``ValueError``) whose message names the file
(when there is one) and the offending class, line or value.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hierclr.io.atomic import write_atomic
from hierclr.io.errors import DataFormatError

__all__ = [
    "HierarchyError",
    "LabelHierarchy",
    "cifar100",
    "from_edge_list",
    "load_hierarchy",
]

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
        """The built-in CIFAR-100 hierarchy (see :func:`cifar100`)."""
        return cifar100()

    @classmethod
    def from_edge_list(cls, source: PathLike, classes: Sequence[str], **kwargs: Any) -> LabelHierarchy:
        """Same as the module-level :func:`from_edge_list`."""
        return from_edge_list(source, classes, **kwargs)


# ---------------------------------------------------------------------------------------------
# edge lists (WordNet style)
# ---------------------------------------------------------------------------------------------
def _read_edges(source: PathLike, order: str, on_multiple_parents: str) -> dict[str, str]:
    """``child -> parent`` from a ``child parent`` (or ``parent child``) text file, with cycle check."""
    try:
        text = Path(source).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise HierarchyError(f"{source}: not UTF-8 text: {err}") from None
    parent_of: dict[str, str] = {}
    first_line: dict[str, int] = {}
    conflicts: dict[str, list[tuple[str, int]]] = {}
    seen_data = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0]
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise HierarchyError(
                f"{source}: line {lineno}: expected 2 fields ({order.replace('_', ' ')}), got {len(fields)}: "
                f"{raw.strip()!r}"
            )
        if not seen_data:
            seen_data = True
            header = [f.lower() for f in fields]
            if sorted(header) == ["child", "parent"]:
                if "_".join(header) != order:
                    raise HierarchyError(f"{source}: line {lineno}: header {raw.strip()!r} contradicts order={order!r}")
                continue
        child, parent = fields if order == "child_parent" else fields[::-1]
        if child not in parent_of:
            parent_of[child] = parent
            first_line[child] = lineno
        elif parent_of[child] != parent:
            known = conflicts.setdefault(child, [(parent_of[child], first_line[child])])
            if parent not in [p for p, _ in known]:
                known.append((parent, lineno))
    if not parent_of:
        raise HierarchyError(f"{source}: the edge list has no edges")
    if conflicts and on_multiple_parents == "error":
        child, options = next(iter(conflicts.items()))
        more = f" ({len(conflicts) - 1} more node(s) with several parents)" if len(conflicts) > 1 else ""
        listed = ", ".join(f"{p!r} (line {n})" for p, n in options)
        raise HierarchyError(
            f"{source}: node {child!r} has {len(options)} parents: {listed}{more}; "
            f"pass on_multiple_parents='first' to keep the first listed"
        )
    # cycles: following single parents from any node either ends at a root or loops
    state: dict[str, int] = {}  # 1 = on the current walk, 2 = known to reach a root
    for start in parent_of:
        walk: list[str] = []
        node: str | None = start
        while node is not None and state.get(node) != 2:
            if state.get(node) == 1:
                cycle = walk[walk.index(node) :] + [node]
                raise HierarchyError(f"{source}: cycle in the hierarchy: {' -> '.join(cycle)}")
            state[node] = 1
            walk.append(node)
            node = parent_of.get(node)
        for n in walk:
            state[n] = 2
    return parent_of


def _root_path(leaf: str, parent_of: Mapping[str, str]) -> list[str]:
    """``[leaf, parent, ..., root]`` (acyclic input)."""
    path = [leaf]
    while path[-1] in parent_of:
        path.append(parent_of[path[-1]])
    return path


def from_edge_list(
    source: PathLike,
    classes: Sequence[str],
    *,
    depths: Sequence[int] | None = None,
    level_names: Sequence[str] = (),
    on_multiple_parents: Literal["error", "first"] = "error",
    order: Literal["child_parent", "parent_child"] = "child_parent",
) -> LabelHierarchy:
    """Build a hierarchy over ``classes`` (fine labels, label order) from an edge-list file.

    The file has one edge per line, two whitespace-separated fields (so names have no spaces),
    ``child parent`` by default or ``parent child`` with ``order="parent_child"`` (WordNet's
    ``wordnet.is_a.txt``). Blank lines and ``#`` comments are skipped, as is a first line
    ``child parent`` / ``parent child`` (any case; it must agree with ``order``).

    ``depths=None``: all classes must lie at the same distance from their root; the levels are the
    classes, their parents, ..., the roots. ``depths=(d1, d2, ...)``: cut the tree at these
    depths from the root (root = depth 0): a class's label at depth ``d`` is its ancestor at depth
    ``d``, or the class itself when it is shallower than ``d``; a class missing from the file is
    then its own root. Levels are finest first (deepest cut first). Coarse classes are sorted by
    name within each level. A node with several parents is an error unless
    ``on_multiple_parents="first"`` keeps the first one listed.
    """
    if order not in ("child_parent", "parent_child"):
        raise HierarchyError(f"order must be 'child_parent' or 'parent_child', got {order!r}")
    if on_multiple_parents not in ("error", "first"):
        raise HierarchyError(f"on_multiple_parents must be 'error' or 'first', got {on_multiple_parents!r}")
    if isinstance(classes, str):
        raise HierarchyError(f"{source}: classes must be a sequence of class names, got the string {classes!r}")
    classes = tuple(classes)
    if not classes:
        raise HierarchyError(f"{source}: classes is empty")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise HierarchyError(f"{source}: duplicate class name(s) {_listed(dup)} in classes")

    parent_of = _read_edges(source, order, on_multiple_parents)
    present = set(parent_of) | set(parent_of.values())
    paths = {c: _root_path(c, parent_of) for c in classes}  # leaf first

    if depths is None:
        missing = [c for c in classes if c not in present]
        if missing:
            raise HierarchyError(f"{source}: class(es) {_listed(missing)} do not appear in the edge list")
        by_depth: dict[int, list[str]] = {}
        for c in classes:
            by_depth.setdefault(len(paths[c]) - 1, []).append(c)
        if len(by_depth) > 1:
            groups = "; ".join(f"depth {d}: {_listed(cs)}" for d, cs in sorted(by_depth.items()))
            raise HierarchyError(
                f"{source}: classes lie at different depths below their roots ({groups}); "
                f"pass depths=(...) to cut the tree at fixed depths"
            )
        num_coarse = next(iter(by_depth))
        labels = [[paths[c][k] for c in classes] for k in range(1, num_coarse + 1)]
    else:
        if isinstance(depths, (str, bytes)) or not isinstance(depths, Iterable):
            raise HierarchyError(f"depths must be a sequence of integers, got {depths!r}")
        cuts = list(depths)
        if not cuts or any(not _is_int(d) or d < 0 for d in cuts):
            raise HierarchyError(f"depths must be a non-empty sequence of integers >= 0, got {depths!r}")
        if len(set(cuts)) != len(cuts):
            raise HierarchyError(f"depths must be distinct, got {depths!r}")
        cuts = sorted((int(d) for d in cuts), reverse=True)
        labels = []
        for d in cuts:
            column = []
            for c in classes:
                from_root = paths[c][::-1]
                column.append(from_root[min(d, len(from_root) - 1)])
            labels.append(column)

    return _from_leaf_labels(classes, labels, level_names, source)


def _from_leaf_labels(
    classes: tuple[str, ...], labels: list[list[str]], level_names: Sequence[str], source: object
) -> LabelHierarchy:
    """Hierarchy from each leaf's class name per coarse level (``labels[k][i]``, level ``k + 1``).

    Coarse classes are sorted by name; a class mapping to two different classes one level up
    (impossible when cutting along root paths, checked anyway) raises.
    """
    names = [classes] + [tuple(sorted(set(col))) for col in labels]
    index = [{n: i for i, n in enumerate(level)} for level in names]
    columns = [list(classes)] + labels
    parents = []
    for level in range(len(names) - 1):
        up: dict[str, str] = {}
        for child, parent in zip(columns[level], columns[level + 1]):
            if up.setdefault(child, parent) != parent:
                raise HierarchyError(
                    f"{source}: level {level} class {child!r} maps to both {up[child]!r} and {parent!r} "
                    f"at level {level + 1}"
                )
        parents.append(tuple(index[level + 1][up[n]] for n in names[level]))
    try:
        return LabelHierarchy(names=tuple(names), parents=tuple(parents), level_names=tuple(level_names))
    except HierarchyError as err:
        raise HierarchyError(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------------------------
# fine_label_names of the official meta file, in label order (alphabetical)
_CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

# coarse_label_names of the official meta file, in label order, with their five fine classes
_CIFAR100_COARSE = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


@lru_cache(maxsize=1)
def cifar100() -> LabelHierarchy:
    """CIFAR-100: 100 fine classes -> 20 superclasses, both in the official label order.

    Level names ``("fine", "coarse")``; ``composed_map(1)`` reproduces the dataset's
    ``coarse_labels`` from its ``fine_labels``. Cached: the hierarchy is immutable.
    """
    coarse_of = {fine: j for j, members in enumerate(_CIFAR100_COARSE.values()) for fine in members}
    if sorted(coarse_of) != sorted(_CIFAR100_FINE) or len(coarse_of) != 100:  # guards the tables above
        raise HierarchyError("built-in CIFAR-100 table is inconsistent")
    return LabelHierarchy(
        names=(_CIFAR100_FINE, tuple(_CIFAR100_COARSE)),
        parents=(tuple(coarse_of[f] for f in _CIFAR100_FINE),),
        level_names=("fine", "coarse"),
    )


# ---------------------------------------------------------------------------------------------
# loading by extension
# ---------------------------------------------------------------------------------------------
def load_hierarchy(path: PathLike, classes: Sequence[str] | None = None, **edge_list_kwargs: Any) -> LabelHierarchy:
    """A ``.json`` file via :meth:`LabelHierarchy.from_json`, anything else via :func:`from_edge_list`.

    For JSON, ``classes`` (when given) must equal the hierarchy's fine class names; for edge lists it
    is required. ``edge_list_kwargs`` go to :func:`from_edge_list` and are rejected for JSON.
    """
    if Path(path).suffix.lower() == ".json":
        if edge_list_kwargs:
            raise HierarchyError(f"{path}: edge-list options {sorted(edge_list_kwargs)} do not apply to a JSON file")
        hierarchy = LabelHierarchy.from_json(path)
        if classes is not None:
            if isinstance(classes, str):
                raise HierarchyError(f"{path}: classes must be a sequence of class names, got {classes!r}")
            classes = tuple(classes)
            fine = hierarchy.names[0]
            for i, (want, have) in enumerate(zip(classes, fine)):
                if want != have:
                    raise HierarchyError(
                        f"{path}: fine class {i} is {have!r} in the hierarchy but {want!r} in the dataset"
                    )
            if len(classes) != len(fine):
                raise HierarchyError(
                    f"{path}: the hierarchy has {len(fine)} fine classes but the dataset has {len(classes)}"
                )
        return hierarchy
    if classes is None:
        raise HierarchyError(f"{path}: an edge-list hierarchy needs classes (the fine class names in label order)")
    return from_edge_list(path, classes, **edge_list_kwargs)
