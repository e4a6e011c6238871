"""Small ImageNet metadata files: validation labels, semi-supervised subset lists, class indices.

Each reader is a ``parse_*(text, source)`` that works on text (so callers holding a remote file pass its contents)
plus a thin ``read_*(path)`` for local files. Errors are :class:`DataFormatError` naming the file and the line.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from pathlib import Path

from hierclr.io.errors import DataFormatError

__all__ = [
    "parse_class_index",
    "parse_file_list",
    "parse_val_annotations",
    "read_class_index",
    "read_file_list",
    "read_val_annotations",
]

KAGGLE_HEADER = "ImageId,PredictionString"


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers, stripped; a leading BOM is dropped."""
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _kaggle_row(line: str) -> tuple[str, str] | None:
    """``ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...`` -> (``ILSVRC2012_val_00008726.JPEG``, wnid)."""
    fields = line.split(",")
    if len(fields) != 2 or not fields[0].strip() or not fields[1].split():
        return None
    image_id = fields[0].strip()
    return (image_id if "." in image_id else f"{image_id}.JPEG"), fields[1].split()[0]


def _tiny_row(line: str) -> tuple[str, str] | None:
    """``val_0.JPEG<TAB>n03444034<TAB>0<TAB>32<TAB>44<TAB>62`` -> (``val_0.JPEG``, ``n03444034``)."""
    fields = [f.strip() for f in line.split("\t")]
    if len(fields) != 6 or not fields[0] or not fields[1] or not all(_is_int(f) for f in fields[2:]):
        return None
    return fields[0], fields[1]


def _generic_row(line: str) -> tuple[str, str] | None:
    """``filename class`` separated by whitespace."""
    fields = line.split()
    return (fields[0], fields[1]) if len(fields) == 2 else None


_FORMATS = {
    "kaggle": (_kaggle_row, "'<ImageId>,<wnid> <x0> <y0> <x1> <y1> ...' (Kaggle LOC_val_solution.csv)"),
    "tiny": (_tiny_row, "'<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>' (Tiny-ImageNet val_annotations.txt)"),
    "generic": (_generic_row, "'<file> <class>'"),
}


def parse_val_annotations(text: str, source: str = "<text>") -> dict[str, str]:
    """Image file name -> class (wnid or name) from a validation annotation file's text.

    The format is detected from the first non-blank line: a Kaggle ``LOC_val_solution.csv`` (header
    ``ImageId,PredictionString``; ``.JPEG`` is appended to ids and the first token of the prediction string is the
    class), a Tiny-ImageNet ``val_annotations.txt`` (six tab-separated fields) or two whitespace-separated columns.
    A file listed twice with the same class is fine; with different classes it is an error.
    """
    lines = list(_lines(text))
    if not lines:
        raise DataFormatError(f"{source}: no annotations (the file is empty)")
    first_number, first = lines[0]
    if first.replace(" ", "").lower() == KAGGLE_HEADER.lower():
        fmt, lines = "kaggle", lines[1:]
    elif "," in first and _generic_row(first) is None and _kaggle_row(first) is not None:
        fmt = "kaggle"  # the Kaggle CSV without its header
    elif _tiny_row(first) is not None:
        fmt = "tiny"
    elif _generic_row(first) is not None:
        fmt = "generic"
    else:
        raise DataFormatError(
            f"{source}:{first_number}: unrecognised validation annotation format {first[:80]!r}; expected a "
            f"'{KAGGLE_HEADER}' header, {_FORMATS['tiny'][1]} or {_FORMATS['generic'][1]}"
        )
    parse_row, expected = _FORMATS[fmt]
    labels: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    for number, line in lines:
        row = parse_row(line)
        if row is None:
            raise DataFormatError(f"{source}:{number}: malformed line {line[:80]!r}; expected {expected}")
        name, label = row
        if name in labels and labels[name] != label:
            raise DataFormatError(
                f"{source}:{number}: {name!r} has class {label!r} but line {seen_at[name]} gave {labels[name]!r}"
            )
        labels.setdefault(name, label)
        seen_at.setdefault(name, number)
    if not labels:
        raise DataFormatError(f"{source}: no annotations (only a header)")
    return labels


def parse_file_list(text: str, source: str = "<text>") -> list[str]:
    """File names, one per line (e.g. the semi-supervised ``1percent.txt``), in order; duplicates are an error.

    Blank lines are skipped; a line with more than one token or an empty file is an error.
    """
    names: list[str] = []
    seen_at: dict[str, int] = {}
    for number, line in _lines(text):
        if len(line.split()) != 1:
            raise DataFormatError(f"{source}:{number}: expected one file name per line, got {line[:80]!r}")
        if line in seen_at:
            raise DataFormatError(f"{source}:{number}: duplicate file {line!r} (first on line {seen_at[line]})")
        seen_at[line] = number
        names.append(line)
    if not names:
        raise DataFormatError(f"{source}: no file names (the file is empty)")
    return names


def select_listed(keys: Sequence[str], wanted: Sequence[str], source: str = "<list>", what: str = "the split"
                  ) -> list[int]:
    """Sorted indices into ``keys`` (paths relative to a split, e.g. ``n01440764/n01440764_10026.JPEG``) of the
    files in ``wanted`` (:func:`parse_file_list`). An entry with a ``/`` names a relative path (class/file); a
    bare name (ImageNet's ``1percent.txt``) is matched by file name, which must then be unique among ``keys``.
    A listed file that is not there, or an ambiguous bare name, is a :class:`DataFormatError` naming it."""
    where = {k: i for i, k in enumerate(keys)}
    names: dict[str, int] = {}
    for i, k in enumerate(keys):
        base = posixpath.basename(k)
        names[base] = -1 if base in names else i
    ambiguous = [w for w in wanted if "/" not in w and names.get(w) == -1]
    if ambiguous:
        raise DataFormatError(f"{source}: file name {ambiguous[0]!r} occurs in several classes of {what}; list "
                              "it as <class>/<file>")
    where.update({w: names[w] for w in wanted if "/" not in w and w in names})
    missing = [w for w in wanted if w not in where]
    if missing:
        raise DataFormatError(f"{len(missing)} files of {source} are not in {what}, e.g. {missing[0]}")
    return sorted(where[w] for w in wanted)


def parse_class_index(text: str, source: str = "<text>") -> list[str]:
    """Class ids in order from lines ``<id> [description]`` (e.g. ``LOC_synset_mapping.txt``); duplicates are an error."""
    classes: list[str] = []
    seen_at: dict[str, int] = {}
    for number, line in _lines(text):
        cls = line.split(maxsplit=1)[0]
        if cls in seen_at:
            raise DataFormatError(f"{source}:{number}: duplicate class {cls!r} (first on line {seen_at[cls]})")
        seen_at[cls] = number
        classes.append(cls)
    if not classes:
        raise DataFormatError(f"{source}: no classes (the file is empty)")
    return classes


def _read_text(path: str | Path) -> tuple[str, str]:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError as e:
        raise DataFormatError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not a UTF-8 text file ({e})") from e
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from e


def read_val_annotations(path: str | Path) -> dict[str, str]:
    """:func:`parse_val_annotations` on a local file."""
    return parse_val_annotations(*_read_text(path))


def read_file_list(path: str | Path) -> list[str]:
    """:func:`parse_file_list` on a local file."""
    return parse_file_list(*_read_text(path))


def read_class_index(path: str | Path) -> list[str]:
    """:func:`parse_class_index` on a local file."""
    return parse_class_index(*_read_text(path))
