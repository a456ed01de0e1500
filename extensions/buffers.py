"""Reuse of large per-sample result buffers across backward passes (a CPU "caching allocator").

On CPU, torch has no caching allocator: a fresh ``[N, *p.shape]`` BatchGrad buffer is new
``mmap`` memory on every step, and the page faults of its first write cost more than computing it
(3C3D at N=128: 460 MB, the step time 1.4-3x over a plain gradient, depending on how fragmented
memory is). A :class:`BufferPool` hands the previous step's buffer back instead, but only when
nobody outside the pool still refers to it, neither the tensor nor a view of its storage: a
result you keep is never overwritten.

Every ``collect`` context (and so every ``compute`` call) of one model shares that model's pool
(:func:`pool_for`): calling ``compute`` each step, or opening ``collect`` around each step, reuses
memory like one long context. The pool is held through a weak reference to the model, so its
buffers go when the model is garbage-collected; :func:`release` drops them earlier. The price:
up to :attr:`BufferPool.SLOTS` buffers per key stay allocated between steps.

Example::

    >>> import torch
    >>> pool = BufferPool()
    >>> a = pool.empty("w", (4, 3), torch.zeros(1))
    >>> b = pool.empty("w", (4, 3), torch.zeros(1))  # ``a`` is still held: a new buffer
    >>> b is a
    False
    >>> del a, b
    >>> c = pool.empty("w", (4, 3), torch.zeros(1))
    >>> d = c.data_ptr(); del c
    >>> pool.empty("w", (4, 3), torch.zeros(1)).data_ptr() == d  # nobody held it: reused
    True
"""

from __future__ import annotations

import functools
import sys
import weakref
from collections.abc import Hashable

import torch
from torch import Tensor, nn

from extensions.per_sample import empty_large


def _storage_use_count(t: Tensor) -> int | None:
    """Tensors sharing ``t``'s storage, plus one for the query itself (None if unknown)."""
    fn = getattr(torch._C, "_storage_Use_Count", None)
    if fn is None:
        return None
    return fn(t.untyped_storage()._cdata)


@functools.cache
def _pool_only_refs() -> int:
    """``BufferPool._refs`` of a tensor only the pool holds (calibrated: interpreters differ)."""
    pool = BufferPool()
    pool._buffers[None] = [torch.empty(0)]
    return pool._refs(None, 0)


class BufferPool:
    """Keyed, reusable output buffers: up to :attr:`SLOTS` per key, handed out only when free.

    Two slots make the "new results every step" pattern reuse memory too: while step ``k``
    runs, the caller typically still holds step ``k - 1``'s results (``res = compute(...)``
    rebinds ``res`` only after the call returns), so step ``k`` takes the other slot, and step
    ``k + 1`` finds step ``k - 1``'s buffer free again. Inside one long ``collect`` context the
    previous results are dropped before the backward pass, so one slot is used.
    """

    #: buffers kept per key (the oldest is forgotten, not freed, when a third is needed)
    SLOTS = 2

    def __init__(self) -> None:
        self._buffers: dict[Hashable, list[Tensor]] = {}

    def _refs(self, key: Hashable, i: int) -> int:
        buf = self._buffers[key][i]
        return sys.getrefcount(buf)

    def _unshared(self, key: Hashable, i: int) -> bool:
        if self._refs(key, i) > _pool_only_refs():
            return False
        count = _storage_use_count(self._buffers[key][i])
        return count is not None and count <= 2

    def empty(self, key: Hashable, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Return an uninitialised ``shape`` tensor: a free pooled buffer if any, else a new one.

        Args:
            key: what the buffer is for (e.g. ``(module name, "weight")``).
            shape: the wanted shape.
            like: gives dtype and device.

        """
        shape = tuple(shape)
        slots = self._buffers.setdefault(key, [])
        for i in reversed(range(len(slots))):  # the most recently used first
            buf = slots[i]
            fits = (
                tuple(buf.shape) == shape and buf.dtype == like.dtype and buf.device == like.device
            )
            del buf
            if fits and self._unshared(key, i):
                slots.append(slots.pop(i))  # most recently used last
                return slots[-1]
        # forget what cannot serve this request (freed unless the caller holds it) first
        slots[:] = [
            b
            for b in slots
            if tuple(b.shape) == shape and b.dtype == like.dtype and b.device == like.device
        ][-(self.SLOTS - 1) :]
        new = empty_large(shape, like)
        slots.append(new)
        return new

    def scratch(self, name: Hashable, numel: int, like: Tensor) -> Tensor:
        """Return a flat, uninitialised temporary of ``numel`` elements (CPU: reused).

        For values that never leave the function asking (a chunk's unfolded input, per-sample
        rows squared in place): every request under ``name`` (and dtype) gets the same memory,
        grown to the largest request so far, as long as no view of it is still alive (a nested
        request under the same name gets a new buffer). What it costs: the largest chunk per
        name stays allocated with the pool. Off CPU a fresh tensor is returned (a caching
        allocator makes that cheap already, and a GPU's memory is better left to it).

        Args:
            name: what the temporary is for; callers that can be live at once use distinct names.
            numel: the number of elements wanted.
            like: gives dtype and device.

        """
        if like.device.type != "cpu":
            return like.new_empty(numel)
        key = ("scratch", name, like.dtype)
        slots = self._buffers.get(key)
        if slots and slots[-1].numel() >= numel and self._unshared(key, len(slots) - 1):
            return slots[-1][:numel]
        self._buffers[key] = [empty_large((numel,), like)]
        return self._buffers[key][-1]

    def clear(self) -> None:
        """Forget all buffers (results handed out stay valid)."""
        self._buffers.clear()

    def __len__(self) -> int:
        return sum(len(slots) for slots in self._buffers.values())


#: one pool per model, alive as long as the model (``collect`` contexts come and go)
_POOLS: weakref.WeakKeyDictionary[nn.Module, BufferPool] = weakref.WeakKeyDictionary()


def pool_for(model: nn.Module) -> BufferPool:
    """Return the buffer pool of ``model``, shared by all its ``collect`` / ``compute`` calls.

    It lives as long as the model (a weak reference: a garbage-collected model takes its
    buffers with it); :func:`release` frees it earlier.
    """
    pool = _POOLS.get(model)
    if pool is None:
        pool = _POOLS[model] = BufferPool()
    return pool


def release(model: nn.Module) -> None:
    """Forget ``model``'s pooled buffers now (results handed out stay valid)."""
    pool = _POOLS.pop(model, None)
    if pool is not None:
        pool.clear()
