"""Tests run offline, on CPU, with a private trajectory cache."""
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ODEBENCH_CACHE", str(cache))
    return cache


@pytest.fixture
def gaussian_teacher():
    """A single isotropic Gaussian N(mu, s^2 I) in 3-D: the PF-ODE flow is known in closed form."""
    from odebench.teachers.gmm import GMMTeacher

    return GMMTeacher([[1.0, -2.0, 0.5]], [0.3], name="gauss")


@pytest.fixture
def no_network(monkeypatch):
    """Model-loading tests: any socket connection is a failure (nothing may reach a hub), one torch thread."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: a single intra-op thread is faster and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def wide_console(monkeypatch):
    """rich sizes tables to COLUMNS; wide enough that no header or cell is truncated."""
    monkeypatch.setenv("COLUMNS", "250")
