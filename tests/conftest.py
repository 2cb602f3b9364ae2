"""Shared test settings: GPU tests, the ``device`` fixture and the hypothesis profiles.

A test marked ``@pytest.mark.gpu`` runs only where CuPy imports and sees a CUDA device.  Elsewhere
it is skipped with the reason CuPy gave (``backend.gpu_unavailable_reason()``), or, when the
environment sets ``MINISDIT_REQUIRE_GPU=1`` (scripts/gpu_check.sh on a lent GPU), it fails with
that reason: on a GPU machine a skipped GPU test is a broken setup, not a pass.

``device`` runs a test once on "cpu" and once on "gpu" (the GPU run is marked ``gpu``).

Hypothesis profiles: "ci" (30 examples, derandomized: the same examples on every run and every
machine, so a red CI run can be rerun and a green one means the same thing twice), "local" (30
examples, freshly drawn each run, failures replayed from .hypothesis/), "dev" (200 examples).
HYPOTHESIS_PROFILE picks one; otherwise CI=true (set by CI services and by .ci/run) picks "ci",
and anything else "local".  A test that needs fewer or more examples than the profile says scales
the profile's count, e.g. ``@settings(max_examples=settings().max_examples // 5)``
(``settings()`` is the loaded profile), so "dev" still runs more and "ci" stays reproducible.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minisdit import backend

# No deadline anywhere: how long an example takes depends on the machine, not on the code.  Each
# profile starts from hypothesis' own defaults, not from whatever hypothesis loaded on import
# (it loads its built-in "ci" profile whenever a CI variable exists, even CI=false).
DEFAULTS = settings.get_profile("default")
settings.register_profile("ci", DEFAULTS, max_examples=30, derandomize=True, database=None, deadline=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("local", DEFAULTS, max_examples=30, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", DEFAULTS, max_examples=200, deadline=None, print_blob=True)


def hypothesis_profile(environ=os.environ) -> str:
    if environ.get("HYPOTHESIS_PROFILE"):
        return environ["HYPOTHESIS_PROFILE"]
    return "ci" if environ.get("CI", "").lower() in ("1", "true", "yes") else "local"


settings.load_profile(hypothesis_profile())

REQUIRE_GPU = os.environ.get("MINISDIT_REQUIRE_GPU") == "1"
# Asked once per session: None when the GPU works, else why it does not.
GPU_UNAVAILABLE_REASON = backend.gpu_unavailable_reason()


@pytest.hookimpl(tryfirst=True)  # before pytest's own skipif marks, so MINISDIT_REQUIRE_GPU=1 overrides them
def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is None or GPU_UNAVAILABLE_REASON is None:
        return
    if REQUIRE_GPU:
        pytest.fail(f"MINISDIT_REQUIRE_GPU=1 but no usable GPU: {GPU_UNAVAILABLE_REASON}", pytrace=False)
    pytest.skip(f"needs a CUDA GPU: {GPU_UNAVAILABLE_REASON}")


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("gpu", id="gpu", marks=pytest.mark.gpu),
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
