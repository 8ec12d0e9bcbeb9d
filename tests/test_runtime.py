import random

import numpy as np
import pytest
import torch

from mlkit.runtime import atomic_path, device_name, pick_device, rng_state, seed_everything, set_rng_state, set_threads


def draws():
    return random.random(), np.random.rand(3).tolist(), np.random.normal(), torch.rand(3).tolist()


def test_seed_everything_makes_all_generators_reproducible():
    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert draws() != first


def test_rng_state_restores_every_generator():
    seed_everything(0)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    state = rng_state()
    expected = draws()
    set_rng_state(state)
    assert draws() == expected


def test_rng_state_survives_weights_only_checkpoint(tmp_path):
    seed_everything(1)
    np.random.normal()
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = draws()
    draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected


def test_pick_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_pick_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")


def test_pick_device_honours_explicit_choice():
    assert pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")


def test_set_threads_uses_argument_then_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("TORCH_THREADS", "2")
        assert set_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_atomic_path_replaces_the_file_only_when_the_write_succeeds(tmp_path):
    target = tmp_path / "sub" / "values.npy"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == target.parent
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(target), np.arange(3))

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("crash while writing")
    assert np.array_equal(np.load(target), np.arange(3))  # the old file survives
    assert sorted(p.name for p in target.parent.iterdir()) == ["values.npy"]  # no temporary left behind


def test_device_name_counts_cpu_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert device_name(torch.device("cpu")) == "CPU, 1 thread"
        torch.set_num_threads(2)
        assert device_name(torch.device("cpu")) == "CPU, 2 threads"
    finally:
        torch.set_num_threads(threads)
