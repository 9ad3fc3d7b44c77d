"""The TAO ``SFDataset``: image/mask folders paired by stem, decoded by the one :class:`MaskDecoder`.

Items are dicts ``{"image": float (3,H,W) normalized, "mask": int64 (H,W) (255 = ignore),
"name": stem, "orig_size": int64 tensor (2,) = (H, W) of the file}``; ``mask`` is absent when
``require_masks=False`` (prediction splits). Indexing with ``(epoch, index)`` (what
:class:`EpochSampler` yields) seeds that sample's augmentation from (seed, epoch, index).

Decoded files are kept in a process-wide, memory-bounded cache (see :class:`DecodedCache`), so
epochs after the first, later datasets over the same files, and later trials run by a reused Ray
actor skip reading and decoding. Only what :func:`load_pair` / ``load_image`` return is kept;
augmentation still runs per epoch and per sample.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from segformer.data.files import (DEEP_MODES, Sample, exif_orientation, listed, load_image, load_mask, pair_samples,
                                  scale_depth)
from segformer.data.palette import IGNORE_INDEX, MaskDecoder, MaskValueError
from segformer.data.transforms import sample_generator
from segformer.errors import DataError

Transform = Callable[[np.ndarray, "np.ndarray | None", "torch.Generator | None"],
                     "tuple[torch.Tensor, torch.Tensor | None]"]

PROGRESS_MIN_FILES = 200
"""check_dataset shows a progress bar from this many files on (unless told otherwise)."""

DATA_CACHE_ENV = "SEGFORMER_DATA_CACHE_MB"
"""Environment variable: the decoded-data cache budget in MiB per process (0 disables it)."""

DEFAULT_DATA_CACHE_MB = 2048

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
            f"{image.shape[1]}x{image.shape[0]}; a mask must have exactly its image's size{_exif_hint(sample, image, mask)}"
        )
    try:
        return image, decoder.decode(mask, str(sample.mask))
    except MaskValueError as colours_error:
        indices = None if decoder.is_gray else _indexed(sample.mask)
        if indices is None:
            raise
        # An indexed-colour (P) PNG whose colours are not the palette's: its indices, as TAO's loader
        # reads it (PASCAL VOC's masks: index = class id, drawn in VOC's colours), when they are label_ids.
        try:
            return image, decoder.decode(indices, str(sample.mask))
        except MaskValueError:
            raise colours_error from None


def _indexed(path: Path) -> np.ndarray | None:
    """An indexed-colour (P) mask's indices; None for other masks."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image) if image.mode == "P" else None


def _note_image(path: Path, depths: dict[str, list[str]], turned: list[str], deep_colour: list[str]) -> None:
    """The facts check_dataset reports for a split: a deep image's scale, an EXIF turn, 16 bits per
    colour channel (which PIL reads as the top 8 bits)."""
    from PIL import Image

    if exif_orientation(path) in (2, 3, 4, 5, 6, 7, 8):
        turned.append(path.name)
    try:
        with Image.open(path) as image:
            rawmodes = [tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0] for tile in image.tile]
            if image.mode in ("RGB", "RGBA") and any(str(m).startswith(("RGB;16", "RGBA;16", "RGBX;16")) for m in rawmodes):
                deep_colour.append(path.name)
            depth = scale_depth(image) if image.mode in DEEP_MODES else None
    except (OSError, ValueError):  # unreadable: load_pair has reported it
        return
    if depth is not None:
        depths.setdefault(depth, []).append(path.name)


def _exif_hint(sample: Sample, image: np.ndarray, mask: np.ndarray) -> str:
    """Labelling tools draw on the image as displayed: a JPEG whose EXIF orientation turns it gets a mask
    of the turned size, while its pixels (read as stored: the image and mask stay aligned) are not."""
    if image.shape[:2] != mask.shape[:2][::-1]:
        return ""
    orientation = exif_orientation(sample.image)
    if orientation not in (5, 6, 7, 8):
        return ""
    return (f" (the image's EXIF orientation {orientation} shows it turned, and the mask was drawn on it turned: "
            "save the image with its pixels turned, e.g. PIL.ImageOps.exif_transpose, and no orientation tag)")


