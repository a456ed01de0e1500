"""The DeepOBS protocol: split sizes, drop_last step counts, disjointness, reshuffling,
reproducibility and resumption; the split itself against DeepOBS's own sampler code."""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from problems.data import DeepOBSData, deepobs_split, load_problem_data, synthetic_arrays


@pytest.fixture(scope="module")
def cifar10_synthetic():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return synthetic_arrays(10, seed=0)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "batch_size, steps, eval_batches", [(128, 312, 78), (256, 156, 39)], ids=["bs128", "bs256"]
)
def test_split_sizes_and_drop_last_step_counts(cifar10_synthetic, batch_size, steps, eval_batches):
    data = DeepOBSData(
        *cifar10_synthetic, dataset="cifar10", num_classes=10, batch_size=batch_size, seed=42
    )
    assert (data.n_train, data.n_valid, data.n_test) == (40_000, 10_000, 10_000)
    assert data.train_steps == steps
    assert [len(data.train()), len(data.train_eval()), len(data.valid()), len(data.test())] == [
        steps,
        eval_batches,
        eval_batches,
        eval_batches,
    ]
    x, y = data.sample_train_batch()
    assert (
        x.shape == (batch_size, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    )


def test_problem_defaults_through_load_problem_data():
    problem = SimpleNamespace(dataset="cifar100", num_classes=100, batch_size=256)
    data = load_problem_data(problem, source="synthetic", seed=1, n_train=5000, n_test=1000)
    assert (data.batch_size, data.num_classes, data.n_train, data.n_valid) == (256, 100, 4000, 1000)
    assert int(data.y_train.max()) == 99
    with pytest.raises(ValueError, match="cifar, synthetic"):
        load_problem_data(problem, source="imagenet")


# ---- index-tagged images: decode which image each batch row came from -----------------------


def _tagged(n: int, n_test: int = 64):
    """Constant images that encode their index (channel 0: i % 256, channel 1: i // 256)."""
    idx = torch.arange(n)
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = (idx % 256).view(-1, 1, 1).to(torch.uint8)
    x[:, 1] = (idx // 256).view(-1, 1, 1).to(torch.uint8)
    t = torch.arange(n_test)
    xt = torch.zeros(n_test, 3, 32, 32, dtype=torch.uint8)
    xt[:, 0] = t.view(-1, 1, 1).to(torch.uint8)
    return x, idx % 10, xt, t % 10


def _decode(data: DeepOBSData, x: torch.Tensor) -> torch.Tensor:
    pixels = (x * data.std.view(1, 3, 1, 1) + data.mean.view(1, 3, 1, 1)) * 255
    centre = pixels[:, :, 16, 16].round().long()
    return centre[:, 0] + 256 * centre[:, 1]


def _tagged_data(seed=7, n=1000, batch_size=32, **kwargs) -> DeepOBSData:
    kwargs = {"valid_size": 200, "train_eval_size": 200, "augment": False, **kwargs}
    return DeepOBSData(
        *_tagged(n), dataset="cifar10", num_classes=10, batch_size=batch_size, seed=seed, **kwargs
    )


def _epoch(data, batches) -> list[int]:
    return torch.cat([_decode(data, x) for x, _ in batches]).tolist()


def test_train_and_valid_are_disjoint_and_cover_everything():
    data = _tagged_data()
    train, valid = set(data.train_indices.tolist()), set(data.valid_indices.tolist())
    assert len(train) == 800 and len(valid) == 200 and not train & valid
    assert train | valid == set(range(1000))
    epoch = _epoch(data, data.train())
    assert len(epoch) == len(set(epoch)) == 800 // 32 * 32 and set(epoch) <= train
    seen_valid = _epoch(data, data.valid())
    assert len(seen_valid) == len(set(seen_valid)) == 192 and set(seen_valid) <= valid


def test_labels_travel_with_their_images():
    data = _tagged_data()
    for batches in (data.train(), data.valid(), data.train_eval(), data.test()):
        for x, y in batches:
            assert torch.equal(_decode(data, x) % 10, y)


def test_train_is_reshuffled_every_epoch_and_test_is_sequential():
    data = _tagged_data()
    first, second = _epoch(data, data.train()), _epoch(data, data.train())
    assert first != second and data.epoch == 2
    assert _epoch(data, data.test()) == list(range(64))


def test_train_eval_is_fresh_and_drawn_from_all_training_images():
    data = _tagged_data()
    draws = [_epoch(data, data.train_eval()) for _ in range(5)]
    assert all(len(d) == len(set(d)) == 192 for d in draws)
    assert draws[0] != draws[1]
    valid = set(data.valid_indices.tolist())
    assert any(set(d) & valid for d in draws)  # DeepOBS: validation images can be included


def test_same_seed_same_batches_other_seed_differs():
    a, b, c = _tagged_data(seed=3), _tagged_data(seed=3), _tagged_data(seed=4)
    assert torch.equal(a.valid_indices, b.valid_indices)
    assert _epoch(a, a.train()) == _epoch(b, b.train())
    assert not torch.equal(a.valid_indices, c.valid_indices)
    assert _epoch(a, a.train()) != _epoch(c, c.train())


def test_augmented_batches_are_reproducible_from_the_seed():
    arrays = synthetic_arrays(10, seed=0, n_train=600, n_test=100)
    make = lambda seed: DeepOBSData(  # noqa: E731
        *arrays, dataset="cifar10", num_classes=10, batch_size=50, seed=seed, valid_size=100
    )
    a, b, c = make(1), make(1), make(2)
    xa, ya = next(iter(a.train()))
    xb, yb = next(iter(b.train()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.sample_train_batch()[0], b.sample_train_batch()[0])
    assert not torch.equal(xa, next(iter(c.train()))[0])


def test_state_dict_resumes_the_same_stream():
    data = _tagged_data(augment=True)
    _epoch(data, data.train())
    state = data.state_dict()
    expected = [_epoch(data, data.train()), _epoch(data, data.train_eval())]
    x_expected = next(iter(data.train()))[0]
    resumed = _tagged_data(augment=True)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    assert [_epoch(resumed, resumed.train()), _epoch(resumed, resumed.train_eval())] == expected
    assert torch.equal(next(iter(resumed.train()))[0], x_expected)  # augmentation draws too
    with pytest.raises(ValueError, match="seed"):
        _tagged_data(seed=8).load_state_dict(state)


def test_batch_larger_than_a_split_is_refused():
    with pytest.raises(ValueError, match="batch_size 256 exceeds the valid_size"):
        _tagged_data(batch_size=256)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_everything_stays_on_cuda():
    data = _tagged_data(device="cuda", augment=True)
    for batches in (data.train(), data.train_eval(), data.valid(), data.test()):
        x, y = next(iter(batches))
        assert x.is_cuda and y.is_cuda
    assert data.sample_train_batch()[0].is_cuda
    resumed = _tagged_data(device="cuda", augment=True)
    resumed.load_state_dict(data.state_dict())
    assert torch.equal(resumed.sample_train_batch()[0], data.sample_train_batch()[0])


# ---- the split against DeepOBS's own code --------------------------------------------------


def _deepobs_dataset_module() -> types.ModuleType:
    """Import ``deepobs.pytorch.datasets.dataset`` via stub packages (no TF, no torchvision)."""
    spec = importlib.util.find_spec("deepobs")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("deepobs is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    saved = {k: v for k, v in sys.modules.items() if k == "deepobs" or k.startswith("deepobs.")}
    for key in saved:
        del sys.modules[key]
    for name, path in (
        ("deepobs", root),
        ("deepobs.pytorch", root / "pytorch"),
        ("deepobs.pytorch.datasets", root / "pytorch" / "datasets"),
    ):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    try:
        return importlib.import_module("deepobs.pytorch.datasets.dataset")
    finally:
        for key in [k for k in sys.modules if k == "deepobs" or k.startswith("deepobs.")]:
            del sys.modules[key]
        sys.modules.update(saved)


@pytest.mark.parametrize("seed", [42, 43])
def test_split_equals_deepobs_for_the_seed(seed):
    dataset_module = _deepobs_dataset_module()
    state = random.getstate()
    try:
        random.seed(seed)  # what DeepOBS's runner does before building the data set
        fake = SimpleNamespace(_train_eval_size=10_000)
        train_sampler, valid_sampler = dataset_module.DataSet._make_train_eval_split_sampler(
            fake, range(50_000)
        )
    finally:
        random.setstate(state)
    train, valid = deepobs_split(50_000, 10_000, seed)
    assert list(train_sampler.indices) == train
    assert list(valid_sampler.indices) == valid
