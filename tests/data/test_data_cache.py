"""The process-wide decoded-data cache: hits skip reading, changed files are re-read, the byte budget
evicts least recently used samples, and augmented items are identical with the cache on or off."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import segformer.data.dataset as dataset_module
from segformer.data.dataset import DATA_CACHE, DATA_CACHE_ENV, SegmentationDataset, check_dataset, load_pair
from segformer.data.palette import MaskDecoder
from segformer.data.transforms import AugmentationSettings, SegTransform
from segformer.errors import DataError

from datahelpers import COLOR_PALETTE, color_mask, write_image

DECODER = MaskDecoder(COLOR_PALETTE, None, num_classes=2)
MEAN = STD = (0.5, 0.5, 0.5)
SAMPLE_BYTES = 32 * 32 * 3 + 32 * 32  # uint8 image + ids kept as uint8
HEAVY = AugmentationSettings(hflip_probability=0.5, vflip_probability=0.5, rotate_probability=0.5,
                             angle_list=(90.0, 45.0), scale_range=(0.8, 1.2), random_crop=True, random_blur=True,
                             color_probability=0.5, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(DATA_CACHE_ENV, raising=False)
    DATA_CACHE.clear()
    yield
    DATA_CACHE.clear()


@pytest.fixture
def reads(monkeypatch) -> dict[str, int]:
    """Counts real file reads (the loaders the dataset module calls), without touching the cache."""
    counts = {"image": 0, "mask": 0}
    real_image, real_mask = dataset_module.load_image, dataset_module.load_mask

    def load_image(path):
        counts["image"] += 1
        return real_image(path)

    def load_mask(path, as_color):
        counts["mask"] += 1
        return real_mask(path, as_color)

    monkeypatch.setattr(dataset_module, "load_image", load_image)
    monkeypatch.setattr(dataset_module, "load_mask", load_mask)
    return counts


def make_dataset(root: Path, augment: AugmentationSettings | None = None, decoder: MaskDecoder = DECODER,
                 require_masks: bool = True, split: str = "train") -> SegmentationDataset:
    return SegmentationDataset(root, split, decoder if require_masks else None,
                               SegTransform(24, MEAN, STD, augment), require_masks=require_masks, seed=5)


def set_budget(monkeypatch, nbytes: int) -> None:
    monkeypatch.setenv(DATA_CACHE_ENV, repr(nbytes / (1 << 20)))


def bump_mtime(path: Path) -> None:
    """Make sure the rewrite is visible in the stamp even on coarse-timestamp file systems."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


