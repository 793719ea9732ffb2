"""The pass manager: checks a pipeline's facts, runs its passes, reports what each changed."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import onnx_graphsurgeon as gs

from ..diagnostics import FactOrderError, PassError, QCompilerError, VerificationError
from ..ir.graph import graph_fingerprint, iter_graphs
from ..ir.verify import verify_graph
from .registry import Registry, default_registry
from .base import Pass, PassResult
from .context import PassContext
from .options import build_options
from .pipeline import PassSpec, PipelineSpec, RepeatSpec, expand, load_pipeline, print_pipeline
from .state import state_type


@dataclass
class PassRecord:
    index: int  # 1-based position in the flattened pipeline
    name: str
    spec: str  # canonical text of this element
    modified: bool
    stats: dict[str, Any]
    seconds: float
    step: int = 0  # iteration of the enclosing repeat group (0 if none)


@dataclass
class PipelineResult:
    records: list[PassRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    def summary(self) -> str:
        lines = []
        for r in self.records:
            stats = ", ".join(f"{k}={v}" for k, v in r.stats.items())
            step = f" (step {r.step})" if r.step else ""
            lines.append(f"  {r.index:>2}. {r.spec:<40} {'changed' if r.modified else 'no change':<9} "
                         f"{r.seconds * 1000:8.1f} ms{step}" + (f"  {stats}" if stats else ""))
        return "\n".join(lines)


@dataclass
class _Node:
    """A pass instance with its position."""

    index: int
    spec: PassSpec
    instance: Pass


@dataclass
class _Group:
    max_steps: int
    body: list[Any]


def initial_facts(graph: gs.Graph) -> set[str]:
    facts = set()
    if any(n.op in ("QuantizeLinear", "DequantizeLinear") for g in iter_graphs(graph) for n in g.nodes):
        facts.add("quantized")
    return facts


class PassManager:
    """Run a pipeline over a graph.

    >>> pm = PassManager("cleanup,fold-constants", verify_each=True)     # doctest: +SKIP
    >>> result = pm.run(graph, PassContext())                            # doctest: +SKIP
    """

    def __init__(self, pipeline: str | PipelineSpec | Sequence[Pass], *, verify_each: bool = False,
                 check_modified: bool | None = None, instruments: Sequence[Any] = (),
                 registry: Registry | None = None, verify_result: bool = False):
        self.registry = registry or default_registry()
        #: verify the graph once every pass has run (instruments see a failure as on_verification_failure)
        self.verify_result = verify_result
        if isinstance(pipeline, (list, tuple)) and all(isinstance(p, Pass) for p in pipeline):
            self.spec = PipelineSpec(tuple(PassSpec(p.name, tuple(p.options_dict(include_defaults=False).items()))
                                           for p in pipeline))
            instances = list(pipeline)
        else:
            self.spec = load_pipeline(pipeline, self.registry)  # type: ignore[arg-type]
            instances = None
        self.expanded = expand(self.spec, self.registry)
        self.verify_each = verify_each
        self.check_modified = verify_each if check_modified is None else check_modified
        self.instruments = list(instruments)
        counter = [0]
        inst_iter = iter(instances) if instances is not None else None

        def build(elements) -> list[Any]:
            out: list[Any] = []
            for el in elements:
                if isinstance(el, RepeatSpec):
                    out.append(_Group(el.max_steps, build(el.body)))
                    continue
                counter[0] += 1
                if inst_iter is not None:
                    inst = next(inst_iter)
                else:
                    cls = self.registry.get_pass(el.name)
                    inst = cls(build_options(cls.Options, el.option_map(), el.name))
                out.append(_Node(counter[0], el, inst))
            return out

        self.plan = build(self.expanded.elements)
        self.count = counter[0]

    # -- facts ---------------------------------------------------------------------------------
    def passes(self) -> list[_Node]:
        out: list[_Node] = []

        def walk(items):
            for it in items:
                if isinstance(it, _Group):
                    walk(it.body)
                else:
                    out.append(it)
        walk(self.plan)
        return out

    def check_facts(self, initial: set[str] | None = None) -> None:
        """Fail fast (before any pass runs) when a pass needs a fact no earlier pass provides."""
        facts = set(initial or ())
        provider: dict[str, str] = {f: "the input model" for f in facts}
        killed: dict[str, str] = {}

        def label(n: _Node) -> str:
            return f"'{n.spec.name}' (#{n.index})"

        def walk(items, times=1):
            for _ in range(times):
                for it in items:
                    if isinstance(it, _Group):
                        walk(it.body, 2 if it.max_steps > 1 else 1)
                        continue
                    cls = type(it.instance)
                    for req in sorted(cls.requires):
                        if req in facts:
                            continue
                        hint: str | None
                        if req in killed:
                            msg = (f"pass {label(it)} requires '{req}', but {killed[req]} invalidates it after "
                                   f"{provider.get(req, 'an earlier pass')} provided it")
                            hint = f"move {provider.get(req, 'the providing pass')} after {killed[req]}"
                        else:
                            provs = self.registry.providers_of(req)
                            msg = f"pass {label(it)} requires '{req}', which no earlier pass provides"
                            hint = ("add " + " or ".join(f"'{p}'" for p in provs) + f" before '{it.spec.name}'") \
                                if provs else None
                        raise FactOrderError(msg, pass_name=it.spec.name, hint=hint,
                                             location=print_pipeline(self.spec))
                    for f in cls.invalidates:
                        if f in facts:
                            facts.discard(f)
                            killed[f] = label(it)
                    for f in cls.provides:
                        facts.add(f)
                        provider[f] = label(it)
                        killed.pop(f, None)
        walk(self.plan)

    # -- running -------------------------------------------------------------------------------
    def run(self, graph: gs.Graph, ctx: PassContext | None = None) -> PipelineResult:
        ctx = ctx or PassContext()
        ctx.facts |= initial_facts(graph) | ctx.state.facts()
        self.check_facts(ctx.facts)
        result = PipelineResult()
        t0 = time.perf_counter()
        for inst in self.instruments:
            inst.before_pipeline(graph, ctx, self)
        try:
            self._run_items(self.plan, graph, ctx, result, step=0)
        finally:
            ctx.current_pass = None
        if self.verify_result:
            try:
                # types too: a model onnxruntime would refuse to load is never written (an input whose error
                # only shows once shapes are known, e.g. a Gemm whose dimensions cannot match)
                verify_graph(graph, code="QC210", types=True,
                             pass_name=result.records[-1].name if result.records else None)
            except VerificationError as exc:
                for inst in self.instruments:
                    inst.on_verification_failure(graph, ctx, exc)
                raise
        result.seconds = time.perf_counter() - t0
        for inst in self.instruments:
            inst.after_pipeline(graph, ctx, result)
        return result

    def _run_items(self, items, graph, ctx, result, step) -> bool:
        changed = False
        for it in items:
            if isinstance(it, _Group):
                for k in range(1, it.max_steps + 1):
                    c = self._run_items(it.body, graph, ctx, result, step=k)
                    changed |= c
                    if not c:
                        break
                else:
                    ctx.diagnostics.remark("QC302", f"repeat group stopped after max-steps={it.max_steps} while "
                                           "its passes were still changing the graph")
                continue
            changed |= self._run_pass(it, graph, ctx, result, step)
        return changed

    def _run_pass(self, node: _Node, graph: gs.Graph, ctx: PassContext, result: PipelineResult, step: int) -> bool:
        p = node.instance
        ctx.current_pass = p.name
        for inst in self.instruments:
            inst.before_pass(p, node.index, graph, ctx)
        before = graph_fingerprint(graph) if self.check_modified else None
        t0 = time.perf_counter()
        earlier = [r.name for r in result.records]
        where = f"pass '{p.name}' (#{node.index} of {self.count}" + \
                (f", after {', '.join(earlier[-5:])}" if earlier else "") + ")"
        try:
            res = p.call(graph, ctx)
            if not isinstance(res, PassResult):
                raise PassError(f"{where} returned {type(res).__name__}, not PassResult", pass_name=p.name)
        except QCompilerError as exc:
            d = exc.diagnostic
            exc.diagnostic = dataclasses.replace(d, pass_name=d.pass_name or p.name,
                                                 extra={**d.extra, "position": node.index, "passes_before": earlier})
            for inst in self.instruments:
                inst.on_failure(p, node.index, graph, ctx, exc)
            raise
        except Exception as exc:
            err = PassError(f"{where} failed: {type(exc).__name__}: {exc}", pass_name=p.name,
                            hint="this is a bug in the pass; rerun with --reproducer DIR to save the failing input",
                            extra={"position": node.index, "passes_before": earlier})
            for inst in self.instruments:
                inst.on_failure(p, node.index, graph, ctx, err)
            raise err from exc
        seconds = time.perf_counter() - t0
        cls = type(p)
        missing = [f for f in sorted(cls.provides) if state_type(f) is not None and f not in ctx.state]
        if missing:
            err = PassError(f"{where} declares it provides '{missing[0]}' but left no "
                            f"{state_type(missing[0]).__name__} in ctx.state", pass_name=p.name)  # type: ignore[union-attr]
            for inst in self.instruments:
                inst.on_failure(p, node.index, graph, ctx, err)
            raise err
        for f in cls.invalidates - cls.provides:
            ctx.state.drop(f)
        ctx.facts -= set(cls.invalidates)
        ctx.facts |= set(cls.provides)
        if self.verify_each:
            try:
                verify_graph(graph, pass_name=p.name, code="QC210")
            except VerificationError as exc:
                for inst in self.instruments:
                    inst.on_failure(p, node.index, graph, ctx, exc)
                raise
        if before is not None:
            really = graph_fingerprint(graph) != before
            if really != res.modified:
                err = PassError(f"{where} reported modified={res.modified} but the graph "
                                f"{'changed' if really else 'did not change'}", code="QC211", pass_name=p.name)
                for inst in self.instruments:
                    inst.on_failure(p, node.index, graph, ctx, err)
                raise err
        rec = PassRecord(node.index, p.name, print_pipeline([node.spec]), bool(res.modified), dict(res.stats),
                         seconds, step)
        result.records.append(rec)
        ctx.timings[f"{node.index:02d}-{p.name}"] = ctx.timings.get(f"{node.index:02d}-{p.name}", 0.0) + seconds
        for inst in self.instruments:
            inst.after_pass(p, node.index, graph, ctx, rec)
        return bool(res.modified)


def run_pipeline(graph: gs.Graph, pipeline: str | PipelineSpec, ctx: PassContext | None = None,
                 **kwargs: Any) -> PipelineResult:
    """Convenience: ``run_pipeline(graph, "fold-bn,cle")``."""
    return PassManager(pipeline, **kwargs).run(graph, ctx)
