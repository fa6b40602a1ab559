"""Multi-process analysis with ``torch.distributed`` (launched by ``torchrun`` or ``accelerate launch``).

Sharding rule: the global sequence of batches is dealt round-robin, batch ``b`` going to rank
``b % world_size``. Every rank sees whole batches, exactly as one process would, so per-sample
values are bitwise identical to a single-process run; sums (readout means, feature means, COS and
CKA accumulators) are merged with ``all_reduce`` / ``all_gather_object`` and differ from one
process only by floating-point summation order (float64, ~1e-15 relative). Per-sample arrays are
gathered and put back in global batch order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``; ``active`` when merging is needed."""

    rank: int = 0
    world_size: int = 1
    presharded: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls, shard: bool | str = "auto") -> "DistContext":
        """The running process group (if any). ``shard=False`` analyses everything in this process."""
        if shard is False or str(shard).lower() in ("false", "no", "off"):
            return cls()
        if str(shard).lower() not in ("auto", "true", "presharded"):
            from ..errors import LayertraceError

            raise LayertraceError(f"shard={shard!r}: use 'auto', 'presharded' or False")
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       presharded=str(shard).lower() == "presharded")
        return cls()

    def owns(self, batch_index: int) -> bool:
        """Whether this rank analyses the ``batch_index``-th batch it iterates."""
        return self.presharded or batch_index % self.world_size == self.rank

    def global_index(self, batch_index: int) -> int:
        """The global position of this rank's ``batch_index``-th batch (seeds, ordering)."""
        return batch_index * self.world_size + self.rank if self.presharded else batch_index

    # ------------------------------------------------------------------ collectives
    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Element-wise float64 sum of ``values`` over all ranks (identity in one process)."""
        values = np.asarray(values, dtype=np.float64)
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.from_numpy(values.copy()).to(self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def init_from_env(device: str = "cpu") -> bool:
    """Initialise the default process group when launched by torchrun / accelerate (WORLD_SIZE > 1).

    Uses gloo on CPU and nccl on CUDA. Returns True when this call created the group (the caller
    then destroys it with :func:`shutdown`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        return False
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def shutdown() -> None:
    """Destroy the process group created by :func:`init_from_env` (no-op when there is none).

    Every rank waits at a barrier first: a rank that tears gloo down while its peer is still busy
    (rank 0 writing results, say) made both processes abort at exit about one run in three
    ("terminate called without an active exception", measured with tests/analysis/dist_worker.py).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
