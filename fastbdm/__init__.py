"""fastbdm: Bellman Diffusion Models and TD3-SBC, with fused Triton kernels and CUDA graphs."""
from .bdm import BellmanDiffusion
from .compat import CompatFlags
from .schedule import DiffusionSchedule
from .td3sbc import Batch, TD3SBC, TD3SBCConfig

__all__ = ["BellmanDiffusion", "Batch", "CompatFlags", "DiffusionSchedule", "TD3SBC", "TD3SBCConfig"]
__version__ = "0.1.0"
