"""Tests run offline, on CPU, with a private trajectory cache."""
import os

import pytest

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
