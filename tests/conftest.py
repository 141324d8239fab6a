"""Test settings: one intra-op thread per process (pytest runs two workers on the 2 CI cores),
seeded randomness, quiet logs, and a cache for trained reference nets inside the checkout."""

import logging
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("SHAREDFT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING)
    yield
