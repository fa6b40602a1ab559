"""Self-contained experiments of the paper that need no model preset (run by ``layertrace demo``).

* :mod:`.mlp_residual` - the 9-layer MLP with vs without residual connections (PAPER.md section 2):
  where CKA misleads and COS does not.
"""

from __future__ import annotations

from .mlp_residual import DeepMLP, MLPExperimentConfig, mlp_adapter, run_mlp_pair, train_mlp

__all__ = ["DeepMLP", "MLPExperimentConfig", "mlp_adapter", "run_mlp_pair", "train_mlp"]
