"""Chunk and block sizes of ``extensions`` per device type: one table, one lookup.

The CPU values were measured on this project's 2-core CPU (see the comments at the constants in
``per_sample``, ``derivatives``, ``kronecker`` and ``ekfac``, which read them from here). The CUDA
values are chosen by reasoning and are **untested on a GPU**: on CPU the chunks are sized to stay in
cache; on a GPU the cost that chunking adds is one kernel launch (and a synchronisation-free Python
loop iteration) per chunk, while caches do not matter at these sizes, so the CUDA chunks are 16x
larger (fewer, larger chunks). At most 2**26 float32 elements (256 MiB) each, they stay far below
the default memory budget of ``extensions.quantities.DEFAULT_MEMORY_BUDGET`` (8 GiB), and the
budget-driven chunking of ``second_order`` still applies on top. The blocked Gram matrix (half the
flops of ``u @ u.T`` on CPU) is a single GEMM on CUDA, where cuBLAS is fastest with one large call.
EKFAC's correction chunk (``ekfac.CORRECTION_CHUNK_ELEMENTS``, rotated per-sample gradients ``[V, n,
out, K]``, squared in place) is 2**21 elements on CPU (measured in the 3C3D EKFAC step: 3C3D conv3's
correction 56-64 ms with 2**23, 54-56 ms with 2**21, a fresh 32 MiB chunk costing page faults) and
2**26 on CUDA, the 256 MiB cap above: each chunk is one einsum (one batched GEMM) whose launch cost
a larger chunk no longer amortises noticeably at 3C3D/All-CNN-C sizes. The per-sample conv
weight gradient ``[Cout, T] x [T, K]`` is formed transposed (``[K, T] x [T, Cout]``, then copied
into place) for ``K <= TRANSPOSED_PRODUCT_MAX_K`` on CPU, where MKL runs the narrow product slowly
(see ``per_sample``); never on CUDA (not measured there).
"""

from __future__ import annotations

import torch

#: constant name -> value, per device type
TABLE: dict[str, dict[str, int]] = {
    "cpu": {
        "UNFOLD_CHUNK_ELEMENTS": 2**21,
        "ROWS_CHUNK_ELEMENTS": 2**22,
        "JAC_T_CHUNK_ELEMENTS": 2**21,
        "GRAM_BLOCK_ROWS": 192,
        "GRAM_MAX_BLOCKS": 6,
        "CORRECTION_CHUNK_ELEMENTS": 2**21,
        "TRANSPOSED_PRODUCT_MAX_K": 127,
    },
    "cuda": {  # untested on a GPU (see the module docstring)
        "UNFOLD_CHUNK_ELEMENTS": 2**25,
        "ROWS_CHUNK_ELEMENTS": 2**26,
        "JAC_T_CHUNK_ELEMENTS": 2**25,
        "GRAM_BLOCK_ROWS": 192,
        "GRAM_MAX_BLOCKS": 1,
        "CORRECTION_CHUNK_ELEMENTS": 2**26,
        "TRANSPOSED_PRODUCT_MAX_K": 0,
    },
}
CPU = TABLE["cpu"]


def tuned(name: str, device: torch.device, cpu_value: int) -> int:
    """Return the value of constant ``name`` for ``device``.

    Args:
        name: a key of :data:`TABLE`'s rows.
        device: the device of the tensors being chunked.
        cpu_value: the module's own constant (read at call time, so tests that monkeypatch it
            still steer the CPU path); used for every device type without a row of its own.

    """
    row = TABLE.get(device.type)
    if row is None or device.type == "cpu":
        return cpu_value
    return row[name]


def thread_balanced(step: int, device: torch.device) -> int:
    """Round a chunk of samples for a batched GEMM down to a multiple of the CPU's threads.

    MKL's batched GEMM splits the batch across threads: an odd chunk on 2 threads leaves one idle
    for the last sample (measured, 2 threads, float32 ``bmm``: All-CNN-C conv5's per-sample
    ``[192, 256] x [256, 1728]`` runs at 74 GMAC/s for 3 samples, 95-100 for 1, 2 or 4). Chunks
    smaller than the thread count (one sample: the GEMM itself is split) are left as they are,
    and so is every chunk on a device with a row of its own in :data:`TABLE` (other than the
    CPU's): like :func:`tuned`, a device type without a row is treated as a CPU.

    Args:
        step: samples per chunk (from a memory or cache bound).
        device: the device of the tensors being chunked.

    """
    threads = torch.get_num_threads()
    if (device.type != "cpu" and device.type in TABLE) or step <= threads:
        return step
    return step - step % threads
