"""Test settings: one intra-op thread (2 shared CPU cores thrash with more), deterministic ops."""

import torch

torch.set_num_threads(1)
