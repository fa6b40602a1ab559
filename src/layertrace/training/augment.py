"""Image augmentation of the paper's recipes on tensors (no torchvision).

Random crop with zero padding, horizontal flip and rotation by up to +-15 degrees (PAPER.md
section 7), drawn per sample from an explicit ``torch.Generator`` so that a run is reproducible and
resumes exactly. The three transforms are composed into one affine map per sample and applied with
a single ``grid_sample`` call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ImageAugment:
    """Random crop (as a shift of up to ``crop_padding`` pixels with zero fill), flip, rotation.

    Args:
        crop_padding: pad by this many pixels on each side, then crop back to the original size at
            a random offset (equivalently: shift by an integer in ``[-p, p]`` on each axis).
        hflip: flip horizontally with probability 0.5.
        rotation_degrees: rotate by an angle drawn uniformly from ``[-r, r]`` degrees.
        fill: value of the pixels uncovered by the shift / rotation: one number, or one per channel
            (for normalised inputs, ``-mean / std`` is the value of a black pixel).

    ``augment(pixel_values, generator)`` maps (B, C, H, W) -> (B, C, H, W), same dtype and device.
    """

    crop_padding: int = 4
    hflip: bool = True
    rotation_degrees: float = 15.0
    fill: float | tuple[float, ...] = 0.0

    def __call__(self, pixel_values: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = pixel_values
        b, _, h, w = x.shape
        # Draw on CPU from the generator (device-independent, reproducible), then move.
        angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(self.rotation_degrees)
        flip = (torch.rand(b, generator=generator) < 0.5) if self.hflip else torch.zeros(b, dtype=torch.bool)
        p = int(self.crop_padding)
        shift = torch.randint(-p, p + 1, (b, 2), generator=generator).to(torch.float32) if p > 0 else torch.zeros(b, 2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx = torch.where(flip, -1.0, 1.0)
        # Output pixel (u, v) in normalised coordinates samples the input at A @ (u, v) + t.
        # Rotation about the centre (aspect-corrected), then a flip of the x axis, then the shift.
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin * (h / w)
        theta[:, 1, 0] = sin * (w / h) * sx
        theta[:, 1, 1] = cos
        theta[:, 0, 2] = shift[:, 0] * 2.0 / w
        theta[:, 1, 2] = shift[:, 1] * 2.0 / h
        theta = theta.to(device=x.device, dtype=torch.float32)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Sample x - fill with zero padding, then add fill back: uncovered pixels become ``fill``.
        fill = torch.as_tensor(self.fill, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        out = F.grid_sample(x.float() - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (out + fill).to(x.dtype)


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """A CPU generator determined by (seed, optimizer step, micro-batch): resumes draw the same numbers."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 4_099 + int(micro)) % (2**63 - 1))