# ---------------------------------------------------------------------- decoded-data cache
def data_cache_budget() -> int:
    """The cache budget in bytes, read from ``SEGFORMER_DATA_CACHE_MB`` on every call (tests change it).

    Unset: 2 GiB per training process, split among its DataLoader workers.
    """
    raw = os.environ.get(DATA_CACHE_ENV, "").strip()
    if not raw:
        # The default is per training process: DataLoader workers share it, so N workers plus
        # the main process hold at most about twice the default, not N + 1 times.
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return (DEFAULT_DATA_CACHE_MB << 20) // (info.num_workers if info is not None else 1)
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:  # also refuses nan
        raise ValueError(f"{DATA_CACHE_ENV}={raw!r} must be a number of MiB >= 0 (0 disables the decoded-data "
                         f"cache; unset means {DEFAULT_DATA_CACHE_MB})")
    return int(megabytes * (1 << 20))


class DecodedCache:
    """LRU cache of decoded files, bounded in bytes, shared by every dataset of one process.

    Entries are keyed by the absolute file paths (and the decoder fingerprint for masks) and
    stamped with the (device, inode, size, mtime_ns, ctime_ns) of the file each path resolves to:
    a file changed on disk, or a link pointed elsewhere, no longer matches its stamp, so it is
    read again and its old entry replaced, never served stale. Arrays are stored read-only (ids as
    uint8), so a transform that writes into its input fails loudly instead of corrupting later
    epochs. Failed reads (``DataError``) are not cached and raise every time.

    Module level on purpose: a Ray Tune actor reused for the next trial finds the data decoded.
    DataLoader worker processes each hold their own copy (forked workers start from the parent's
    entries); the default budget is split among them (see :func:`data_cache_budget`). A lock makes it
    safe for threads; decoding itself runs outside the lock.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple, tuple[tuple, tuple, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, slot: tuple, stamp: tuple, budget: int) -> tuple | None:
        """The arrays stored for ``slot`` if the files still match ``stamp``, else None (a stale entry is dropped)."""
        with self._lock:
            self._trim(budget)
            entry = self._entries.get(slot)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(slot)
                return entry[1]
            if entry is not None:
                self._drop(slot)
            return None

    def put(self, slot: tuple, stamp: tuple, value: tuple, budget: int) -> bool:
        """Store ``value`` (read-only arrays) unless it alone exceeds ``budget``; evicts least recently used."""
        nbytes = sum(a.nbytes for a in value if a is not None)
        if nbytes > budget:
            return False
        with self._lock:
            self._drop(slot)
            self._entries[slot] = (stamp, value, nbytes)
            self._bytes += nbytes
            self._trim(budget)
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def trim(self, budget: int) -> None:
        """Evict least recently used entries until at most ``budget`` bytes are kept."""
        with self._lock:
            self._trim(budget)

    def _drop(self, slot: tuple) -> None:
        entry = self._entries.pop(slot, None)
        if entry is not None:
            self._bytes -= entry[2]

    def _trim(self, budget: int) -> None:
        while self._bytes > budget and self._entries:
            self._drop(next(iter(self._entries)))

    def _after_fork(self) -> None:
        # a forked child (DataLoader worker) must not inherit a lock held by another parent thread
        self._lock = threading.Lock()


DATA_CACHE = DecodedCache()
"""The process-wide cache used by :class:`SegmentationDataset` and :func:`check_dataset`."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=DATA_CACHE._after_fork)


