"""Label hierarchies from edge lists (``child parent`` per line, WordNet style) and from files by extension."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from hierclr.labels.hierarchy import HierarchyError, LabelHierarchy, _is_int, _listed

PathLike = str | os.PathLike


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
