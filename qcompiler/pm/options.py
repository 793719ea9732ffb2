"""Typed pass options.

A pass declares its options as a frozen dataclass whose fields are made with :func:`option`::

    @dataclass(frozen=True)
    class Options:
        max_iters: int = option(20, "maximum number of equalization sweeps", min=1)
        method: str = option("min_max", "observer", choices=("min_max", "entropy"))

Field ``max_iters`` is spelled ``max-iters`` in pipelines, JSON/YAML and the CLI.  Supported types:
``int``, ``float``, ``bool``, ``str``, ``tuple[str, ...]``, ``tuple[int, ...]``, ``tuple[float, ...]``
and ``X | None``.  Values given as text (pipeline strings) are converted; values from JSON/YAML are
checked.  Every error names the pass, the option and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from ..diagnostics import OptionError

_BARE = re.compile(r"^[A-Za-z0-9_.\-+*/:@#%^~|<>!?$]+$")


def option(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, name: str | None = None) -> Any:
    """A dataclass field carrying the help text and constraints used by parsers, docs and the CLI.  ``name``: the
    option's spelling when it cannot be the field's (``float``, a builtin's name, for field ``float_type``)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min, "max": max, "name": name}
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass(frozen=True)
class OptionSpec:
    name: str  # kebab-case
    field: str  # python identifier
    type: Any
    default: Any
    help: str
    choices: tuple | None
    min: float | None
    max: float | None

    @property
    def base_type(self) -> Any:
        return _strip_optional(self.type)[0]

    @property
    def optional(self) -> bool:
        return _strip_optional(self.type)[1]

    def type_name(self) -> str:
        t = self.base_type
        if typing.get_origin(t) is tuple:
            inner = typing.get_args(t)[0]
            name = f"list of {inner.__name__}"
        else:
            name = getattr(t, "__name__", str(t))
        if self.choices:
            name = "one of " + "|".join(str(c) for c in self.choices)
        return name + (" or none" if self.optional else "")


def kebab(name: str) -> str:
    return name.replace("_", "-")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


_SPEC_CACHE: dict[type, list[OptionSpec]] = {}


def option_specs(cls: type) -> list[OptionSpec]:
    """The options of an Options dataclass, in declaration order."""
    if cls in _SPEC_CACHE:
        return _SPEC_CACHE[cls]
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta: Any = f.metadata or {}
        specs.append(OptionSpec(meta.get("name") or kebab(f.name), f.name, hints[f.name], f.default,
                                meta.get("help", ""), meta.get("choices"), meta.get("min"), meta.get("max")))
    _SPEC_CACHE[cls] = specs
    return specs


def find_spec(cls: type, key: str, owner: str) -> OptionSpec:
    specs = option_specs(cls)
    norm = key.replace("_", "-")
    for s in specs:
        if s.name == norm:
            return s
    names = [s.name for s in specs]
    close = difflib.get_close_matches(norm, names, n=1)
    if names:
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"options of '{owner}': {', '.join(names)}"
    else:
        hint = f"'{owner}' takes no options"
    raise OptionError(f"unknown option '{key}' for '{owner}'", code="QC103", pass_name=owner, hint=hint)


def _bad(owner: str, spec: OptionSpec, value: Any, why: str) -> OptionError:
    return OptionError(f"invalid value {value!r} for option '{spec.name}' of '{owner}': {why}", pass_name=owner,
                       hint=f"'{spec.name}' expects {spec.type_name()}" + (f" ({spec.help})" if spec.help else ""))


def _convert_scalar(tp: Any, value: Any, owner: str, spec: OptionSpec) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise _bad(owner, spec, value, "expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _bad(owner, spec, value, "expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value, 0) if value.lower().startswith(("0x", "0b")) else int(value)
            except ValueError:
                pass
        raise _bad(owner, spec, value, "expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _bad(owner, spec, value, "expected a number")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise _bad(owner, spec, value, "expected a number") from None
        else:
            raise _bad(owner, spec, value, "expected a number")
        if math.isnan(out):
            raise _bad(owner, spec, value, "NaN is not allowed")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(owner, spec, value, "expected a string")
    raise TypeError(f"unsupported option type {tp}")


def split_list(text: str) -> list[str]:
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    if not s.strip():
        return []
    return [p.strip() for p in s.split(",")]


def convert_value(spec: OptionSpec, value: Any, owner: str) -> Any:
    tp, optional = _strip_optional(spec.type)
    # a quoted 'none' in a pipeline string is the text "none" (the parser passes a str subclass)
    if value is None or (type(value) is str and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise _bad(owner, spec, value, "a value is required")
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        items = split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _bad(owner, spec, value, "expected a list")
        out = tuple(_convert_scalar(inner, v, owner, spec) for v in items)
        if spec.choices:
            for v in out:
                if v not in spec.choices:
                    raise _bad(owner, spec, v, "not one of " + ", ".join(map(str, spec.choices)))
        return out
    out = _convert_scalar(tp, value, owner, spec)
    if spec.choices and out not in spec.choices:
        close = difflib.get_close_matches(str(out), [str(c) for c in spec.choices], n=1)
        raise OptionError(f"invalid value '{out}' for option '{spec.name}' of '{owner}'", pass_name=owner,
                          hint=(f"did you mean '{close[0]}'? " if close else "") +
                          "choose one of: " + ", ".join(map(str, spec.choices)))
    if spec.min is not None and out < spec.min:
        raise _bad(owner, spec, value, f"must be >= {spec.min}")
    if spec.max is not None and out > spec.max:
        raise _bad(owner, spec, value, f"must be <= {spec.max}")
    return out


def build_options(cls: type, values: dict[str, Any], owner: str) -> Any:
    """Instantiate ``cls`` from kebab- or snake-case keys; values may be text or JSON values."""
    kwargs = {}
    for key, value in values.items():
        spec = find_spec(cls, key, owner)
        kwargs[spec.field] = convert_value(spec, value, owner)
    return cls(**kwargs)


def format_value(value: Any) -> str:
    """Canonical text of an option value (what the pipeline printer writes)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return f"{value:.1f}"
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    s = str(value)
    if s and _BARE.match(s) and s.lower() not in ("none", "null", "true", "false"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def options_dict(instance: Any, *, include_defaults: bool = True) -> dict[str, Any]:
    out = {}
    for spec in option_specs(type(instance)):
        v = getattr(instance, spec.field)
        if include_defaults or v != spec.default:
            out[spec.name] = list(v) if isinstance(v, tuple) else v
    return out
