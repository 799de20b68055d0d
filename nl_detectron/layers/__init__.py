"""Non-local context blocks (NL, DNL, SNL, GC) as plain PyTorch modules."""

from .context_block import ContextBlock
from .disentangled_nonlocal import DisentangledNonLocalBlock
from .nonlocal_block import NonLocalBlock
from .spectral_nonlocal import SpectralNonLocalBlock

__all__ = [
    "NonLocalBlock",
    "DisentangledNonLocalBlock",
    "SpectralNonLocalBlock",
    "ContextBlock",
]
