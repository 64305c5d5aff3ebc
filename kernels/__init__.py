"""Triton kernels of the BDM hot path (installed as fastbdm.kernels)."""
