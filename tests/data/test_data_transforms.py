"""Joint augmentations keep image and mask aligned, follow their settings, and are seeded per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from segformer.data.dataset import EpochSampler, SegmentationDataset
from segformer.data.palette import MaskDecoder
from segformer.data.transforms import AugmentationSettings, SegTransform, preprocess_image, sample_generator

from datahelpers import COLOR_PALETTE, random_ids

MEAN = STD = (0.5, 0.5, 0.5)


def encoded_pair(seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Image whose gray value encodes the mask class: class c -> 60 + 120 c."""
    ids = random_ids(np.random.default_rng(seed), size).astype(np.int64)
    ids[:2, :] = 255  # some ignore pixels too (value 60 + 120 * 255 would overflow: use 250)
    image = np.repeat(np.where(ids == 255, 250, 60 + 120 * ids)[..., None], 3, axis=2).astype(np.uint8)
    return image, ids


def decode_image_class(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class per pixel, whether the pixel is unmixed) from a normalized encoded image."""
    value = (image[0] * 0.5 + 0.5) * 255
    cls = torch.full_like(value, -1, dtype=torch.int64)
    for c, v in ((0, 60), (1, 180), (255, 250)):
        cls[(value - v).abs() < 6] = c
    return cls, cls >= 0


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one label (away from class edges)."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    same = torch.ones_like(mask, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
    return same


@pytest.mark.parametrize("settings", [
    AugmentationSettings(hflip_probability=1.0),
    AugmentationSettings(vflip_probability=1.0),
    AugmentationSettings(rotate_probability=1.0, angle_list=(90,)),
    AugmentationSettings(rotate_probability=1.0, angle_list=(270,)),
    AugmentationSettings(hflip_probability=0.5, vflip_probability=0.5, rotate_probability=0.5),
])
def test_flips_and_right_angle_rotations_are_exact_and_aligned(settings):
    image, ids = encoded_pair()
    transform = SegTransform(32, MEAN, STD, augment=settings)
    for index in range(6):
        out_image, out_mask = transform(image, ids, sample_generator(0, 0, index))
        cls, pure = decode_image_class(out_image)
        assert pure.all()
        assert torch.equal(cls, out_mask)


def test_flip_and_rotation_move_pixels_as_documented():
    image, ids = encoded_pair()
    _, flipped = SegTransform(32, MEAN, STD, AugmentationSettings(hflip_probability=1.0))(image, ids, sample_generator(0, 0, 0))
    assert torch.equal(flipped, torch.from_numpy(ids[:, ::-1].copy()))
    rot = SegTransform(32, MEAN, STD, AugmentationSettings(rotate_probability=1.0, angle_list=(90,)))
    _, rotated = rot(image, ids, sample_generator(0, 0, 0))
    assert torch.equal(rotated, torch.from_numpy(np.rot90(ids, 1).copy()))  # counter-clockwise


@pytest.mark.parametrize("settings", [
    AugmentationSettings(scale_range=(1.0, 1.5)),
    AugmentationSettings(scale_range=(0.6, 0.8)),
    AugmentationSettings(random_crop=True),
    AugmentationSettings(rotate_probability=1.0, angle_list=(30,)),
])
def test_resampling_augmentations_keep_alignment(settings):
    image, ids = encoded_pair()
    transform = SegTransform(32, MEAN, STD, augment=settings)
    for index in range(4):
        out_image, out_mask = transform(image, ids, sample_generator(1, 0, index))
        assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32)
        cls, pure = decode_image_class(out_image)
        labelled = pure & (out_mask != 255)
        assert labelled.float().mean() > 0.2  # enough unmixed pixels to make the check meaningful
        agree = (cls[labelled] == out_mask[labelled]).float().mean()
        assert agree > 0.99  # bilinear edges may mix a handful of pixels; a shift would not
        inside = labelled & interior(out_mask)
        assert torch.equal(cls[inside], out_mask[inside])


def test_padding_and_rotation_fill_is_ignore():
    image, ids = encoded_pair()
    small = SegTransform(32, MEAN, STD, AugmentationSettings(scale_range=(0.5, 0.5)))
    _, mask = small(image, ids, sample_generator(0, 0, 0))
    assert (mask == 255).float().mean() >= 0.75 - 1e-6  # 3/4 of the area is padding
    rot = SegTransform(32, MEAN, STD, AugmentationSettings(rotate_probability=1.0, angle_list=(45,)))
    out_image, mask = rot(image, ids, sample_generator(0, 0, 0))
    assert mask[31, 31] == 255 and out_image[:, 31, 31].tolist() == [-1.0, -1.0, -1.0]  # black corner


def test_colour_and_blur_change_the_image_only():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ids = random_ids(np.random.default_rng(1), 32).astype(np.int64)
    plain = SegTransform(32, MEAN, STD)(image, ids)
    for settings in (AugmentationSettings(color_probability=1.0, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.3),
                     AugmentationSettings(random_blur=True)):
        out = [SegTransform(32, MEAN, STD, settings)(image, ids, sample_generator(0, 0, i)) for i in range(4)]
        assert any(not torch.allclose(img, plain[0]) for img, _ in out)
        assert all(torch.equal(mask, plain[1]) for _, mask in out)
        assert all(img.min() >= -1 and img.max() <= 1 for img, _ in out)


def test_probability_zero_is_identity_and_settings_are_validated():
    image, ids = encoded_pair()
    settings = AugmentationSettings(hflip_probability=0.0, rotate_probability=0.0, color_probability=0.0, brightness=0.5)
    out_image, out_mask = SegTransform(32, MEAN, STD, settings)(image, ids, sample_generator(0, 0, 0))
    assert torch.equal(out_mask, torch.from_numpy(ids))
    with pytest.raises(ValueError, match=r"hflip_probability must be in \[0, 1\], got 1.5"):
        AugmentationSettings(hflip_probability=1.5)
    with pytest.raises(ValueError, match="hue must be in"):
        AugmentationSettings(hue=0.7)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentationSettings(scale_range=(1.2, 1.0))
    with pytest.raises(ValueError, match="0..255 units"):
        SegTransform(32, (123.0, 117.0, 104.0), STD)


def test_same_seed_same_sample_different_seed_or_epoch_differs():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    ids = random_ids(np.random.default_rng(1), 40).astype(np.int64)
    settings = AugmentationSettings(hflip_probability=0.5, vflip_probability=0.5, rotate_probability=0.5,
                                    color_probability=0.5, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1,
                                    scale_range=(1.0, 1.2), random_crop=True, random_blur=True)
    transform = SegTransform(32, MEAN, STD, settings)
    a = transform(image, ids, sample_generator(5, 2, 3))
    b = transform(image, ids, sample_generator(5, 2, 3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], transform(image, ids, sample_generator(6, 2, 3))[0])
    assert not torch.equal(a[0], transform(image, ids, sample_generator(5, 3, 3))[0])


def _epochs(dataset, workers: int, seed: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    sampler = EpochSampler(len(dataset), shuffle=True, seed=seed)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers,
                        persistent_workers=workers > 0)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append([torch.cat([b["image"].flatten(), b["mask"].flatten().float()]) for b in loader])
    return out


def test_batches_are_reproducible_across_runs_and_worker_counts(color_dataset):
    settings = AugmentationSettings(hflip_probability=0.5, vflip_probability=0.5, rotate_probability=0.5,
                                    scale_range=(1.0, 1.2), color_probability=0.5, brightness=0.3)
    dataset = SegmentationDataset(color_dataset, "train", MaskDecoder(COLOR_PALETTE, None, 2),
                                  SegTransform(24, MEAN, STD, settings), seed=11)
    run0 = _epochs(dataset, workers=0, seed=11)
    run2 = _epochs(dataset, workers=2, seed=11)
    for epoch0, epoch2 in zip(run0, run2):
        assert all(torch.equal(x, y) for x, y in zip(epoch0, epoch2))
    assert not all(torch.equal(x, y) for x, y in zip(run0[0], run0[1]))  # epochs differ


def test_preprocess_image_matches_the_evaluation_transform():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    expected, _ = SegTransform(16, MEAN, STD)(array, None)
    assert torch.allclose(preprocess_image(Image.fromarray(array), 16, MEAN, STD), expected)
    gray = preprocess_image(Image.fromarray(array[..., 0]), 16, MEAN, STD)
    assert gray.shape == (3, 16, 16) and torch.equal(gray[0], gray[2])
