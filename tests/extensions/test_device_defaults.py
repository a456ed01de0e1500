"""Chunk and block sizes per device type, in one table (issue 12, item 13)."""

from types import SimpleNamespace

import torch
from torch import nn

from extensions import derivatives, device_defaults, ekfac, kronecker, per_sample


def test_cpu_keeps_the_module_constants_and_cuda_has_its_own_row():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for name, value in device_defaults.TABLE["cpu"].items():
        module = {"JAC_T_CHUNK_ELEMENTS": derivatives, "CORRECTION_CHUNK_ELEMENTS": ekfac}.get(name)
        module = module or (kronecker if name.startswith("GRAM") else per_sample)
        assert getattr(module, name) == value  # the modules read their CPU values from the table
        assert device_defaults.tuned(name, cpu, value) == value
        assert device_defaults.tuned(name, cuda, value) == device_defaults.TABLE["cuda"][name]
    assert device_defaults.tuned("GRAM_MAX_BLOCKS", torch.device("meta"), 6) == 6  # no row: CPU


def test_conv_chunks_on_cuda_are_fewer_and_larger():
    conv = nn.Conv2d(3, 64, 5, padding=2)  # 3C3D's first layer at N=128
    g = torch.empty(128, 64, 32, 32, device="meta")
    on_cpu = per_sample.conv2d_chunk_size(SimpleNamespace(shape=(128,), device=g.device), conv, g)
    x_cuda = SimpleNamespace(shape=(128,), device=torch.device("cuda"))
    on_cuda = per_sample.conv2d_chunk_size(x_cuda, conv, g)
    assert on_cpu < 128 and on_cuda == 128  # one chunk for the whole batch on the GPU


def _rotated_chunk_samples(channels: int, size: int, v: int, max_elements: int | None) -> list[int]:
    """Samples per chunk of EKFAC's correction on a ``channels``-to-``channels`` 3x3 'same' conv.

    Meta tensors stand in for the device (N=128, ``V`` columns, ``size x size`` images); each
    chunk's request for a temporary of rotated per-sample gradients ``[V, n, out, K]`` gives its
    ``n``. The chunks cover the batch exactly once.
    """
    k = 9 * channels
    conv = nn.Conv2d(channels, channels, 3, padding=1, device="meta")
    rec = SimpleNamespace(module=conv, input=torch.empty(128, channels, size, size, device="meta"))
    mat = torch.empty(v, 128, channels, size, size, device="meta")
    q_b = torch.empty(channels, channels, device="meta")
    q_a = torch.empty(k, k, device="meta")
    samples = []

    def scratch(name, numel, like):
        if name == "rotated":
            samples.append(numel // (v * channels * k))
        return like.new_empty(numel)

    ekfac.corrections(rec, mat, q_b, q_a, max_elements, scratch)
    assert sum(samples) == 128
    return samples


def _correction_chunks(monkeypatch, device_row: str | None, max_elements: int | None) -> int:
    """Sample chunks EKFAC's correction takes for an All-CNN-C 96->96 3x3 layer, N=128, V=100.

    The table's row for ``device_row`` is put under ``meta`` (``None``: meta has no row, so it
    gets the CPU value).
    """
    if device_row is not None:
        monkeypatch.setitem(device_defaults.TABLE, "meta", device_defaults.TABLE[device_row])
    return len(_rotated_chunk_samples(96, 8, 100, max_elements))


def test_ekfac_correction_chunk_is_in_the_table_and_larger_on_cuda(monkeypatch):
    """One [V, n, out, K] = [100, 1, 96, 864] sample is 8.3M elements: 1 sample per chunk on
    CPU (2**21), 8 on CUDA (2**26); the memory budget (``max_elements``) still bounds both."""
    assert device_defaults.TABLE["cuda"]["CORRECTION_CHUNK_ELEMENTS"] == 2**26
    assert _correction_chunks(monkeypatch, None, None) == 128
    assert _correction_chunks(monkeypatch, "cuda", None) == 128 // 8
    assert _correction_chunks(monkeypatch, "cuda", 4 * 100 * 96 * 864) == 128 // 4


def test_thread_balanced_rounds_cpu_chunks_down_to_a_multiple_of_the_threads(monkeypatch):
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert [device_defaults.thread_balanced(s, cpu) for s in (1, 2, 3, 35, 36)] == [1, 2, 2, 34, 36]
    assert device_defaults.thread_balanced(3, meta) == 2  # no row of its own: a CPU
    assert device_defaults.thread_balanced(3, cuda) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert [device_defaults.thread_balanced(s, cpu) for s in (3, 4, 10, 37)] == [3, 4, 8, 36]


def _conv5_correction_chunk_samples(monkeypatch, threads: int) -> set[int]:
    """Samples per chunk of EKFAC-MC's correction on All-CNN-C's conv5 (192->192 3x3 on 16x16).

    The memory bounds alone give 3 samples a chunk (2**21 // (2 * 192 * 1728)).
    """
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    return set(_rotated_chunk_samples(192, 16, 1, None))


def test_cpu_chunks_of_batched_gemms_are_a_multiple_of_the_threads(monkeypatch):
    """An odd chunk leaves one of 2 threads idle for its last sample (74 vs 95-100 GMAC/s)."""
    assert _conv5_correction_chunk_samples(monkeypatch, 1) == {3, 2}  # 42 chunks of 3, one of 2
    assert _conv5_correction_chunk_samples(monkeypatch, 2) == {2}
    conv1 = nn.Conv2d(3, 64, 5)  # 3C3D's first layer at N=128: the cache bound is 35 samples
    x = torch.empty(128, 3, 32, 32, device="meta")
    g = torch.empty(128, 64, 28, 28, device="meta")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert per_sample.conv2d_chunk_size(x, conv1, g) == 35
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert per_sample.conv2d_chunk_size(x, conv1, g) == 34
