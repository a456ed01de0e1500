"""Interleaved step timing (CUDA-correct, CPU-tested); peak memory is in :mod:`.memory`.

The timer runs every variant once per round, in an order that rotates from round to round, after
warm-up; a variant's time is one call bracketed by device synchronisation (a no-op on CPU, so the
CPU path exercises the same code). Summaries are medians and interquartile ranges over rounds.
On CUDA, :func:`device_time_call` reads CUDA events instead (the device's execution time).
"""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


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
