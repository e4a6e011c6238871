"""Images of a chain of prototypes, finest to coarsest (HCSC Fig. 3 and Fig. 6).

A chain starts at a populated level-0 prototype and climbs the tree through ``parents``. Each row of the
grid shows members of one prototype of the chain; upper rows prefer images not shown below, so the
coarse prototypes show their broader semantics instead of repeating the fine ones.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from hierclr.clustering.prototypes import Prototypes
from hierclr.data.decode import CorruptImageError, decode_rgb
from hierclr.data.fetch import FetchedRow, fetch_rows
from hierclr.data.source import ShardSource
from hierclr.viz.plots import image_grid
from hierclr.viz.tree import member_counts

__all__ = ["chain_grid", "chain_members", "pick_chains"]


def pick_chains(protos: Prototypes, *, num_chains: int = 1, seed: int = 0) -> list[list[int]]:
    """``num_chains`` chains ``[p_0, p_1, ..., p_{L-1}]`` with ``p_{l+1} = parents[l][p_l]``.

    The level-0 prototypes are drawn without replacement, seeded, with probability proportional to
    their member count, so empty prototypes are never picked and big ones are likely. Fewer chains
    come back when fewer level-0 prototypes have members.

    Raises:
        ValueError: ``num_chains < 1`` or no level-0 prototype has a member.
    """
    if num_chains < 1:
        raise ValueError(f"num_chains must be >= 1, got {num_chains}")
    counts = member_counts(protos, 0).numpy().astype(np.float64)
    populated = np.flatnonzero(counts > 0)
    if populated.size == 0:
        raise ValueError(f"no level-0 prototype has members ({protos.num_samples} assignments, all unassigned)")
    rng = np.random.default_rng(seed)
    starts = rng.choice(populated, size=min(num_chains, populated.size), replace=False,
                        p=counts[populated] / counts[populated].sum())
    parents = [p.detach().cpu() for p in protos.parents]
    chains = []
    for start in starts.tolist():
        chain = [int(start)]
        for par in parents:
            chain.append(int(par[chain[-1]]))
        chains.append(chain)
    return chains


def chain_members(protos: Prototypes, chain: list[int], *, per_node: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Per level ``l``, up to ``per_node`` sorted dataset ids with ``assignments[:, l] == chain[l]``.

    A seeded uniform sample; from level 1 up, ids not picked at the levels below come first, and only
    when those run out are already-shown members reused.

    Raises:
        ValueError: ``chain`` has the wrong length, an index out of range, or breaks the parent links.
    """
    _check_chain(protos, chain)
    rng = np.random.default_rng(seed)
    assignments = protos.assignments.detach().cpu().numpy()
    shown = np.zeros(0, np.int64)
    out = []
    for l, p in enumerate(chain):
        members = np.flatnonzero(assignments[:, l] == p)
        fresh = np.setdiff1d(members, shown, assume_unique=True)
        pick = rng.choice(fresh, size=min(per_node, fresh.size), replace=False)
        if pick.size < per_node:
            reused = np.setdiff1d(members, pick, assume_unique=True)
            pick = np.concatenate([pick, rng.choice(reused, size=min(per_node - pick.size, reused.size),
                                                    replace=False)])
        pick = np.sort(pick).astype(np.int64)
        out.append(pick)
        shown = np.union1d(shown, pick)
    return out


def chain_grid(
    protos: Prototypes,
    source: ShardSource,
    path: str | os.PathLike,
    *,
    num_chains: int = 1,
    per_node: int = 8,
    seed: int = 0,
    size: int = 64,
) -> str:
    """One PNG with ``num_chains`` chains stacked (each chain's rows finest level first), ``size`` px images.

    Rows read ``chain k · level l · prototype p · n members``, plus the most common class among the shown
    images when the source has classes: at prototype level ``l`` the class at label level
    ``min(l, L_labels - 1)`` of the source's hierarchy (Table 11's pairing), else the class name. An image
    that does not decode is drawn as a grey tile and counted in its row's label. Reads only the
    dataset units holding the shown ids (:func:`hierclr.data.fetch.fetch_rows`).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    chains = pick_chains(protos, num_chains=num_chains, seed=seed)
    picks = [chain_members(protos, chain, per_node=per_node, seed=seed + k) for k, chain in enumerate(chains)]
    wanted = np.unique(np.concatenate([ids for chain in picks for ids in chain]))
    if wanted.size and wanted.max() >= source.num_rows:
        raise ValueError(f"prototype assignments cover {protos.num_samples} ids but {source.uri} has "
                         f"{source.num_rows} rows: these prototypes belong to another dataset")
    fetched = fetch_rows(source, wanted.tolist())
    counts = [member_counts(protos, l) for l in range(protos.num_levels)]
    rows = []
    for k, (chain, members) in enumerate(zip(chains, picks)):
        for l, (p, ids) in enumerate(zip(chain, members)):
            images, bad = [], 0
            for i in ids.tolist():
                img = _thumbnail(fetched[i].image, size)
                bad += img is None
                images.append(np.full((size, size, 3), 128, np.uint8) if img is None else img)
            label = f"level {l} · prototype {p} · {int(counts[l][p])} members"
            if len(chains) > 1:
                label = f"chain {k} · {label}"
            name = _majority_class(source, [fetched[i] for i in ids.tolist()], l)
            if name:
                label += f" · {name}"
            if bad:
                label += f" · {bad} unreadable"
            rows.append((label, images))
    title = f"prototype chains (finest level at the top){'' if protos.epoch is None else f' · epoch {protos.epoch}'}"
    return image_grid(rows, Path(path), title=title)


def _check_chain(protos: Prototypes, chain: list[int]) -> None:
    if len(chain) != protos.num_levels:
        raise ValueError(f"chain {chain} has {len(chain)} entries for {protos.num_levels} levels")
    for l, p in enumerate(chain):
        if not 0 <= p < protos.sizes[l]:
            raise ValueError(f"chain {chain}: prototype {p} is outside level {l} (size {protos.sizes[l]})")
        if l and int(protos.parents[l - 1][chain[l - 1]]) != p:
            raise ValueError(f"chain {chain}: the parent of level-{l - 1} prototype {chain[l - 1]} is "
                             f"{int(protos.parents[l - 1][chain[l - 1]])}, not {p}")


def _thumbnail(data: bytes, size: int) -> np.ndarray | None:
    """``(size, size, 3)`` uint8, or ``None`` for bytes that do not decode."""
    try:
        chw = decode_rgb(data)
    except CorruptImageError:
        return None
    img = Image.fromarray(chw.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _majority_class(source: ShardSource, rows: list[FetchedRow], level: int) -> str | None:
    """``"<name> (k/n)"``: the most common class of ``rows`` at the label level paired with ``level``."""
    labels = [r.label for r in rows if 0 <= r.label < len(source.classes)]
    if not labels:
        return None
    if source.hierarchy is not None:
        m = min(level, source.hierarchy.num_levels - 1)
        at_level = source.level_map()[labels, m]
        names = [source.hierarchy.names[m][int(c)] for c in at_level]
    else:
        names = [source.classes[c] for c in labels]
    name, count = Counter(names).most_common(1)[0]
    return f"{name} ({count}/{len(rows)})"
