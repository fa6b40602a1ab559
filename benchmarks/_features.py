"""Synthetic transformer-like features shared by the similarity benchmarks (bench_similarity.py,
bench_cka_peers.py): a residual stream h_0 ~ N(offset, I), h_l = h_{l-1} + 0.6 tanh(h_{l-1} A_l)."""

from __future__ import annotations

import torch


class ResidualStream:
    """Deterministic synthetic residual-stream features, generated batch by batch or all at once."""

    def __init__(self, n_layers: int, dim: int, offset: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.mixers = [torch.randn(dim, dim, generator=g) / dim**0.5 for _ in range(n_layers - 1)]
        self.offset = offset * torch.randn(dim, generator=g)
        self.dim, self.seed = dim, seed

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Features (L, stop - start, d) float32 of samples start..stop-1 (same values however split)."""
        rows = []
        for sample in range(start, stop):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + sample)
            rows.append(torch.randn(self.dim, generator=g))
        h = torch.stack(rows) + self.offset
        layers = [h]
        for mixer in self.mixers:
            h = h + 0.6 * torch.tanh(h @ mixer)
            layers.append(h)
        return torch.stack(layers).contiguous()
