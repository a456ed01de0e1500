"""Interleaved step timing and peak-memory measurement (CUDA-correct, CPU-tested).

The timer runs every variant once per round, in an order that rotates from round to round, after
warm-up; a variant's time is one call bracketed by device synchronisation (a no-op on CPU, so the
CPU path exercises the same code). Summaries are medians and interquartile ranges over rounds.

Peak memory: on CUDA ``max_memory_allocated`` after two steps minus the allocation before them;
on CPU the peak resident set size of a *fresh* process (forkserver/spawn) after two steps minus its
RSS after setup, optionally under an address-space cap so that an oversized allocation fails as
an out-of-memory instead of swapping the machine.
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: A function building a timed step in a fresh process; must be picklable (module level).
StepFactory = Callable[[], Callable[[], Any]]


def synchronize(device: str | torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: str | torch.device) -> float:
    """Seconds one call of ``fn`` takes, synchronising ``device`` before and after the clock."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def rotated_order(names: Sequence[str], round_index: int) -> list[str]:
    """Return ``names`` rotated left by ``round_index`` (every variant leads once per cycle)."""
    if not names:
        return []
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


@dataclass(frozen=True)
class Summary:
    """Median, interquartile range and minimum of per-round times in seconds."""

    median_s: float
    iqr_s: float
    min_s: float
    rounds: int

    @classmethod
    def of(cls, times: Sequence[float]) -> Summary:
        """Summarise ``times`` (at least one value)."""
        if not times:
            raise ValueError("cannot summarise an empty list of times")
        values = sorted(times)
        if len(values) >= 2:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = q3 = values[0]
        return cls(statistics.median(values), q3 - q1, values[0], len(values))


