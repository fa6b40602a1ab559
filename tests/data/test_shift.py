"""Distribution shifts of image test sets (data/shift.py): deterministic under a seed, and each does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from layertrace.data import ImageClassificationData, TextClassificationData, apply_shift, load_dataset, parse_shift
from layertrace.data.shift import shift_images
from layertrace.errors import LayertraceError


def _images(n=6, c=1, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def _ds(images):
    return ImageClassificationData("toy", "test", ["a", "b"], images, np.arange(len(images)) % 2)


def test_noise_is_deterministic_under_a_seed_and_has_the_stated_sigma():
    grey = np.full((20, 1, 16, 16), 128, dtype=np.uint8)  # mid-grey: no clipping at sigma 0.1
    a, b, other = (shift_images(grey, "noise:0.1", seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert (a != other).any()
    diff = (a.astype(np.float64) - 128) / 255
    assert abs(diff.mean()) < 0.005 and diff.std() == pytest.approx(0.1, rel=0.03)


def test_rotation_by_90_degrees_is_rot90_and_full_turns_are_identity():
    img = _images(c=3)
    # counter-clockwise as displayed (row 0 at the top): np.rot90 over (H, W)
    np.testing.assert_array_equal(shift_images(img, "rotate:90"), np.rot90(img, k=1, axes=(2, 3)))
    np.testing.assert_array_equal(shift_images(img, "rotate:-90"), np.rot90(img, k=-1, axes=(2, 3)))
    np.testing.assert_array_equal(shift_images(img, "rotate:360"), img)
    np.testing.assert_array_equal(shift_images(img, "rotate:15"), shift_images(img, "rotate:15"))
    rotated = shift_images(img, "rotate:45")
    assert (rotated[:, :, 0, 0] == 0).all()  # corners come from outside the image: black


def test_contrast_scales_the_deviation_from_each_image_mean():
    img = np.random.default_rng(1).integers(64, 192, (5, 1, 10, 10), dtype=np.uint8)  # no clipping at C=0.5
    np.testing.assert_array_equal(shift_images(img, "contrast:1"), img)
    half = shift_images(img, "contrast:0.5").astype(np.float64)
    x = img.astype(np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(half, mean + 0.5 * (x - mean), atol=0.51)  # rounding to uint8
    flat = shift_images(img, "contrast:0")
    assert (flat.max(axis=(1, 2, 3)) == flat.min(axis=(1, 2, 3))).all()


def test_terms_compose_left_to_right_and_apply_shift_records_them():
    img = _images()
    both = shift_images(img, "rotate:90+contrast:0.5")
    np.testing.assert_array_equal(both, shift_images(shift_images(img, "rotate:90"), "contrast:0.5"))
    ds = _ds(img)
    shifted = apply_shift(ds, "rotate:90 + noise:0.05", seed=2)
    assert shifted.info["shift"] == "rotate:90+noise:0.05" and shifted.info["shift_seed"] == 2
    np.testing.assert_array_equal(shifted.labels, ds.labels)
    np.testing.assert_array_equal(ds.images, img)  # the input is not modified
    assert apply_shift(ds, None) is ds


@pytest.mark.parametrize("spec, match", [
    ("blur:2", "unknown kind"), ("rotate", "needs a number"), ("noise:x", "needs a number"),
    ("noise:2", r"\[0, 1\]"), ("contrast:-1", r"\[0, 10\]"), ("", "empty"),
])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(LayertraceError, match=match):
        parse_shift(spec)


def test_text_data_is_refused():
    text = TextClassificationData("t", "test", ["a", "b"], ["x", "y"], np.array([0, 1]))
    with pytest.raises(LayertraceError, match="image datasets"):
        apply_shift(text, "rotate:15")


@pytest.mark.embedded
def test_load_dataset_applies_the_shift_after_the_subsample():
    plain = load_dataset("fashion-mnist", "test", limit=40)
    shifted = load_dataset("fashion-mnist", "test", limit=40, shift="rotate:90")
    np.testing.assert_array_equal(shifted.labels, plain.labels)
    np.testing.assert_array_equal(shifted.images, np.rot90(plain.images, k=1, axes=(2, 3)))


@pytest.mark.embedded
def test_analyze_cli_reads_the_shifted_test_set(tmp_path):
    import json

    from layertrace.cli.main import main

    common = ["analyze", "--model", "vit-demo", "--data", "fashion-mnist", "--limit", "16", "--batch_size", "16",
              "--similarity", "false", "--progress", "false"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--out", str(tmp_path / "rot"), "--shift", "rotate:30+noise:0.1", "--shift_seed", "1"]) == 0
    plain, rot = (json.loads((tmp_path / d / "analysis.json").read_text()) for d in ("plain", "rot"))
    assert rot["config"]["shift"] == "rotate:30+noise:0.1" and rot["config"]["shift_seed"] == 1
    assert plain["config"]["shift"] is None
    assert plain["max_prob"] != rot["max_prob"]  # the same model saw different images
    assert main(common + ["--out", str(tmp_path / "bad"), "--shift", "blur:1"]) == 2
