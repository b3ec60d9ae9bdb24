"""layernorm_gpu: fused LayerNorm and RMSNorm for PyTorch.

Triton kernels on CUDA, an exact torch reference everywhere else; see :mod:`.dispatch`.
Importing this package touches no CUDA and does not need Triton.
"""

from .functional import fused_add_layer_norm, fused_add_rms_norm, layer_norm, rms_norm
from .modules import LayerNorm, RMSNorm, replace_norms

__version__ = "0.1.0"

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "fused_add_layer_norm",
    "fused_add_rms_norm",
    "layer_norm",
    "replace_norms",
    "rms_norm",
]