class CapturedError(RuntimeError):
    """A failure kept as text plus its exception type names, without the original's frames.

    A stored exception keeps its traceback, and the traceback every local of the failing call: an
    out-of-memory variant's tensors would stay alive and make the next variant run out of memory
    too. ``type_names`` holds the class names of the original exception's MRO, so callers can
    still classify it (e.g. out-of-memory); ``str()`` is ``Type: message``.
    """

    def __init__(self, type_names: Sequence[str], message: str):
        self.type_names = tuple(type_names)
        super().__init__(f"{self.type_names[0]}: {message}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.type_names, str(self).split(": ", 1)[-1]))

    @classmethod
    def of(cls, err: BaseException) -> CapturedError:
        """Capture ``err``'s type names and message and clear the frames of its traceback."""
        if isinstance(err, CapturedError):
            return cls(err.type_names, str(err).split(": ", 1)[-1])
        captured = cls([c.__name__ for c in type(err).__mro__], str(err))
        for chained in (err, err.__cause__, err.__context__):
            if chained is not None and chained.__traceback__ is not None:
                traceback.clear_frames(chained.__traceback__)
        return captured


@dataclass
class InterleavedResult:
    """Per-variant round times, and the (captured) failure of each variant that failed."""

    times: dict[str, list[float]]
    errors: dict[str, CapturedError]

    def summary(self, name: str) -> Summary:
        """Summarise variant ``name``'s rounds."""
        return Summary.of(self.times[name])


def interleaved_times(
    fns: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    after: Mapping[str, Callable[[], Any]] | None = None,
    on_call: Callable[[str], Any] | None = None,
    catch: tuple[type[BaseException], ...] = (Exception,),
    on_error: Mapping[str, Callable[[], Any]] | None = None,
) -> InterleavedResult:
    """Time every function in ``fns`` ``rounds`` times, round-robin with rotating order.

    Args:
        fns: variant name -> zero-argument callable (one training step).
        rounds: timed rounds (each variant is called once per round).
        warmup: untimed rounds before the timed ones (same rotation).
        device: the device to synchronise around each call.
        after: optional variant name -> callable run after each call, outside the clock (e.g.
            releasing the step's results so that they do not pile up across variants).
        on_call: optional callback with the variant name after each call (progress bars).
        catch: exceptions that drop a variant (recorded in ``errors``) instead of aborting.
        on_error: optional variant name -> callable run once when that variant fails (e.g.
            dropping its gradients), before memory is released for the next variant.

    Returns:
        The timed rounds of every variant that never failed, and the errors of those that did
        (as :class:`CapturedError`: message and type names, no frames, so nothing of the failed
        call stays alive).

    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    after = after or {}
    on_error = on_error or {}
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, CapturedError] = {}
    for round_index in range(warmup + rounds):
        for name in rotated_order(names, round_index):
            if name in errors:
                continue
            try:
                elapsed = time_call(fns[name], device)
                if name in after:
                    after[name]()
            except catch as err:  # the variant fails, the run goes on
                errors[name] = CapturedError.of(err)
            finally:
                if on_call is not None:
                    on_call(name)
            if name in errors:  # outside the except block: the exception and its frames are gone
                times.pop(name, None)
                if name in on_error:
                    on_error[name]()
                release_memory(device)
                continue
            if round_index >= warmup:
                times[name].append(elapsed)
    return InterleavedResult({k: v for k, v in times.items() if k not in errors}, errors)


def release_memory(device: str | torch.device) -> None:
    """Collect garbage and return cached device memory (after a failure, between variants)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------


def cuda_peak_memory_mb(fn: Callable[[], Any], device: str | torch.device, steps: int = 2) -> float:
    """Peak CUDA memory of ``steps`` calls of ``fn`` above the allocation before them, in MB."""
    device = torch.device(device)
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    for _ in range(steps):
        fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def cuda_peak_memory_from_empty_mb(
    build: Callable[[], Callable[[], Any]],
    device: str | torch.device,
    steps: int = 2,
    release: Callable[[Any], Any] | None = None,
) -> float:
    """Peak CUDA memory of a variant built from the empty state, in MB: one protocol for all.

    Memory is released (``gc`` + ``empty_cache``), the peak counter reset and the baseline read
    *before* ``build()`` creates the variant's model, hooks and any pooled buffers; then
    ``steps`` calls run. The peak above the baseline therefore counts the model, a backend's
    persistent buffers (ours' pooled scratch) and its per-step allocations (BackPACK's) alike.

    Args:
        build: returns the variant's zero-argument step call (builds model and backend).
        device: the CUDA device.
        steps: calls measured (two: the second sees the first's results and buffers).
        release: optional callable given the built call afterwards (e.g. closing its hooks).

    """
    device = torch.device(device)
    release_memory(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn = build()
    try:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    finally:
        if release is not None:
            release(fn)
        del fn
        release_memory(device)
    return (peak - base) / 2**20


def device_time_call(fn: Callable[[], Any], device: str | torch.device) -> float:
    """Seconds one call of ``fn`` takes on ``device``: CUDA events on CUDA, else the wall clock.

    On CUDA the events are recorded on the current stream around the call and read after a
    synchronisation, so the time is the device's execution time of the queued work, not the
    host's launch time.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return time_call(fn, device)
    synchronize(device)
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / 1e3


def _status_kb(field: str) -> int | None:
    """Read a ``kB`` field (VmRSS, VmHWM, VmSize) of /proc/self/status, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Resident set size of this process in MB."""
    kb = _status_kb("VmRSS")
    if kb is None:  # no procfs: fall back to the peak (an upper bound)
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (since the last reset where supported)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def _cap_address_space(extra_mb: float | None) -> None:
    """Limit this process's address space to its current size plus ``extra_mb``."""
    if extra_mb is None:
        return
    size_kb = _status_kb("VmSize")
    if size_kb is None:
        return
    limit = int(size_kb * 1024 + extra_mb * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _rss_worker(
    factory: StepFactory, steps: int, threads: int, cap_mb: float | None
) -> dict[str, Any]:
    """Build a step in this fresh process and measure its peak RSS over ``steps`` calls."""
    torch.set_num_threads(threads)
    fn = factory()
    gc.collect()
    base = current_rss_mb()
    exact = reset_peak_rss()
    _cap_address_space(cap_mb)
    for _ in range(steps):
        fn()
    return {"peak_mem_mb": max(peak_rss_mb() - base, 0.0), "exact_reset": exact}


class SubprocessError(CapturedError):
    """A failure in a measuring process, carried back as text plus its exception type names.

    Exceptions are not sent as objects: they may reference tensors or modules (shared through
    file descriptors that vanish with the child). ``type_names`` holds the class names of the
    original exception's MRO, so callers can still classify it (e.g. out-of-memory).
    """


def _rss_entry(conn: Any, factory: StepFactory, steps: int, threads: int, cap_mb: float | None):
    """Child entry: send ``("ok", result)`` or ``("error", (type names, message))``."""
    try:
        payload: tuple[str, Any] = ("ok", _rss_worker(factory, steps, threads, cap_mb))
    except BaseException as err:  # report every failure to the parent, as plain text
        payload = ("error", ([c.__name__ for c in type(err).__mro__], str(err)))
    try:
        conn.send(payload)
    finally:
        conn.close()


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """Pick the cheapest clean start method: forkserver (``preload`` imported once), else spawn.

    The forkserver is a clean process that has run no torch computation; every child is forked
    from it, so importing heavy modules there once saves seconds per measurement. The first call
    in a process fixes the preload list.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


def subprocess_peak_rss_mb(
    factory: StepFactory,
    *,
    steps: int = 2,
    threads: int | None = None,
    cap_mb: float | None = None,
    timeout_s: float | None = None,
    preload: Sequence[str] = ("torch",),
) -> dict[str, Any]:
    """Peak RSS of ``steps`` calls of the step ``factory()`` builds, in a fresh process.

    Args:
        factory: picklable zero-argument callable returning the step (built in the child).
        steps: calls after setup (two: the second sees the first's results still alive).
        threads: torch threads in the child (default: this process's).
        cap_mb: optional address-space headroom; a bigger allocation raises out-of-memory.
        timeout_s: optional limit for the child.
        preload: modules the forkserver imports once for all children (Linux).

    Returns:
        ``{"peak_mem_mb": float, "exact_reset": bool}``.

    Raises:
        SubprocessError: what the step raised in the child (type names and message).
        MemoryError: the child was killed (SIGKILL, e.g. by the kernel's OOM killer).
        TimeoutError: past ``timeout_s``.

    """
    threads = threads or torch.get_num_threads()
    ctx = _context(preload)
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_rss_entry, args=(sender, factory, steps, threads, cap_mb))
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            proc.kill()
            proc.join()
            raise TimeoutError(f"memory measurement exceeded {timeout_s} s")
        status, value = receiver.recv()
    except EOFError:  # the child died without answering
        proc.join()
        if proc.exitcode == -signal.SIGKILL:
            raise MemoryError(
                "the measuring process was killed (SIGKILL; probably the kernel's OOM killer)"
            ) from None
        raise RuntimeError(f"the measuring process exited with code {proc.exitcode}") from None
    finally:
        receiver.close()
    proc.join()
    if status == "error":
        raise SubprocessError(*value)
    return value
