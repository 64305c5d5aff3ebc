"""Test settings: Triton's CPU interpreter and one torch thread (2-core VMs stall with 2 under load).

TRITON_INTERPRET must be set before any @triton.jit decorator runs, hence here at import time.

FASTBDM_TEST_DEVICE=cuda runs the kernel tests compiled on a GPU instead: no interpreter, and every
tensor and module the tests create defaults to the GPU (torch.set_default_device):
    FASTBDM_TEST_DEVICE=cuda pytest tests/test_kernels_forward.py tests/test_kernels_backward.py \
        tests/test_kernels_bf16.py tests/test_kernels_tf32.py tests/test_ops.py tests/test_kernels_small_mlp.py \
        tests/test_kernels_critic_side.py tests/test_actor_loss_ops.py tests/test_gather_fields.py \
        tests/test_kernels_denoiser_group.py tests/test_small_mlp_chains.py
"""
import os

ON_GPU = os.environ.get("FASTBDM_TEST_DEVICE") == "cuda"
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
if ON_GPU:
    torch.set_default_device("cuda")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
