"""Test settings: Triton's CPU interpreter and one torch thread (2-core VMs stall with 2 under load).

TRITON_INTERPRET must be set before any @triton.jit decorator runs, hence here at import time.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