class Recorder:
    """A transform that keeps what the dataset hands it (the decoded arrays, cached or not)."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray | None]] = []

    def __call__(self, image, ids, generator):
        self.calls.append((image, ids))
        return torch.from_numpy(np.array(image)), None if ids is None else torch.from_numpy(np.array(ids))


def test_hit_returns_equal_arrays_without_reading_again(color_dataset, reads):
    ds = make_dataset(color_dataset)
    expected_image, expected_ids = load_pair(ds.samples[0], DECODER)
    first = ds[0]
    assert reads == {"image": 2, "mask": 2}  # load_pair above + the first item
    second = ds[0]
    other = make_dataset(color_dataset)[0]  # a new dataset in the same process (a reused Ray actor)
    assert reads == {"image": 2, "mask": 2}
    for item in (second, other):
        assert torch.equal(item["image"], first["image"]) and torch.equal(item["mask"], first["mask"])
    recorder = Recorder()
    SegmentationDataset(color_dataset, "train", DECODER, recorder)[0]
    assert reads == {"image": 2, "mask": 2}  # served from the cache
    [(image, ids)] = recorder.calls
    assert np.array_equal(image, expected_image) and not image.flags.writeable
    # the cache keeps ids as uint8; a caller gets int64, writable, as without the cache
    assert ids.dtype == np.int64 and ids.flags.writeable and np.array_equal(ids, expected_ids)


def test_prediction_path_caches_images_only(color_dataset, reads):
    ds = make_dataset(color_dataset, require_masks=False, split="test")
    first, second = ds[1], ds[1]
    assert reads == {"image": 1, "mask": 0}
    assert "mask" not in second and torch.equal(first["image"], second["image"])
    assert torch.equal(second["orig_size"], torch.tensor([32, 32]))


def test_changed_file_is_read_again(color_dataset, reads):
    ds = make_dataset(color_dataset)
    sample = ds.samples[0]
    ds[0]
    write_image(sample.image, np.full((32, 32, 3), 7, np.uint8))
    bump_mtime(sample.image)
    recorder = Recorder()
    SegmentationDataset(color_dataset, "train", DECODER, recorder)[0]
    assert (recorder.calls[0][0] == 7).all()
    assert reads == {"image": 2, "mask": 2}  # a pair is read together
    ids = np.zeros((32, 32), np.uint8)  # every pixel becomes class 0 (sky)
    write_image(sample.mask, color_mask(ids))
    bump_mtime(sample.mask)
    assert (ds[0]["mask"] == 0).all()
    assert reads == {"image": 3, "mask": 3}
    ds[0]
    assert reads == {"image": 3, "mask": 3}


def test_a_replaced_entry_gives_back_its_bytes(color_dataset, reads, monkeypatch):
    """The stale version of a changed file is replaced, not kept beside the new one: with room
    for exactly two samples, the re-read sample 0 and sample 1 both stay cached."""
    set_budget(monkeypatch, 2 * SAMPLE_BYTES)
    ds = make_dataset(color_dataset)
    ds[1], ds[0]
    bump_mtime(ds.samples[0].mask)
    ds[0]
    assert reads["mask"] == 3
    ds[1], ds[0], ds[1]
    assert reads["mask"] == 3


def test_touched_file_with_same_size_is_read_again(color_dataset, reads):
    ds = make_dataset(color_dataset)
    ds[0]
    bump_mtime(ds.samples[0].mask)
    ds[0]
    assert reads == {"image": 2, "mask": 2}


def test_decoder_is_part_of_the_key(color_dataset, reads):
    swapped = [dict(entry) for entry in COLOR_PALETTE]
    swapped[0]["label_id"], swapped[1]["label_id"] = 1, 0
    plain, other = make_dataset(color_dataset), make_dataset(color_dataset, decoder=MaskDecoder(swapped, None, 2))
    a, b = plain[0]["mask"], other[0]["mask"]
    assert reads["mask"] == 2
    valid = a != 255
    assert valid.any() and torch.equal(b[valid], 1 - a[valid])


def test_budget_evicts_least_recently_used(color_dataset, reads, monkeypatch):
    set_budget(monkeypatch, 2 * SAMPLE_BYTES)
    ds = make_dataset(color_dataset)
    ds[0], ds[1], ds[0], ds[2]  # 1 is the least recently used when 2 arrives
    assert reads["mask"] == 3  # one hit (the second ds[0])
    ds[0], ds[2]
    assert reads["mask"] == 3
    ds[1]
    assert reads["mask"] == 4


def test_sample_larger_than_budget_is_not_cached(color_dataset, reads, monkeypatch):
    set_budget(monkeypatch, SAMPLE_BYTES - 1)
    ds = make_dataset(color_dataset)
    ds[0], ds[0]
    assert reads["mask"] == 2


def test_zero_budget_disables_and_frees(color_dataset, reads, monkeypatch):
    ds = make_dataset(color_dataset)
    ds[0], ds[1], ds[0]
    assert reads["mask"] == 2
    monkeypatch.setenv(DATA_CACHE_ENV, "0")
    ds[0], ds[0]
    assert reads["mask"] == 4
    monkeypatch.delenv(DATA_CACHE_ENV)  # on again: what was kept before was freed, so both are read
    ds[0], ds[1]
    assert reads["mask"] == 6
    ds[0], ds[1]
    assert reads["mask"] == 6


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_bad_budget_is_refused(color_dataset, monkeypatch, value):
    monkeypatch.setenv(DATA_CACHE_ENV, value)
    with pytest.raises(ValueError, match=DATA_CACHE_ENV):
        make_dataset(color_dataset)[0]


def _epochs(ds: SegmentationDataset, epochs: int = 3) -> list[dict]:
    return [ds[(epoch, index)] for epoch in range(epochs) for index in range(len(ds))]


def test_augmented_items_identical_with_cache_on_and_off(color_dataset, monkeypatch, reads):
    monkeypatch.setenv(DATA_CACHE_ENV, "0")
    off = _epochs(make_dataset(color_dataset, HEAVY))
    assert reads["mask"] == 3 * 6
    monkeypatch.delenv(DATA_CACHE_ENV)
    on = _epochs(make_dataset(color_dataset, HEAVY))
    assert reads["mask"] == 3 * 6 + 6  # only the first epoch read files
    assert len(on) == len(off) == 18
    for a, b in zip(off, on):
        assert a["name"] == b["name"] and torch.equal(a["orig_size"], b["orig_size"])
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(on[0]["image"], on[6]["image"])  # epochs differ: augmentation still runs


def test_cached_arrays_are_never_mutated(color_dataset, reads):
    ds = make_dataset(color_dataset, HEAVY)
    eval_ds = SegmentationDataset(color_dataset, "train", DECODER, SegTransform(32, MEAN, STD, resize_masks=False))
    for epoch in range(4):
        for index in range(len(ds)):
            item = ds[(epoch, index)]
            item["image"].zero_()  # downstream in-place work on the outputs must not reach the cache
            item["mask"].fill_(3)
            eval_ds[index]["mask"].fill_(3)  # same-size masks: the transform must not share memory
    assert reads["mask"] == len(ds)
    recorder = Recorder()
    cached = SegmentationDataset(color_dataset, "train", DECODER, recorder)
    for index in range(len(cached)):
        cached[index]
    assert reads["mask"] == len(ds)  # every array below came from the cache
    for sample, (image, ids) in zip(cached.samples, recorder.calls):
        fresh_image, fresh_ids = load_pair(sample, DECODER)
        assert np.array_equal(image, fresh_image) and np.array_equal(ids, fresh_ids)


def test_transform_writing_into_its_input_fails_loudly(color_dataset):
    def writing_transform(image, ids, generator):
        image[0, 0] = 0
        return torch.zeros(3, 2, 2), None

    ds = SegmentationDataset(color_dataset, "train", DECODER, writing_transform)
    for _ in range(2):  # the first read already hands out the array it caches
        with pytest.raises(ValueError, match="read-only"):
            ds[0]
    recorder = Recorder()
    SegmentationDataset(color_dataset, "train", DECODER, recorder)[0]
    assert np.array_equal(recorder.calls[0][0], load_pair(ds.samples[0], DECODER)[0])


def test_read_only_int64_mask_is_copied_by_the_transform():
    mask = np.ones((8, 8), np.int64)
    mask.setflags(write=False)
    _, ids = SegTransform(8, MEAN, STD, resize_masks=False)(np.zeros((8, 8, 3), np.uint8), mask)
    ids.fill_(0)
    assert (mask == 1).all()


def test_errors_raise_every_time_and_are_not_cached(tmp_path, reads):
    write_image(tmp_path / "images/train/a.png", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "masks/train/a.png", color_mask(np.zeros((6, 8), np.uint8)))
    ds = make_dataset(tmp_path)
    for _ in range(2):
        with pytest.raises(DataError, match=r"mask .*a\.png is 8x6 \(WxH\) but its image .*a\.png is 8x8"):
            ds[0]
    assert reads == {"image": 2, "mask": 2}  # the second try read the files again
    write_image(tmp_path / "masks/train/a.png", color_mask(np.zeros((8, 8), np.uint8)))
    bump_mtime(tmp_path / "masks/train/a.png")
    assert (ds[0]["mask"] == 0).all()


def test_check_dataset_fills_the_cache_for_training(color_dataset, reads):
    check_dataset(color_dataset, "train", DECODER, progress=False)
    assert reads["mask"] == 6
    ds = make_dataset(color_dataset, HEAVY)
    [ds[(0, i)] for i in range(len(ds))]
    assert reads["mask"] == 6


def test_threads_share_the_cache_safely(color_dataset, reads):
    ds = make_dataset(color_dataset, HEAVY)
    expected = [ds[(1, i)]["image"] for i in range(len(ds))]
    failures: list[str] = []

    def work() -> None:
        for _ in range(5):
            for i in range(len(ds)):
                if not torch.equal(ds[(1, i)]["image"], expected[i]):
                    failures.append(f"item {i}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert reads["mask"] == len(ds)  # read once, before the threads started: every thread hit the cache
