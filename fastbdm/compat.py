"""Switches that reproduce the research code's departures from the paper (docs/ALGORITHM.md#departures-of-the-research-code,
items 1-7)."""
from dataclasses import dataclass, fields
from typing import Union


@dataclass(frozen=True)
class CompatFlags:
    """One flag per departure; all False is fastbdm's corrected default."""

    posterior_mean_sampler: bool = False  # 1: noise-free DDPM mean, 9 evaluations, level shift
    shared_noise: bool = False  # 2: sampler start noise z is the re-noising eps
    unmasked_terminals: bool = False  # 3: gamma term never masked, s_f always sampled
    mismatched_data_denoiser: bool = False  # 4: E fitted on q(s', t, eps) with target s
    broadcast_critic_penalty: bool = False  # 5: (B,1) - (B,) broadcast: penalty acts as batch mean
    standardised_sbc_half: bool = False  # 6: SBC second half is (s - mean)/std, not random draws
    broadcast_sbc_weights: bool = False  # 7: eta (2B,1) * errors (2B,) broadcasts: SBC = mean(eta) mean(err)

    @classmethod
    def all(cls) -> "CompatFlags":
        return cls(**{f.name: True for f in fields(cls)})

    @classmethod
    def resolve(cls, compat: Union[bool, "CompatFlags", None]) -> "CompatFlags":
        """True -> every flag, False/None -> none, a CompatFlags -> itself."""
        if isinstance(compat, CompatFlags):
            return compat
        return cls.all() if compat else cls()

    def enabled(self) -> list:
        return [f.name for f in fields(self) if getattr(self, f.name)]
