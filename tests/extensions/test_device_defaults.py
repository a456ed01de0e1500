"""Chunk and block sizes per device type, in one table (issue 12, item 13)."""

from types import SimpleNamespace

import torch
from torch import nn

from extensions import derivatives, device_defaults, kronecker, per_sample


def test_cpu_keeps_the_module_constants_and_cuda_has_its_own_row():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for name, value in device_defaults.TABLE["cpu"].items():
        module = {"JAC_T_CHUNK_ELEMENTS": derivatives}.get(name)
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
