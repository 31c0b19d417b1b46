"""Fixtures shared by the test files."""

from __future__ import annotations

import math

import pytest

import paranorm as pn
from paranorm._fast import fused as _fused
from paranorm._fast import scaled as _scaled


@pytest.fixture(autouse=True)
def _fast_paths_off():
    """Every test starts with the fast paths off, the default (so bit-exact parity with torch is
    what the default path is tested for), and one that switches them on cannot leak that."""
    previous = pn.set_fast_paths(False)
    yield
    pn.set_fast_paths(previous)


@pytest.fixture(autouse=True)
def _no_timed_progress_lines(monkeypatch):
    """``paranorm inspect`` prints a progress line on a non-terminal stderr every few seconds: on
    a loaded machine a test's captured stderr would depend on the clock. The test of that
    feature sets the interval itself."""
    from paranorm.cli import inspect as inspect_cli

    monkeypatch.setattr(inspect_cli, "LOG_EVERY_S", math.inf)


@pytest.fixture
def small_layers_fused(monkeypatch):
    """Let tiny weights take the fused W / sigma path (the shipped threshold, measured for real
    sizes, keeps them on torch's graph)."""
    monkeypatch.setattr(_fused, "FUSED_MIN_NUMEL", 0)


@pytest.fixture
def small_layers_scaled(monkeypatch, small_layers_fused):
    """Let tiny layers take the fast paths' scaled forward, and the fused path where it does not
    apply (the shipped thresholds, measured for real sizes, would send them to torch's graph)."""
    for key in _scaled.MIN_WEIGHT_NUMEL:
        monkeypatch.setitem(_scaled.MIN_WEIGHT_NUMEL, key, 0)
    monkeypatch.setattr(_scaled, "ACTIVATION_RATIO", 1)
