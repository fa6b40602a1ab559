"""Image augmentation on tensors: identity, exact flip, exact shift (= padded crop), reproducibility."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layertrace.training.augment import ImageAugment, step_generator


def _images(b=6, c=2, h=10, w=12):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(0))


def test_no_op_settings_are_the_identity():
    x = _images()
    out = ImageAugment(crop_padding=0, hflip=False, rotation_degrees=0.0)(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_flip_only_flips_exactly_the_drawn_samples():
    x = _images()
    aug = ImageAugment(crop_padding=0, hflip=True, rotation_degrees=0.0)
    out = aug(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.rand(x.shape[0], generator=g)  # the (unused) angle draw
    flipped = torch.rand(x.shape[0], generator=g) < 0.5
    assert 0 < int(flipped.sum()) < x.shape[0]
    expected = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_shift_equals_a_crop_of_the_zero_padded_image():
    x = _images()
    p = 3
    aug = ImageAugment(crop_padding=p, hflip=False, rotation_degrees=0.0, fill=0.0)
    out = aug(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    torch.rand(x.shape[0], generator=g)  # the angle draw (no flip draw when hflip is off)
    shift = torch.randint(-p, p + 1, (x.shape[0], 2), generator=g)
    padded = F.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    for i, (dx, dy) in enumerate(shift.tolist()):
        crop = padded[i, :, p + dy:p + dy + h, p + dx:p + dx + w]
        torch.testing.assert_close(out[i], crop, atol=1e-5, rtol=0)


def test_fill_value_and_rotation_stay_in_range_and_reproduce():
    x = torch.ones(4, 1, 16, 16)
    aug = ImageAugment(crop_padding=2, rotation_degrees=15.0, fill=-1.0)
    a = aug(x, step_generator(0, 7))
    b = aug(x, step_generator(0, 7))
    torch.testing.assert_close(a, b)
    assert float(a.min()) >= -1.0 - 1e-5 and float(a.max()) <= 1.0 + 1e-5
    assert bool((a < 0).any())  # uncovered corners take the fill value
    assert not torch.equal(aug(x, step_generator(0, 8)), a)  # another step draws differently
