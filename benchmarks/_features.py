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


def replay_model(features: torch.Tensor, batch_size: int):
    """(module, layer names, loader): a "model" whose L submodules return the precomputed features of the
    batch's sample indices, so a CKA library's forward hooks capture exactly these features; the loader
    yields consecutive index batches of ``batch_size``."""
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Replay(nn.Module):
        def __init__(self, table: torch.Tensor):
            super().__init__()
            self.table = table

        def forward(self, index: torch.Tensor) -> torch.Tensor:
            return self.table[index]

    class ReplayModel(nn.Module):
        def __init__(self, feats: torch.Tensor):
            super().__init__()
            self.layers = nn.ModuleList([Replay(f) for f in feats])
            self.anchor = nn.Parameter(torch.zeros(1))  # libraries look for a parameter's device

        def forward(self, index: torch.Tensor) -> None:
            for layer in self.layers:
                layer(index)

    loader = DataLoader(TensorDataset(torch.arange(features.shape[1])), batch_size=batch_size, shuffle=False)
    return ReplayModel(features), [f"layers.{i}" for i in range(features.shape[0])], loader