def decoder_fingerprint(decoder: MaskDecoder) -> str:
    """What makes ``decode`` output differ: the palette entries and label_transform (is_gray follows)."""
    text = repr((decoder.label_transform, decoder.is_gray, decoder.entries))
    return hashlib.sha256(text.encode()).hexdigest()


def _file_stamp(path: Path) -> tuple[int, ...]:
    """(dev, inode, size, mtime_ns, ctime_ns) of the file a path resolves to; OSError when it cannot be stat'ed.

    ``os.stat`` follows symbolic links, so device and inode name the resolved file: a link pointed
    elsewhere, or a file replaced by another, no longer matches (without realpath's cost per call).
    """
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _freeze(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _compact_ids(ids: np.ndarray) -> np.ndarray:
    """Training ids are 0..255: keep them as uint8 (8x less memory than int64) when that is lossless."""
    if ids.dtype != np.uint8 and ids.size and ids.min() >= 0 and ids.max() <= 255:
        return ids.astype(np.uint8)
    return ids.copy()


def _cached_load(sample: Sample, decoder: MaskDecoder | None, fingerprint: str | None,
                 cache: DecodedCache = DATA_CACHE) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`load_pair` (or ``load_image`` when ``decoder`` is None) through the cache.

    The image is read-only when it came from (or went into) the cache; the ids are always a fresh
    writable int64 array, so callers see the same values and dtypes with the cache on or off.
    """
    masks = decoder is not None

    def read() -> tuple[np.ndarray, np.ndarray | None]:
        return load_pair(sample, decoder) if masks else (load_image(sample.image), None)

    budget = data_cache_budget()
    if budget <= 0:
        cache.trim(0)  # disabled while the process runs: free what was kept
        return read()
    files = (sample.image, sample.mask) if masks else (sample.image,)
    slot = (tuple(os.path.abspath(path) for path in files), fingerprint)  # type: ignore[arg-type]
    try:
        stamp: tuple | None = tuple(_file_stamp(path) for path in files)  # type: ignore[arg-type]
    except OSError:  # missing or unreadable: let the loader raise its DataError
        stamp = None
    if stamp is not None:
        hit = cache.get(slot, stamp, budget)
        if hit is not None:
            image, ids = hit
            return image, None if ids is None else ids.astype(np.int64)
    image, ids = read()
    image = _freeze(np.ascontiguousarray(image))
    if stamp is not None:
        try:
            unchanged = tuple(_file_stamp(path) for path in files) == stamp  # type: ignore[arg-type]
        except OSError:
            unchanged = False
        if unchanged:  # a file rewritten while it was read is not stored under its old stamp
            cache.put(slot, stamp, (image, None if ids is None else _freeze(_compact_ids(ids))), budget)
    return image, ids


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
        self.by_name = {sample.name: sample for sample in self.samples}
        self._fingerprint = decoder_fingerprint(decoder) if require_masks and decoder is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.samples[index]
        image, ids = _cached_load(sample, self.decoder if self.require_masks else None, self._fingerprint)
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


def check_dataset(root_dir: str | Path, split: str, decoder: MaskDecoder | None, *, require_masks: bool = True,
                  progress: bool | None = None, raise_on_error: bool = True,
                  cache: DecodedCache | None = DATA_CACHE) -> DatasetReport:
    """Read every file of a split once and report every problem together, before training starts.

    Checks: layout and stem pairing, unreadable images/masks, image/mask size mismatch, mask
    values outside the palette. With ``raise_on_error`` any problem raises one :class:`DataError`
    listing them; otherwise they are returned in the report. A progress bar appears for splits of
    ``PROGRESS_MIN_FILES`` files or more (``progress`` forces it on or off). The decoded files go
    into ``cache`` for the training that follows; ``None`` keeps nothing (a check in a process that
    does not train, such as the AutoML driver).
    """
    samples, pairing_problem = pair_samples(root_dir, split, require_masks=require_masks, strict=False)
    problems = [pairing_problem] if pairing_problem else []
    num_classes = decoder.num_classes if decoder is not None else 0
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    ignored = 0
    fingerprint = decoder_fingerprint(decoder) if require_masks and decoder is not None else None
    unknown: dict[tuple, list[MaskValueError]] = {}  # masks with values the palette lacks, by the values
    depths: dict[str, list[str]] = {}  # deep grey images by the depth they are scaled from
    turned: list[str] = []  # images with an EXIF orientation that turns them
    deep_colour: list[str] = []  # images of 16 bits per colour channel
    show = len(samples) >= PROGRESS_MIN_FILES if progress is None else progress
    iterator: Iterable[Sample] = samples
    if show:
        from segformer.heartbeat import progress

        iterator = progress(samples, f"checking split {split!r}", "file")
    for sample in iterator:
        try:
            if require_masks:
                assert decoder is not None
                _, ids = load_pair(sample, decoder) if cache is None else _cached_load(sample, decoder, fingerprint, cache)
                counts = np.bincount(ids.ravel(), minlength=256)
                class_pixels += counts[:num_classes]
                ignored += int(counts[IGNORE_INDEX])
            elif cache is None:
                load_image(sample.image)
            else:
                _cached_load(sample, None, None, cache)
            _note_image(sample.image, depths, turned, deep_colour)
        except MaskValueError as exc:
            unknown.setdefault(exc.key, []).append(exc)
        except DataError as exc:
            problems.append(str(exc))
    problems += [MaskValueError.grouped(errors) for errors in unknown.values()]  # one per wrong value, not per file
    report = DatasetReport(split, len(samples), class_pixels, ignored, problems)
    if len(depths) > 1:
        counts = ", ".join(f"{depth}: {len(names)} ({listed(names)})" for depth, names in sorted(depths.items()))
        warnings.warn(f"dataset split {split!r} under {root_dir}: its deep grey images are scaled to 8 bits from different "
                      f"depths ({counts}), each from the depth its values fit in, so the same value reads brighter in "
                      "a darker image; convert the dataset to 8-bit with one scale for all images")
    if deep_colour:
        warnings.warn(f"dataset split {split!r} under {root_dir}: {len(deep_colour)} colour image(s) of 16 bits per channel "
                      f"({listed(deep_colour)}) are read as their top 8 bits (PIL's reading), so 12-bit data reads dark "
                      "(4095 as 15 of 255); convert them to 8-bit colour with one scale for the whole dataset")
    if turned:
        warnings.warn(f"dataset split {split!r} under {root_dir}: {len(turned)} image(s) carry an EXIF orientation "
                      f"({listed(turned)}): their pixels are read as stored (as TAO reads them), not turned as image "
                      "viewers show them, so a mask drawn on the turned view does not align; save them with their "
                      "pixels turned (PIL.ImageOps.exif_transpose) and no orientation tag")
    if require_masks and decoder is not None and samples and not problems:
        missing = [f"{name!r} (training id {i})" for i, name in enumerate(decoder.class_names) if not class_pixels[i]]
        if missing:
            warnings.warn(f"dataset split {split!r} under {root_dir} has no pixel of class {', '.join(missing)}: a class "
                          "missing from training is never learnt, and one missing from validation or test scores IoU 0 "
                          "wherever the model predicts it (lowering mIoU); move images that hold it into this split")
    if problems and raise_on_error:
        shown = "\n  - ".join(problems[:_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - _LISTED_PROBLEMS} more problems" if len(problems) > _LISTED_PROBLEMS else ""
        raise DataError(f"dataset split {split!r} under {root_dir} has {len(problems)} problem(s):\n  - {shown}{more}")
    return report


__all__ = ["SegmentationDataset", "EpochSampler", "DatasetReport", "check_dataset", "load_pair", "DecodedCache",
           "DATA_CACHE", "DATA_CACHE_ENV", "data_cache_budget", "decoder_fingerprint"]
