import logging
import os

import pytest
import torch

os.environ.setdefault("SHAREDFT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING)
    yield
