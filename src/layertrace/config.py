"""Typed configs: dataclasses that load from YAML, take dotted overrides and generate ``--help``.

Every CLI subcommand has one config dataclass (nested dataclasses allowed). The same class

* builds the argparse options (one ``--a.b`` flag per leaf field, help text from
  ``field(metadata={"help": ...})``),
* loads a YAML file whose keys mirror the dataclass (unknown keys raise a one-line error with a
  suggestion),
* applies dotted overrides on top (``--train.lr 3e-4``), converting values to the field's type and
  checking the range / choices a field declares (``metadata={"check": "> 0"}``, ``"[0, 1)"``,
  ``{"choices": ("auto", "true", "false")}``), so a bad value fails where it is parsed, not deep in torch,
* is written back as the resolved ``config.yaml`` of every output folder.

Example::

    @dataclass
    class TrainConfig:
        lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})

    cfg = load_config(TrainConfig, "run.yaml", {"lr": "3e-4"})
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from .errors import LayertraceError, did_you_mean

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """All leaf fields of a (nested) config dataclass as ``(dotted_name, field, type)``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        ftype = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(ftype):
            out.extend(_leaf_fields(ftype, name + "."))
        else:
            out.append((name, f, ftype))
    return out


def _parse_bool(text: str, key: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise LayertraceError(f"config key {key!r}: {text!r} is not a boolean; use true or false")


def convert_value(value: Any, ftype: Any, key: str) -> Any:
    """Convert ``value`` (a YAML value or a command-line string) to the annotated ``ftype``."""
    origin = typing.get_origin(ftype)
    args = typing.get_args(ftype)
    if ftype is Any:
        return _yaml_scalar(value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return convert_value(value, non_none[0], key)
        lists = [a for a in non_none if a is list or typing.get_origin(a) is list]
        if lists and isinstance(value, str) and "," in value:  # '1,1,1': every list option takes commas
            return convert_value(value, lists[0], key)
        # Union of several types (e.g. int | str | list[int]): trust YAML's reading of a string.
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        for a in non_none:
            try:
                if a in (int, float, str, bool) and not isinstance(parsed, a):
                    continue
                return convert_value(parsed, a, key)
            except (LayertraceError, TypeError, ValueError):
                continue
        if str in non_none and isinstance(value, str):  # e.g. a layer slice '1:' that YAML reads as a mapping
            return value
        raise LayertraceError(f"config key {key!r}: {value!r} does not fit type {ftype}")
    if origin in (list, tuple, typing.Sequence) or ftype in (list, tuple):
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        if isinstance(parsed, (int, float, str)) and not isinstance(value, (list, tuple)):
            parsed = [parsed] if not isinstance(parsed, str) else [p for p in parsed.split(",") if p.strip()]
        if not isinstance(parsed, (list, tuple)):
            raise LayertraceError(f"config key {key!r}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [convert_value(v, item, key) for v in parsed]
    if origin is dict or ftype is dict:
        parsed = _yaml_scalar(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise LayertraceError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(parsed)
    if origin is typing.Literal:
        if value not in args and str(value) not in [str(a) for a in args]:
            raise LayertraceError(
                f"config key {key!r}: {value!r} is not one of {list(args)}{did_you_mean(str(value), map(str, args))}"
            )
        return next(a for a in args if a == value or str(a) == str(value))
    if ftype is bool:
        return value if isinstance(value, bool) else _parse_bool(str(value), key)
    if ftype in (int, float):
        if isinstance(value, bool):
            raise LayertraceError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            number = float(value) if ftype is float else int(str(value), 0) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise LayertraceError(f"config key {key!r}: {value!r} is not a valid {ftype.__name__}") from None
        if ftype is int and isinstance(value, float) and value != int(value):
            raise LayertraceError(f"config key {key!r}: {value!r} is not an integer")
        return number
    if ftype is str:
        return str(value)
    return value


def _yaml_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ----------------------------------------------------------------------------- ranges and choices
def _parse_check(spec: str) -> tuple[float | None, bool, float | None, bool]:
    """``"> 0"`` / ``">= 1"`` / ``"[0, 1)"`` -> ``(low, low_closed, high, high_closed)`` (None = unbounded)."""
    text = spec.replace(" ", "")
    for op, closed in ((">=", True), (">", False)):
        if text.startswith(op):
            return float(text[len(op):]), closed, None, False
    for op, closed in (("<=", True), ("<", False)):
        if text.startswith(op):
            return None, False, float(text[len(op):]), closed
    if text[:1] in "[(" and text[-1:] in "])" and "," in text:
        low, high = text[1:-1].split(",")
        return float(low), text[0] == "[", float(high), text[-1] == "]"
    raise ValueError(f"bad range spec {spec!r}")  # a bug in a config class, not user input


def check_field(key: str, value: Any, f: dataclasses.Field) -> None:
    """Check ``value`` against the ``check`` range / ``choices`` / ``length`` of field ``f``.

    Raises:
        LayertraceError: naming the key, the value and the allowed range.
    """
    if value is None:
        return
    choices = f.metadata.get("choices")
    if choices is not None and str(value).lower() not in [str(c).lower() for c in choices]:
        raise LayertraceError(f"config key {key!r}: {value!r} is not one of {', '.join(map(str, choices))}"
                              f"{did_you_mean(str(value), map(str, choices))}")
    length = f.metadata.get("length")
    if length is not None and isinstance(value, (list, tuple)) and len(value) != length:
        raise LayertraceError(f"config key {key!r}: {list(value)!r} must hold {length} values, e.g. "
                              f"{f.default_factory() if f.default_factory is not _MISSING else f.default!r}")
    spec = f.metadata.get("check")
    if spec is None:
        return
    low, low_closed, high, high_closed = _parse_check(spec)
    for item in (value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue  # a non-numeric alternative of a union (a layer spec, a policy name)
        ok = item == item  # NaN is in no range
        ok = ok and (low is None or item > low or (low_closed and item == low))
        ok = ok and (high is None or item < high or (high_closed and item == high))
        if not ok:
            shown = f"in {spec}" if spec.strip()[:1] in "[(" else spec
            raise LayertraceError(f"config key {key!r}: {item!r} is out of range; it must be {shown}")


def validate_config(cfg: Any, prefix: str = "") -> None:
    """Check every field of a (nested) config instance against its declared range / choices.

    :func:`load_config` checks each value as it is parsed; this checks an instance built in code
    (``TrainSection(lr=-1)``) before it is used.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, f"{prefix}{f.name}.")
        else:
            check_field(f"{prefix}{f.name}", value, f)


def describe_check(f: dataclasses.Field) -> str:
    """The range / choices of a field as shown in ``--help`` (``""`` when it declares none)."""
    if "choices" in f.metadata:
        return " | ".join(map(str, f.metadata["choices"]))
    spec = f.metadata.get("check")
    if spec is None:
        return ""
    return f"each {spec}" if f.metadata.get("length") or f.metadata.get("each") else spec


def config_to_dict(cfg: Any) -> dict:
    """A config dataclass (nested) as a plain dict."""
    return dataclasses.asdict(cfg)


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    parts = key.split(".")
    obj = cfg
    for p in parts[:-1]:
        obj = getattr(obj, p)
    setattr(obj, parts[-1], value)


def flatten_keys(data: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and not key.endswith(("kwargs", "overrides")):
            nested = flatten_keys(v, key + ".")
            flat.update(nested)
        else:
            flat[key] = v
    return flat


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; missing file / bad YAML / non-mapping raise one-line errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LayertraceError(f"config file {p} not found; check the path (examples are in configs/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise LayertraceError(f"config file {p} is not text (not UTF-8); give the YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LayertraceError(f"config file {p} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise LayertraceError(f"config file {p} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def _aliases(cls: type) -> dict[str, str]:
    """``{alias: field}``: other spellings of a field (``metadata={"aliases": ("data.name",)}``), so every
    command takes the data options under the names ``layertrace train`` uses (``--data.name``, ...)."""
    out = {}
    for name, f, _ in _leaf_fields(cls):
        for alias in f.metadata.get("aliases", ()):
            out[alias] = name
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Build a ``cls`` instance from defaults, then a YAML file, then dotted overrides.

    Args:
        cls: the config dataclass.
        path: optional YAML file whose (nested) keys mirror the dataclass fields.
        overrides: ``{"dotted.key": value}``; string values are converted to the field's type.

    Raises:
        LayertraceError: unknown key (with a suggestion), wrong type, a value out of its field's range,
            missing/bad YAML.
    """
    cfg = cls()
    leaves = {name: ftype for name, _, ftype in _leaf_fields(cls)}
    fields = {name: f for name, f, _ in _leaf_fields(cls)}
    aliases = _aliases(cls)
    layers = [(read_yaml(path), f"config file {path}")] if path else []
    layers.append((dict(overrides or {}), "override"))
    for data, origin in layers:
        flat = flatten_keys(data) if origin != "override" else dict(data)
        for key, value in flat.items():
            key = aliases.get(key, key)
            if key not in leaves:
                # A dict-valued leaf given as nested YAML keys.
                parent = next((n for n in leaves if key.startswith(n + ".")), None)
                if parent is None:
                    raise LayertraceError(
                        f"unknown config key {key!r} in {origin}{did_you_mean(key, leaves)}; "
                        f"see --help for the valid keys"
                    )
                continue
            value = convert_value(value, leaves[key], key)
            check_field(key, value, fields[key])
            _set_dotted(cfg, key, value)
    return cfg


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config FILE`` and one ``--dotted.key`` option per leaf field of ``cls``.

    Options default to ``argparse.SUPPRESS`` so :func:`overrides_from_args` sees only what the user
    typed; the help shows the dataclass default.
    """
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML config; command-line options override it")
    for name, f, ftype in _leaf_fields(cls):
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else None  # type: ignore[misc]
        )
        help_text = f.metadata.get("help", "")
        shown = ftype
        if typing.get_origin(ftype) in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(ftype) if a is not type(None)]
            shown = non_none[0] if len(non_none) == 1 else ftype  # Optional[int] shows as INT
        tname = getattr(shown, "__name__", str(shown).replace("typing.", ""))
        opts = [f"--{name}"]
        if "_" in name:
            opts.append(f"--{name.replace('_', '-')}")
        opts += [f"--{alias}" for alias in f.metadata.get("aliases", ())]
        parser.add_argument(
            *opts,
            dest=f"cfg::{name}",
            default=argparse.SUPPRESS,
            metavar=f.metadata.get("metavar", tname.upper() if tname in ("int", "float", "str") else "VALUE"),
            help=f"{help_text}{f' [{describe_check(f)}]' if describe_check(f) else ''} (default: {default!r})",
            # A bare boolean flag means true (``--with-lm``); ``--with-lm false`` still works.
            **({"nargs": "?", "const": "true"} if ftype is bool else {}),
        )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``{dotted.key: string}`` overrides the user typed (see :func:`add_config_args`)."""
    return {k[len("cfg::"):]: v for k, v in vars(args).items() if k.startswith("cfg::")}


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Resolve the config of a parsed command line: defaults < ``--config`` YAML < options."""
    return load_config(cls, getattr(args, "config", None), overrides_from_args(args))


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML into ``out_dir`` atomically; returns the path."""
    import yaml

    from .io import atomic_path, to_jsonable

    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_jsonable(config_to_dict(cfg)), sort_keys=False))
    return path
