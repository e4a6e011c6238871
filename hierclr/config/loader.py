"""How every hierclr config is read: a preset or YAML file, ``base:`` inheritance, ``--set`` overrides, one
validation whose error names the bad field. The schemas live beside this module, one per command.

``hierclr pretrain --config cifar100-r18 --set optim.epochs=10 --set clustering.sizes=[100,50]``: the preset
(``hierclr/presets/<name>.yaml``) or a YAML file is read (a ``base:`` key extends another preset), each
``--set`` replaces one leaf (its value parsed as YAML), then pydantic validates the whole tree; a bad value
fails here, naming the field, before Ray starts.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"  # pretrain presets; the other commands' below
SUPERVISED_PRESET_DIR = PRESET_DIR / "supervised"
EVALUATE_PRESET_DIR = PRESET_DIR / "evaluate"
SWEEP_PRESET_DIR = PRESET_DIR / "sweeps"

T = TypeVar("T", bound=BaseModel)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen, defaults are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def list_presets(preset_dir: Path = PRESET_DIR) -> list[str]:
    return sorted(p.stem for p in preset_dir.glob("*.yaml"))


def preset_table(preset_dir: Path = PRESET_DIR, width: int = 110) -> str:
    """One line per preset: its name and the first sentence of its leading ``#`` comment (what ``--list-presets``
    prints; reads the files only, so it answers without importing torch)."""
    rows = []
    for name in list_presets(preset_dir):
        words = []
        for line in (preset_dir / f"{name}.yaml").read_text().splitlines():
            if not line.startswith("#"):
                break
            words.append(line.lstrip("#").strip())
        text = " ".join(w for w in words if w)
        if len(text) > width:  # the first sentence of a long comment ("et al. 2020" does not end one)
            text = re.split(r"(?<!\bal)\. (?=[A-Z])", text)[0]
        rows.append((name, text if len(text) <= width else text[: width - 3] + "..."))
    pad = max((len(n) for n, _ in rows), default=0)
    return "\n".join(f"{n:<{pad}}  {t}".rstrip() for n, t in rows)


def read_yaml(source: str | Path, preset_dir: Path = PRESET_DIR) -> dict:
    """A preset name (a file of ``preset_dir``) or a YAML path -> its tree, with ``base:`` resolved."""
    path = Path(source)
    if not path.suffix and (preset_dir / f"{source}.yaml").is_file():
        path = preset_dir / f"{source}.yaml"
    if not path.is_file():
        raise ValueError(f"config {str(source)!r} is neither a file nor a preset (presets: "
                         f"{', '.join(list_presets(preset_dir))})")
    data = read_mapping(path, "config")
    base = data.pop("base", None)  # presets may extend another preset
    if base is not None:
        return merge(read_yaml(base, preset_dir), data)
    return data


def read_mapping(path: Path, what: str) -> dict:
    """A YAML file whose top level is a mapping (empty file: ``{}``); errors name ``what`` and the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: the top level must be a mapping, got {type(data).__name__}")  # noqa: TRY004  user input
    return data


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, section by section (a deep copy)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(tree: dict, assignment: str) -> dict:
    """``a.b.c=value`` -> ``tree['a']['b']['c'] = yaml(value)``; unknown keys are caught by validation."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {p!r} is a value, not a section")  # noqa: TRY004  user input
        node = child
    node[parts[-1]] = value
    return tree


def load_tree(source: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
              preset_dir: Path = PRESET_DIR, *, services: bool = False) -> dict:
    """The raw tree of ``source`` (None: empty, all defaults) with the ``key=value`` overrides applied. With
    ``resources.profile: local`` the machine's sizing goes between the file and the overrides (``services``: the
    schema has clustering actors to size)."""
    tree = read_yaml(source, preset_dir) if source is not None else {}
    for o in overrides:
        apply_override(tree, o)
    if isinstance(tree.get("resources"), dict) and tree["resources"].get("profile") == "local":
        from hierclr.config.profiles import local_overrides

        sized = local_overrides(tree, services=services)
        tree = read_yaml(source, preset_dir) if source is not None else {}
        for o in (*sized, *overrides):
            apply_override(tree, o)
    return tree


def validate(cls: type[T], tree: dict, source: object = None) -> T:
    """``cls.model_validate(tree)``, a ValidationError turned into one ValueError listing every bad field."""
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise ValueError(describe(e, source, cls)) from None


def describe(e: ValidationError, source: object = None, cls: type[BaseModel] | None = None) -> str:
    """One line per bad field, with a hint where the mistake is a common one: a misspelt key (the closest field
    names of its section, when ``cls`` is given) or a comma list without brackets."""
    lines = [f"invalid config{f' {source}' if source else ''}:"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and not isinstance(
            err["input"], dict) else "") + _hint(err, cls))
    return "\n".join(lines)


def _hint(err: dict, cls: type[BaseModel] | None) -> str:
    value = err.get("input")
    if err["type"] in ("tuple_type", "list_type") and isinstance(value, str) and "," in value:
        return f"; write a list in brackets: [{value}]"
    if err["type"] != "extra_forbidden" or cls is None:
        return ""
    import difflib

    *section, key = (str(p) for p in err["loc"])
    model: Any = cls
    for name in section:  # the section's schema: follow the nested models along the path
        field = model.model_fields.get(name) if isinstance(model, type) and issubclass(model, BaseModel) else None
        model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    close = difflib.get_close_matches(key, list(model.model_fields), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join('.'.join([*section, c]) for c in close)}?" if close else ""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``; lists and tuples stay values (MLflow params are flat)."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out
