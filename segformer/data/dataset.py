"""The TAO ``SFDataset``: image/mask folders paired by stem, decoded by the one :class:`MaskDecoder`.

Items are dicts ``{"image": float (3,H,W) normalized, "mask": int64 (H,W) (255 = ignore),
"name": stem, "orig_size": int64 tensor (2,) = (H, W) of the file}``; ``mask`` is absent when
``require_masks=False`` (prediction splits). Indexing with ``(epoch, index)`` (what
:class:`EpochSampler` yields) seeds that sample's augmentation from (seed, epoch, index).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segformer.data.files import Sample, load_image, load_mask, pair_samples
from segformer.data.palette import IGNORE_INDEX, MaskDecoder
from segformer.data.transforms import sample_generator
from segformer.errors import DataError

Transform = Callable[[np.ndarray, "np.ndarray | None", "torch.Generator | None"],
                     "tuple[torch.Tensor, torch.Tensor | None]"]

PROGRESS_MIN_FILES = 200
"""check_dataset shows a progress bar from this many files on (unless told otherwise)."""

_LISTED_PROBLEMS = 20
_SHUFFLE_STREAM = 2**32 - 1  # generator index for the shuffle order (never a sample index)


def load_pair(sample: Sample, decoder: MaskDecoder) -> tuple[np.ndarray, np.ndarray]:
    """Read one image and decode its mask, checking that their sizes agree."""
    image = load_image(sample.image)
    assert sample.mask is not None
    mask = load_mask(sample.mask, as_color=not decoder.is_gray)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]}; a mask must have exactly its image's size"
        )
    return image, decoder.decode(mask, str(sample.mask))


class SegmentationDataset(Dataset):
    """``<root_dir>/images/<split>`` paired by stem with ``<root_dir>/masks/<split>``.

    Args:
        root_dir: dataset root (TAO ``dataset.segment.root_dir``).
        split: split folder name.
        decoder: mask decoder; may be None when ``require_masks`` is False.
        transform: :class:`~segformer.data.transforms.SegTransform` (or any callable of that shape).
        require_masks: False for prediction: images only, masks are not read.
        seed: augmentation seed (``train.seed``).
    """

    def __init__(self, root_dir: str | Path, split: str, decoder: MaskDecoder | None, transform: Transform,
                 require_masks: bool = True, seed: int = 0) -> None:
        if require_masks and decoder is None:
            raise ValueError("a decoder is needed when require_masks is True")
        self.root_dir = Path(root_dir)
        self.split = split
        self.decoder = decoder
        self.transform = transform
        self.require_masks = require_masks
        self.seed = int(seed)
        self.samples, _ = pair_samples(self.root_dir, split, require_masks=require_masks, strict=True)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.samples[index]
        if self.require_masks:
            assert self.decoder is not None
            image, ids = load_pair(sample, self.decoder)
        else:
            image, ids = load_image(sample.image), None
        generator = sample_generator(self.seed, epoch, index)
        tensor, mask = self.transform(image, ids, generator)
        item = {"image": tensor, "name": sample.name,
                "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64)}
        if mask is not None:
            item["mask"] = mask
        return item


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` so workers seed augmentations without shared state.

    Shuffling uses a permutation seeded from (seed, epoch). Lightning calls :meth:`set_epoch`
    before each epoch; without it the epoch advances by one per pass.

    With ``shard=True`` and an initialised process group of several ranks (DDP), each rank takes
    its own slice of the permutation (``order[rank::world_size]``, padded by wrapping around so
    every rank runs the same number of steps), so N GPUs see N different batches per step. This is
    the default; it is switched off only when Lightning wraps the sampler in its own distributed
    sampler (``train.use_distributed_sampler: true``), which shards it instead.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int, *, shard: bool = True) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rank_and_world(self) -> tuple[int, int]:
        if self.shard and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._rank_and_world()
        return -(-self.num_samples // world)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=sample_generator(self.seed, epoch, _SHUFFLE_STREAM))
            indices = order.tolist()
        else:
            indices = list(range(self.num_samples))
        rank, world = self._rank_and_world()
        if world > 1:
            per_rank = -(-len(indices) // world)
            padded = (indices * (1 + per_rank * world // max(1, len(indices))))[: per_rank * world]
            indices = padded[rank::world]
        return iter([(epoch, i) for i in indices])


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found in one split."""

    split: str
    num_samples: int
    class_pixels: np.ndarray  # (num_classes,) pixel count per training id
    ignored_pixels: int
    problems: list[str] = field(default_factory=list)

    @property
    def missing_classes(self) -> list[int]:
        return [i for i, n in enumerate(self.class_pixels) if n == 0]


def check_dataset(root_dir: str | Path, split: str, decoder: MaskDecoder | None, *, require_masks: bool = True,
                  progress: bool | None = None, raise_on_error: bool = True) -> DatasetReport:
    """Read every file of a split once and report every problem together, before training starts.

    Checks: layout and stem pairing, unreadable images/masks, image/mask size mismatch, mask
    values outside the palette. With ``raise_on_error`` any problem raises one :class:`DataError`
    listing them; otherwise they are returned in the report. A progress bar appears for splits of
    ``PROGRESS_MIN_FILES`` files or more (``progress`` forces it on or off).
    """
    samples, pairing_problem = pair_samples(root_dir, split, require_masks=require_masks, strict=False)
    problems = [pairing_problem] if pairing_problem else []
    num_classes = decoder.num_classes if decoder is not None else 0
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    ignored = 0
    show = len(samples) >= PROGRESS_MIN_FILES if progress is None else progress
    iterator: Sequence[Sample] = samples
    if show:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"checking split {split!r}", unit="file")
    for sample in iterator:
        try:
            if require_masks:
                assert decoder is not None
                _, ids = load_pair(sample, decoder)
                counts = np.bincount(ids.ravel(), minlength=256)
                class_pixels += counts[:num_classes]
                ignored += int(counts[IGNORE_INDEX])
            else:
                load_image(sample.image)
        except DataError as exc:
            problems.append(str(exc))
    report = DatasetReport(split, len(samples), class_pixels, ignored, problems)
    if problems and raise_on_error:
        shown = "\n  - ".join(problems[:_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - _LISTED_PROBLEMS} more problems" if len(problems) > _LISTED_PROBLEMS else ""
        raise DataError(f"dataset split {split!r} under {root_dir} has {len(problems)} problem(s):\n  - {shown}{more}")
    return report


__all__ = ["SegmentationDataset", "EpochSampler", "DatasetReport", "check_dataset", "load_pair"]
