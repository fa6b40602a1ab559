"""Seeded, documented distribution shifts of an image test set (transferability, App. B.4).

A shift spec is one or more ``KIND:VALUE`` terms joined by ``+``, applied left to right to the
images as floats in [0, 1] (uint8 / 255), clipped back to [0, 1] and rounded to uint8:

==================  ==========================================================================
``rotate:DEG``      rotate every image by DEG degrees counter-clockwise about its centre
                    (bilinear, pixels from outside the image are black); deterministic
``noise:SIGMA``     add i.i.d. Gaussian noise of standard deviation SIGMA (in [0, 1] pixel
                    units) to every pixel; drawn from ``numpy.random.default_rng(seed)`` for
                    the loaded examples in order, so one seed gives one shifted test set
``contrast:C``      scale every image's deviation from its own mean pixel value by C
                    (C < 1 lowers contrast, 0 gives a flat grey image, C > 1 raises it)
==================  ==========================================================================

Example: ``rotate:15``, ``noise:0.2``, ``contrast:0.5``, ``rotate:30+noise:0.1``.
``load_dataset(name, "test", shift="rotate:15", shift_seed=0)`` applies it after the split and the
``limit`` subsample; ``layertrace analyze --shift rotate:15`` does the same from the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import LayertraceError
from .base import ImageClassificationData

SHIFT_KINDS = ("rotate", "noise", "contrast")
_LIMITS = {"rotate": (-360.0, 360.0), "noise": (0.0, 1.0), "contrast": (0.0, 10.0)}


@dataclass(frozen=True)
class Shift:
    """One term of a shift spec: ``kind`` in :data:`SHIFT_KINDS` and its ``value``."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_shift(spec: str) -> list[Shift]:
    """``"rotate:15+noise:0.1"`` -> ``[Shift("rotate", 15.0), Shift("noise", 0.1)]``.

    Raises:
        LayertraceError: an unknown kind, a missing / non-numeric value, or a value out of range
            (rotate in [-360, 360] degrees, noise sigma in [0, 1], contrast in [0, 10]).
    """
    from ..errors import did_you_mean

    terms = [t.strip() for t in str(spec).split("+") if t.strip()]
    if not terms:
        raise LayertraceError(f"shift {spec!r} is empty; use e.g. rotate:15, noise:0.2 or contrast:0.5")
    out = []
    for term in terms:
        kind, sep, value = term.partition(":")
        kind = kind.strip().lower()
        if kind not in SHIFT_KINDS:
            raise LayertraceError(f"shift {term!r}: unknown kind {kind!r}{did_you_mean(kind, SHIFT_KINDS)}; "
                                  f"use one of {', '.join(SHIFT_KINDS)} as KIND:VALUE (e.g. rotate:15)")
        try:
            number = float(value)
        except ValueError:
            raise LayertraceError(f"shift {term!r}: {kind} needs a number after ':' (e.g. {kind}:"
                                  f"{ {'rotate': 15, 'noise': 0.2, 'contrast': 0.5}[kind]})") from None
        lo, hi = _LIMITS[kind]
        if not (math.isfinite(number) and lo <= number <= hi):
            raise LayertraceError(f"shift {term!r}: {kind} value must lie in [{lo:g}, {hi:g}]")
        out.append(Shift(kind, number))
    return out


def shift_images(images: np.ndarray, spec: str, seed: int = 0) -> np.ndarray:
    """Apply a shift spec to uint8 images (N, C, H, W); returns new uint8 images of the same shape."""
    import torch

    shifts = parse_shift(spec)
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)
    rng = np.random.default_rng(seed)
    for s in shifts:
        if s.kind == "rotate":
            x = _rotate(x, s.value)
        elif s.kind == "noise":
            x = x + torch.from_numpy(rng.normal(0.0, s.value, size=tuple(x.shape)).astype(np.float32))
        else:  # contrast
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = mean + s.value * (x - mean)
        x = x.clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8).numpy()


def _rotate(x, degrees: float):
    """Rotate (N, C, H, W) images counter-clockwise (as displayed, row 0 at the top) about the centre."""
    import torch
    import torch.nn.functional as F

    if degrees % 360 == 0:
        return x
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # affine_grid maps output (x right, y down) to input coordinates; a counter-clockwise rotation on
    # screen samples the input at R(-t) in (x, y-up) coordinates, i.e. [[c, -s], [s, c]] with y down.
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_shift(ds: ImageClassificationData, spec: str | None, seed: int = 0) -> ImageClassificationData:
    """``ds`` with shifted images (a copy; ``info["shift"]`` records the spec and seed). ``None`` /
    ``""`` returns ``ds`` unchanged.

    Raises:
        LayertraceError: ``ds`` is not an image dataset, or a bad spec (see :func:`parse_shift`).
    """
    if spec is None or str(spec).strip() == "" or str(spec).lower() == "none":
        return ds
    if not isinstance(ds, ImageClassificationData):
        raise LayertraceError(f"shift {spec!r} applies to image datasets; {ds.name!r} is text: drop --shift")
    canonical = "+".join(str(s) for s in parse_shift(spec))
    info = {**ds.info, "shift": canonical, "shift_seed": int(seed)}
    return ImageClassificationData(ds.name, ds.split, list(ds.class_names), shift_images(ds.images, spec, seed),
                                   ds.labels.copy(), info)
