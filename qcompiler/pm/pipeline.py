"""Pipelines as text, JSON and YAML.

Text grammar (MLIR-like)::

    pipeline := element ("," element)*
    element  := NAME [ "{" (KEY "=" VALUE)* "}" ] [ "(" pipeline ")" ]     -- only `repeat` takes a body
    VALUE    := bare-word | 'quoted' | "quoted" | [list,of,items]

Options are separated by whitespace (``calibrate{method=percentile percentile=99.99}``); a bare
value may contain commas, which list-typed options split on.  ``repeat{max-steps=N}(a,b)`` runs
its body until no pass in it reports a change, at most N times.  Named pipelines (``trt-int8``)
are elements too and take options.

``print_pipeline(parse_pipeline(s))`` is the canonical form: options in declaration order, values
normalised, options equal to their default dropped, and ``parse(print(spec)) == spec``.

JSON/YAML form (same schema)::

    {"pipeline": [{"pass": "fold-bn"},
                  {"pass": "cle", "options": {"max-iters": 20}},
                  {"repeat": {"max-steps": 3}, "pipeline": [{"pass": "fold-constants"}, {"pass": "cleanup"}]}]}

A list may also hold plain strings, each parsed as pipeline text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..diagnostics import OptionError, PipelineSyntaxError, QCompilerError, UnknownPassError, UsageError
from ..fsutil import read_structured
from .registry import NamedPipeline, Registry, default_registry
from .options import build_options, convert_value, find_spec, format_value, option_specs

REPEAT_DEFAULT_STEPS = 10
_NEXT_OPTION = re.compile(r",\s*[A-Za-z_][\w-]*\s*=")


class Quoted(str):
    """A value that was quoted in the pipeline text (never read as none/null)."""


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def option_map(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class RepeatSpec:
    body: tuple["Element", ...]
    max_steps: int = REPEAT_DEFAULT_STEPS


Element = Union[PassSpec, RepeatSpec]


@dataclass(frozen=True)
class PipelineSpec:
    elements: tuple[Element, ...]

    def __str__(self) -> str:
        return print_pipeline(self)

    def __iter__(self):
        return iter(self.elements)

    def __len__(self) -> int:
        return len(self.elements)


# --------------------------------------------------------------------------------------------
# text parser
# --------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    name: str
    pos: int
    options: list[tuple[str, int, str, int]]
    body: list["_Raw"] | None
    body_pos: int = -1


def caret(text: str, pos: int, length: int = 1) -> str:
    pos = max(0, min(pos, len(text)))
    return f"\n  {text}\n  {' ' * pos}^{'~' * max(0, length - 1)}"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.i = 0

    def error(self, msg: str, pos: int | None = None, length: int = 1, hint: str | None = None):
        pos = self.i if pos is None else pos
        raise PipelineSyntaxError(f"{msg} at column {pos + 1}" + caret(self.text, pos, length), hint=hint,
                                  location="pipeline")

    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def name(self, what: str) -> tuple[str, int]:
        self.ws()
        start = self.i
        while self.i < len(self.text) and (self.text[self.i].isalnum() or self.text[self.i] in "-_."):
            self.i += 1
        if start == self.i:
            found = self.peek()
            self.error(f"expected {what}, found {repr(found) if found else 'end of text'}",
                       hint="pipelines look like: fold-bn,cle{max-iters=20},repeat{max-steps=2}(cleanup)")
        return self.text[start:self.i], start

    def value(self) -> tuple[str, int]:
        self.ws()
        start = self.i
        c = self.peek()
        if c in ("'", '"'):
            quote = c
            self.i += 1
            out = []
            while self.i < len(self.text) and self.text[self.i] != quote:
                if self.text[self.i] == "\\" and self.i + 1 < len(self.text):
                    self.i += 1
                out.append(self.text[self.i])
                self.i += 1
            if self.i >= len(self.text):
                self.error("unterminated quoted value", start)
            self.i += 1
            return Quoted("".join(out)), start
        if c == "[":
            depth = 0
            while self.i < len(self.text):
                if self.text[self.i] == "[":
                    depth += 1
                elif self.text[self.i] == "]":
                    depth -= 1
                    if depth == 0:
                        self.i += 1
                        return self.text[start:self.i], start
                self.i += 1
            self.error("unterminated list value ('[' without ']')", start)
        while self.i < len(self.text) and not self.text[self.i].isspace() and self.text[self.i] not in "{}()=":
            if self.text[self.i] == "," and _NEXT_OPTION.match(self.text, self.i):
                self.error("options are separated by spaces, not commas",
                           hint="write cle{max-iters=20 tolerance=1e-4}; use [a,b] for list values")
            self.i += 1
        if start == self.i:
            self.error("expected a value after '='")
        return self.text[start:self.i], start

    def element(self) -> _Raw:
        name, pos = self.name("a pass name")
        opts: list[tuple[str, int, str, int]] = []
        self.ws()
        if self.peek() == "{":
            self.i += 1
            while True:
                self.ws()
                if self.peek() == "}":
                    self.i += 1
                    break
                if not self.peek():
                    self.error("unterminated option list ('{' without '}')")
                key, kpos = self.name("an option name")
                self.ws()
                if self.peek() != "=":
                    self.error(f"expected '=' after option '{key}'", hint="options are written key=value")
                self.i += 1
                val, vpos = self.value()
                opts.append((key, kpos, val, vpos))
                self.ws()
                if self.peek() == ",":
                    self.error("options are separated by spaces, not commas",
                               hint="write cle{max-iters=20 tolerance=1e-4}; use [a,b] for list values")
        self.ws()
        body = None
        body_pos = -1
        if self.peek() == "(":
            body_pos = self.i
            self.i += 1
            body = self.sequence(closing=")")
            if self.peek() != ")":
                self.error("expected ')' to close the group")
            self.i += 1
        return _Raw(name, pos, opts, body, body_pos)

    def sequence(self, closing: str = "") -> list[_Raw]:
        items = [self.element()]
        while True:
            self.ws()
            c = self.peek()
            if c == ",":
                self.i += 1
                items.append(self.element())
                continue
            if c == closing:
                return items
            if not c:
                if closing:
                    self.error(f"expected '{closing}' before end of text")
                return items
            self.error(f"unexpected {c!r}", hint="separate passes with ','")

    def parse(self) -> list[_Raw]:
        if not self.text.strip():
            raise PipelineSyntaxError("the pipeline is empty", location="pipeline",
                                      hint="give at least one pass, e.g. --pipeline cleanup")
        items = self.sequence()
        self.ws()
        if self.i != len(self.text):
            self.error(f"unexpected {self.peek()!r}")
        return items


def _resolve(raw: _Raw, text: str, reg: Registry) -> Element:
    if raw.name == "repeat":
        steps = REPEAT_DEFAULT_STEPS
        for key, kpos, val, vpos in raw.options:
            if key.replace("_", "-") != "max-steps":
                raise OptionError(f"unknown option '{key}' for 'repeat' at column {kpos + 1}"
                                  + caret(text, kpos, len(key)),
                                  code="QC103", hint="repeat takes max-steps=N")
            try:
                steps = int(val)
            except ValueError:
                raise OptionError(f"max-steps must be an integer, not '{val}'" + caret(text, vpos, len(val))) from None
            if steps < 1:
                raise OptionError("max-steps must be >= 1" + caret(text, vpos, len(val)))
        if not raw.body:
            raise PipelineSyntaxError(f"'repeat' needs a body: repeat{{max-steps=N}}(pass,...) at column {raw.pos + 1}"
                                      + caret(text, raw.pos, 6))
        return RepeatSpec(tuple(_resolve(r, text, reg) for r in raw.body), steps)
    if raw.body is not None:
        raise PipelineSyntaxError(f"only 'repeat' takes a parenthesised body, not '{raw.name}' (column "
                                  f"{raw.body_pos + 1})" + caret(text, raw.body_pos),
                                  hint="write repeat{max-steps=N}(...)")
    try:
        target = reg.lookup(raw.name)
    except UnknownPassError as exc:
        raise UnknownPassError(f"unknown pass or pipeline '{raw.name}' at column {raw.pos + 1}"
                               + caret(text, raw.pos, len(raw.name)), hint=exc.diagnostic.hint) from None
    opts_cls = target.Options
    values: dict[str, Any] = {}
    for key, kpos, val, vpos in raw.options:
        try:
            spec = find_spec(opts_cls, key, raw.name)
        except OptionError as exc:
            raise OptionError(exc.diagnostic.message + f" at column {kpos + 1}" + caret(text, kpos, len(key)),
                              code="QC103", pass_name=raw.name, hint=exc.diagnostic.hint) from None
        if spec.name in values:
            raise OptionError(f"option '{spec.name}' given twice" + caret(text, kpos, len(key)), pass_name=raw.name)
        try:
            values[spec.name] = convert_value(spec, val, raw.name)
        except OptionError as exc:
            raise OptionError(exc.diagnostic.message + f" at column {vpos + 1}" + caret(text, vpos, len(val)),
                              pass_name=raw.name, hint=exc.diagnostic.hint) from None
    return make_pass_spec(raw.name, values, reg)


def make_pass_spec(name: str, values: dict[str, Any], registry: Registry | None = None) -> PassSpec:
    """A PassSpec with typed options in declaration order and defaults dropped (canonical)."""
    target = (registry or default_registry()).lookup(name)
    opts = build_options(target.Options, values, name)  # validates
    ordered = []
    for spec in option_specs(target.Options):
        v = getattr(opts, spec.field)
        if spec.name in {k.replace("_", "-") for k in values} and v != spec.default:
            ordered.append((spec.name, v))
    return PassSpec(name, tuple(ordered))


def parse_pipeline(text: str, registry: Registry | None = None) -> PipelineSpec:
    """Parse pipeline text into a canonical spec (names and options checked against the registry)."""
    reg = registry or default_registry()
    raws = _Parser(text).parse()
    return PipelineSpec(tuple(_resolve(r, text, reg) for r in raws))


def _print_element(el: Element) -> str:
    if isinstance(el, RepeatSpec):
        return f"repeat{{max-steps={el.max_steps}}}(" + ",".join(_print_element(e) for e in el.body) + ")"
    if not el.options:
        return el.name
    return el.name + "{" + " ".join(f"{k}={format_value(v)}" for k, v in el.options) + "}"


def print_pipeline(spec: PipelineSpec | list) -> str:
    elements = spec.elements if isinstance(spec, PipelineSpec) else spec
    return ",".join(_print_element(e) for e in elements)


def with_all_options(spec: PipelineSpec, registry: Registry | None = None) -> str:
    """Pipeline text with every option spelled out (defaults included)."""
    reg = registry or default_registry()

    def one(el: Element) -> str:
        if isinstance(el, RepeatSpec):
            return f"repeat{{max-steps={el.max_steps}}}(" + ",".join(one(e) for e in el.body) + ")"
        target = reg.lookup(el.name)
        opts = build_options(target.Options, el.option_map(), el.name)
        parts = [f"{s.name}={format_value(getattr(opts, s.field))}" for s in option_specs(target.Options)]
        return el.name + ("{" + " ".join(parts) + "}" if parts else "")
    return ",".join(one(e) for e in spec.elements)


def expand(spec: PipelineSpec, registry: Registry | None = None, _depth: int = 0) -> PipelineSpec:
    """Replace named pipelines by their passes (recursively)."""
    reg = registry or default_registry()
    if _depth > 16:
        raise UsageError("named pipelines nest too deeply (a pipeline that includes itself?)", code="QC101")
    out: list[Element] = []
    for el in spec.elements:
        if isinstance(el, RepeatSpec):
            out.append(RepeatSpec(expand(PipelineSpec(el.body), reg, _depth + 1).elements, el.max_steps))
            continue
        target = reg.lookup(el.name)
        if isinstance(target, NamedPipeline):
            opts = build_options(target.Options, el.option_map(), el.name)
            inner = target.build(opts)
            if isinstance(inner, str):
                inner = parse_pipeline(inner, reg)
            out.extend(expand(inner, reg, _depth + 1).elements)
        else:
            out.append(el)
    return PipelineSpec(tuple(out))


# --------------------------------------------------------------------------------------------
# JSON / YAML
# --------------------------------------------------------------------------------------------


def to_data(spec: PipelineSpec) -> dict[str, Any]:
    def one(el: Element) -> Any:
        if isinstance(el, RepeatSpec):
            return {"repeat": {"max-steps": el.max_steps}, "pipeline": [one(e) for e in el.body]}
        d: dict[str, Any] = {"pass": el.name}
        if el.options:
            d["options"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in el.options}
        return d
    return {"pipeline": [one(e) for e in spec.elements]}


def to_json(spec: PipelineSpec) -> str:
    return json.dumps(to_data(spec), indent=2)


def to_yaml(spec: PipelineSpec) -> str:
    import yaml

    return yaml.safe_dump(to_data(spec), sort_keys=False)


def _from_items(items: Any, where: str, reg: Registry) -> list[Element]:
    if isinstance(items, str):
        return list(parse_pipeline(items, reg).elements)
    if not isinstance(items, list) or not items:
        raise UsageError(f"{where}: 'pipeline' must be a non-empty list or a pipeline string", code="QC106")
    out: list[Element] = []
    for k, item in enumerate(items):
        here = f"{where}[{k}]"
        if isinstance(item, str):
            out.extend(parse_pipeline(item, reg).elements)
        elif isinstance(item, dict) and "repeat" in item:
            extra = set(item) - {"repeat", "pipeline", "passes"}
            if extra:
                raise UsageError(f"{here}: unknown key(s) {sorted(extra)} in a repeat group", code="QC106",
                                 hint="a repeat group has 'repeat' ({max-steps: N}) and 'pipeline' (list)")
            rep = item["repeat"] or {}
            if not isinstance(rep, dict) or set(rep) - {"max-steps", "max_steps"}:
                raise UsageError(f"{here}: 'repeat' takes {{max-steps: N}}", code="QC106")
            steps = rep.get("max-steps", rep.get("max_steps", REPEAT_DEFAULT_STEPS))
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise UsageError(f"{here}: max-steps must be a positive integer, not {steps!r}", code="QC106")
            body = item.get("pipeline", item.get("passes"))
            out.append(RepeatSpec(tuple(_from_items(body, here + ".pipeline", reg)), steps))
        elif isinstance(item, dict) and "pass" in item:
            extra = set(item) - {"pass", "options"}
            if extra:
                raise UsageError(f"{here}: unknown key(s) {sorted(extra)}", code="QC106",
                                 hint="a pass entry has 'pass' and optional 'options'")
            opts = item.get("options") or {}
            if not isinstance(opts, dict):
                raise UsageError(f"{here}: 'options' must be a mapping", code="QC106")
            name = item["pass"]
            if not isinstance(name, str):
                raise UsageError(f"{here}: 'pass' must be a string", code="QC106")
            try:
                out.append(make_pass_spec(name, opts, reg))
            except QCompilerError as exc:
                raise type(exc)(f"{here}: {exc.diagnostic.message}", code=exc.code, hint=exc.diagnostic.hint,
                                pass_name=exc.diagnostic.pass_name) from None
        else:
            raise UsageError(f"{here}: expected a pass name string, {{pass: ..., options: ...}} or "
                             "{repeat: ..., pipeline: [...]}", code="QC106")
    return out


def from_data(data: Any, where: str = "pipeline file", registry: Registry | None = None) -> PipelineSpec:
    if isinstance(data, dict):
        if "pipeline" not in data:
            raise UsageError(f"{where}: expected a top-level 'pipeline' key", code="QC106")
        data = data["pipeline"]
    return PipelineSpec(tuple(_from_items(data, where, registry or default_registry())))


def load_pipeline(source: str | PipelineSpec, registry: Registry | None = None) -> PipelineSpec:
    """Pipeline from text, or from a .json/.yaml/.yml file path."""
    if isinstance(source, PipelineSpec):
        return source
    p = Path(source)
    if p.suffix.lower() in (".json", ".yaml", ".yml") and len(source) < 4096:
        if not p.exists():
            raise UsageError(f"pipeline file '{source}' not found", code="QC106")
        try:
            data = read_structured(p)
        except ValueError as exc:
            raise UsageError(f"cannot parse pipeline file '{source}': {exc}", code="QC106") from None
        return from_data(data, where=str(p), registry=registry)
    return parse_pipeline(source, registry)


def flatten(spec: PipelineSpec) -> list[PassSpec]:
    out: list[PassSpec] = []
    for el in spec.elements:
        if isinstance(el, RepeatSpec):
            out.extend(flatten(PipelineSpec(el.body)))
        else:
            out.append(el)
    return out
