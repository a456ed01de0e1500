"""Peak-memory probes of a training step (CUDA-correct, CPU-tested).

On CUDA ``max_memory_allocated`` after two steps minus the allocation before them; on CPU the
peak resident set size of a *fresh* process (forkserver/spawn) after two steps minus its RSS after
setup, optionally under an address-space cap so that an oversized allocation fails as an
out-of-memory instead of swapping the machine.
"""

from __future__ import annotations

import gc
import multiprocessing
import resource
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.overhead.timing import CapturedError, release_memory

#: A function building a timed step in a fresh process; must be picklable (module level).
StepFactory = Callable[[], Callable[[], Any]]


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
