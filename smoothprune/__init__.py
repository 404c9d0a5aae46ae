"""smoothprune: differentiable and sparse top-k for PyTorch (Sander et al., ICML 2023).

Importing this package loads the native operators; it loads neither Lightning nor Hydra.
"""

from smoothprune import _native, schedules
from smoothprune.export import load_sparse, save_sparse
from smoothprune.inference import SparseLinear, load_sparsified_, sparsify_, sparsify_semi_structured_
from smoothprune.nn import SoftTopKLoss
from smoothprune.ops import (
    hard_topk_mag,
    hard_topk_mask,
    soft_topk_loss,
    soft_topk_mag,
    soft_topk_mask,
)
from smoothprune.pruning import harden_, prune_, set_hard_training_, set_lam_, set_sparsity_, sparsity_report

__version__ = "0.1.0"

__all__ = [
    "soft_topk_mask",
    "soft_topk_mag",
    "hard_topk_mask",
    "hard_topk_mag",
    "soft_topk_loss",
    "SoftTopKLoss",
    "prune_",
    "harden_",
    "set_sparsity_",
    "set_lam_",
    "set_hard_training_",
    "sparsity_report",
    "save_sparse",
    "load_sparse",
    "sparsify_",
    "sparsify_semi_structured_",
    "load_sparsified_",
    "SparseLinear",
    "schedules",
    "__version__",
]
