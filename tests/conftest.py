"""Shared fixtures. Deliberately minimal: nothing here changes JAX's global configuration (the
engine tests switch to float64 locally, with `jax.enable_x64(True)`)."""

import importlib

import pytest


@pytest.fixture
def simulate_module():
    """The module jaxq.simulate itself (the package attribute `jaxq.simulate` is the function)."""
    return importlib.import_module("jaxq.simulate")
