"""Triton kernels for LayerNorm/RMSNorm and their launch heuristics.

Installed as ``layernorm_gpu.kernels``; imports inside this package are relative. Importing it
needs Triton; ``layernorm_gpu`` imports it lazily, only when the Triton backend runs.
"""

from .heuristics import A100, H100, NormConfig, PartialSumConfig, Target
from .norm_bwd import norm_bwd
from .norm_fwd import norm_fwd

__all__ = ["A100", "H100", "NormConfig", "PartialSumConfig", "Target", "norm_bwd", "norm_fwd"]
