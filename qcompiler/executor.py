"""Where independent pieces of work run: in this process, or as tasks on a Ray cluster.

``--executor local`` (the default) runs everything in the process.  ``--executor ray`` starts a local Ray runtime
(as many workers as CPUs); ``ray:auto`` or ``ray://host:port`` joins a running cluster.  Ray is an optional
extra (``pip install 'qcompiler[ray]'``); qcompiler does not schedule work itself.

What runs in parallel, and why the results are identical to a local run (tests/test_executor.py):

* calibration: the samples are split into contiguous shards, each task runs its own onnxruntime session over
  its shard and returns observer states, the driver merges them in shard order (min/max and power-of-two
  histograms merge exactly; the per-sample histogram subsampling never depends on batching);
* the per-layer sensitivity scan (``report``, ``mixed-precision``): one task per group of layers, each a full
  evaluation of its own;
* bias correction: per-batch partial sums from each shard, added by the driver in batch order, so the
  floating-point sums are the local ones;
* GPTQ: one group of layers per worker, each task gathering its layers' Hessians over all the samples and
  solving them (the same sums and the same solves as in one process).

All four have one shape, :func:`map_over_graph`: a function mapped over items (shards, groups of layers, and
next decoder blocks) of one or two graphs and the calibration data, results in item order.  It ships each graph
once, serialized with its weights inline (a graph over protobuf's 2 GB limit is not shipped: it returns None and
the caller works in this process, with a remark), puts the data once (file-backed calibration data is read by the
workers from its path, a shared filesystem on a cluster; in-memory data travels in the object store), and gives
each task its graphs, its data and its onnxruntime threads.  A task that dies is retried (``max_retries``); one
that keeps failing is an error naming the shard or layer and the worker, and nothing is written.  The IR knows
nothing of executors: it serializes and reads graphs, and this module moves them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .diagnostics import QCompilerError, UsageError
from .progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

INSTALL_HINT = "install the extra: pip install 'qcompiler[ray]' (Ray 2.x), or use --executor local"


@dataclass
class TaskTiming:
    """Per worker (node:pid): tasks run and seconds spent in them."""

    seconds: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    #: the worker process's peak resident memory, MiB (as its last task saw it)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)

    def add(self, worker: str, seconds: float, peak_rss_mib: float | None = None) -> None:
        self.seconds[worker] = self.seconds.get(worker, 0.0) + seconds
        self.tasks[worker] = self.tasks.get(worker, 0) + 1
        if peak_rss_mib is not None:
            self.peak_rss_mib[worker] = max(self.peak_rss_mib.get(worker, 0.0), peak_rss_mib)

    def lines(self) -> list[str]:
        return [f"  {w}: {self.tasks[w]} task(s), {s:.2f} s"
                + (f", peak RSS {self.peak_rss_mib[w]:.0f} MiB" if w in self.peak_rss_mib else "")
                for w, s in sorted(self.seconds.items())]


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux and macOS)."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024


class Executor:
    """Runs ``fn(item)`` for each item; ``put`` shares a large object with every task once."""

    name = "local"
    workers = 1

    def __init__(self) -> None:
        self.timing = TaskTiming()

    @property
    def parallel(self) -> bool:
        return self.workers > 1

    def put(self, obj: Any) -> Any:
        return obj

    def get(self, ref: Any) -> Any:
        return ref

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, what: str = "task",
            progress: str = "off", labels: Sequence[str] | None = None) -> list[Any]:
        out = []
        with Progress(what, total=len(items), unit="tasks", mode=progress) as bar:
            for item in items:
                t0 = time.perf_counter()
                out.append(fn(item))
                self.timing.add(f"local:{os.getpid()}", time.perf_counter() - t0)
                bar.update(1)
        return out

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    pass


def _run_timed(fn, item):
    """In a Ray worker: the result, the worker's name, the seconds it took and the worker's peak RSS."""
    import socket

    t0 = time.perf_counter()
    res = fn(item)
    return res, f"{socket.gethostname()}:{os.getpid()}", time.perf_counter() - t0, peak_rss_mib()


class RayExecutor(Executor):
    """Ray tasks: ``address`` None starts a local runtime with ``num_cpus`` workers, else joins a cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, max_retries: int = 2,
                 object_store_mib: int | None = None, verbose: bool = False):
        super().__init__()
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray, which is not installed", code="QC130",
                             hint=INSTALL_HINT) from None
        self.ray = ray
        self.max_retries = max_retries
        self._owns = False
        t0 = time.perf_counter()
        if not ray.is_initialized():
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local runtime needs no tokens
            import logging

            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True,
                                      # Ray's own "Started a local Ray instance" line only with -v
                                      "logging_level": logging.INFO if verbose else logging.WARNING}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
                if object_store_mib:
                    kwargs["object_store_memory"] = object_store_mib << 20
            try:
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - a cluster that cannot be reached
                raise QCompilerError(f"cannot start or join the Ray cluster {address or '(local)'}: {exc}",
                                     code="QC131", hint="check the address (ray:auto, ray://host:port)") from None
            self._owns = True
        self.startup_seconds = time.perf_counter() - t0
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(max_retries=max_retries, retry_exceptions=False)(_run_timed)

    @property
    def parallel(self) -> bool:
        return True  # even one Ray worker takes the work off this process (a small driver, a big cluster node)

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def get(self, ref: Any) -> Any:
        return self.ray.get(ref) if isinstance(ref, self.ray.ObjectRef) else ref

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, what: str = "task",
            progress: str = "off", labels: Sequence[str] | None = None) -> list[Any]:
        ray = self.ray
        refs = [self._remote.remote(fn, item) for item in items]
        index = {r: k for k, r in enumerate(refs)}
        out: list[Any] = [None] * len(refs)
        pending = list(refs)
        with Progress(what, total=len(refs), unit="tasks", mode=progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for r in done:
                    k = index[r]
                    try:
                        res, worker, secs, rss = ray.get(r)
                    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's error
                        for p in pending:
                            ray.cancel(p, force=True)
                        raise self._failure(exc, labels[k] if labels else f"{what} {k}") from None
                    out[k] = res
                    self.timing.add(worker, secs, rss)
                    bar.update(1)
        return out

    def _failure(self, exc: Exception, label: str) -> Exception:
        """The error to raise for a task that failed: a qcompiler error from the task as it is (the same error a
        local run gives); a crash after Ray's retries, or any other error, naming the task and the worker."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, QCompilerError):
            return cause
        where = ""
        if getattr(exc, "pid", None) is not None:
            where = f" on worker {getattr(exc, 'ip', '?')}:{exc.pid}"  # type: ignore[attr-defined]
        lines = str(cause if cause is not None else exc).strip().splitlines()
        text = lines[-1] if lines else type(exc).__name__
        crashed = cause is None  # no exception of the task's own: its worker died (after max_retries retries)
        how = f" after {self.max_retries} retries (the worker process died)" if crashed else where
        return QCompilerError(f"{label} failed on the Ray cluster{how}: {text}", code="QC132",
                              hint="nothing was written; rerun with --executor local to see the error in this "
                                   "process")

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(spec: str | Executor | None, *, verbose: bool = False) -> Executor:
    """``local`` / None, ``ray`` (a local runtime), ``ray:auto``, ``ray:ADDRESS`` or ``ray://host:port``.
    ``verbose``: Ray's own start-up lines reach stderr."""
    if isinstance(spec, Executor):
        return spec
    if spec is None or spec == "local":
        return LocalExecutor()
    if spec == "ray":
        return RayExecutor(verbose=verbose)
    if spec.startswith("ray://"):
        return RayExecutor(spec, verbose=verbose)
    if spec.startswith("ray:"):
        return RayExecutor(spec[4:], verbose=verbose)
    raise UsageError(f"unknown executor '{spec}'", code="QC130", hint="use local, ray, ray:auto or ray://host:port")


def resolve(x: Any) -> Any:
    """In a task: an object put in Ray's object store, fetched (anything else as it is)."""
    if type(x).__name__ == "ObjectRef":
        import ray

        return ray.get(x)
    return x


@dataclass(frozen=True)
class TaskInputs:
    """What a task of :func:`map_over_graph` is given: the graphs (in the order they were passed; None stays
    None), the data and the onnxruntime threads it may use (None: onnxruntime's default)."""

    graphs: tuple["gs.Graph | None", ...]
    data: Any
    threads: int | None


@dataclass(frozen=True)
class _GraphTask:
    fn: Callable[[TaskInputs, Any], Any]
    graphs: tuple[Any, ...]  # what Executor.put returned for each serialized graph (None for None)
    data: Any
    item: Any


def _run_graph_task(task: _GraphTask) -> Any:
    """In a task (or this process): the graphs read back from their bytes, then ``fn(inputs, item)``."""
    from .ir.io import graph_from_bytes

    graphs = tuple(None if r is None else graph_from_bytes(resolve(r)) for r in task.graphs)
    return task.fn(TaskInputs(graphs, resolve(task.data), task_threads()), task.item)


def map_over_graph(executor: Executor, graphs: Sequence["gs.Graph | None"], items: Sequence[Any],
                   fn: Callable[[TaskInputs, Any], Any], *, data: Any = None, what: str = "task",
                   progress: str = "off", labels: Sequence[str] | None = None) -> list[Any] | None:
    """``[fn(inputs, item) for item in items]`` on ``executor``, in item order; ``inputs`` carries ``graphs``
    (each shipped once) and ``data`` (put once).  ``fn`` must be a module-level function (it is pickled).  None,
    with nothing run, when a graph is over protobuf's 2 GB limit: the caller then works in this process and says
    so."""
    from .ir.io import serialize_for_runtime

    refs: list[Any] = []
    for g in graphs:
        if g is None:
            refs.append(None)
            continue
        blob = serialize_for_runtime(g)
        if blob is None:
            return None
        refs.append(executor.put(blob))
    data_ref = executor.put(data) if data is not None else None
    tasks = [_GraphTask(fn, tuple(refs), data_ref, item) for item in items]
    return executor.map(_run_graph_task, tasks, what=what, progress=progress, labels=labels)


#: why work runs in this process although the executor is parallel (a remark's text)
TOO_BIG = "the model is over 2 GB (it would be shipped to every worker)"


def task_threads() -> int | None:
    """onnxruntime threads for a task: the CPUs Ray assigned to it (one by default), else None (onnxruntime's
    default, all cores) in this process."""
    try:
        import ray
    except ImportError:
        return None
    try:
        if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - an older Ray without these
        return None
    return max(1, int(cpus)) if cpus else None


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous [start, stop) ranges covering range(n), as even as possible."""
    shards = max(1, min(shards, n)) if n else 1
    base, extra = divmod(n, shards)
    out, start = [], 0
    for k in range(shards):
        stop = start + base + (1 if k < extra else 0)
        out.append((start, stop))
        start = stop
    return out
