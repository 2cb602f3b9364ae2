"""Shared test settings: the ``device`` fixture and the hypothesis profiles.

``device`` runs a test once on "cpu" and once on "gpu"; the GPU run is skipped unless CuPy
imports and sees a CUDA device.  Hypothesis uses the "ci" profile unless HYPOTHESIS_PROFILE
names another ("dev" runs more examples).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minisdit import backend

settings.register_profile("ci", max_examples=30, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

GPU_SKIP_REASON = "needs a CUDA GPU and CuPy"

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("gpu", id="gpu", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not backend.gpu_available(), reason=GPU_SKIP_REASON),
    ]),
]


@pytest.fixture(params=DEVICES, scope="session")
def device(request) -> str:
    """"cpu" or "gpu" (session scoped so that hypothesis tests may use it)."""
    return request.param


@pytest.fixture(scope="session")
def to_device(device):
    """Move NumPy arrays to the test's device: ``to_device(a, b)`` returns the moved arrays."""
    def move(*arrays):
        moved = tuple(backend.to_device(np.asarray(a), device) for a in arrays)
        return moved[0] if len(moved) == 1 else moved
    return move
