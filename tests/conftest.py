"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest

from paranorm import _scaled


@pytest.fixture
def small_layers_scaled(monkeypatch):
    """Let tiny layers take the fast paths' scaled forward (the shipped thresholds, measured
    for real sizes, would send them to the materialized path)."""
    for key in _scaled.MIN_WEIGHT_NUMEL:
        monkeypatch.setitem(_scaled.MIN_WEIGHT_NUMEL, key, 0)
    monkeypatch.setattr(_scaled, "ACTIVATION_RATIO", 1)
