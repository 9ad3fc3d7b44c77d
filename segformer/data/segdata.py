"""The data of TAO's ``dataset.segment`` (splits, loaders, the mask decoder) and the calibration
image iterator, without Lightning: evaluation, inference, export, quantization and the search's
report use these and do not pay for importing Lightning (about 5 s a process).
:class:`segformer.data.datamodule.SegDataModule` adds Lightning's DataModule for training.

:func:`build_data` is the one place that reads the config section; :class:`SegData` takes explicit
typed arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from segformer.data.dataset import DatasetReport, EpochSampler, SegmentationDataset, check_dataset
from segformer.data.files import IMAGE_EXTENSIONS, list_files, open_image
from segformer.data.palette import MaskDecoder
from segformer.data.transforms import AugmentationSettings, SegTransform, preprocess_image
from segformer.errors import DataError, SpecError

SUPPORTED_DATASETS = ("SFDataset",)


class SegData:
    """Train/val/test/predict loaders over a TAO image/mask folder dataset.

    Args:
        root_dir: dataset root holding ``images/<split>`` and ``masks/<split>``.
        num_classes: number of training classes (checked against the palette).
        img_size: square network input side.
        palette: TAO palette entries; label_transform: ``"norm"`` or None.
        batch_size: training batch size; eval_batch_size: val/test/predict (default: batch_size).
        workers: DataLoader worker processes (persistent when > 0).
        shuffle: shuffle the training split (seeded per epoch).
        augmentation: training augmentations (None: none).
        mean, std: normalisation in 0..1 units.
        seed: ``train.seed``; fixes shuffling and augmentations for any number of workers.
        check_data: read every file of the splits in use once during ``setup`` and report all problems.
        full_resolution_masks: keep val/test masks at their file size (needs eval batch size 1
            unless all images share a size).
        score_size: side val/test masks are resized to (0: img_size), unless full_resolution_masks.
    """

    def __init__(self, *, root_dir: str | Path, num_classes: int, img_size: int, palette: Sequence[Any],
                 label_transform: str | None, batch_size: int = 8, eval_batch_size: int | None = None,
                 workers: int = 1, shuffle: bool = True, train_split: str = "train",
                 validation_split: str = "val", test_split: str = "val", predict_split: str = "test",
                 augmentation: AugmentationSettings | None = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 seed: int = 1234, check_data: bool = True, full_resolution_masks: bool = False,
                 score_size: int = 0, shard_train: bool = True) -> None:
        super().__init__()  # in SegDataModule: LightningDataModule's (next in the method order)
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise SpecError(f"dataset.segment batch sizes must be >= 1, got batch_size={batch_size}, "
                            f"eval_batch_size={eval_batch_size}")
        if workers < 0:
            raise SpecError(f"dataset.segment.workers must be >= 0, got {workers}")
        self.root_dir = Path(root_dir)
        self.decoder = MaskDecoder(palette, label_transform, num_classes)
        self.num_classes = int(num_classes)
        self.img_size = int(img_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.workers = int(workers)
        self.shuffle = bool(shuffle)
        self.splits = {"train": train_split, "val": validation_split, "test": test_split, "predict": predict_split}
        self.augmentation = augmentation
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = int(seed)
        self.check_data = check_data
        self.full_resolution_masks = full_resolution_masks
        if score_size < 0:
            raise SpecError(f"dataset.segment.score_size must be >= 0 (0: img_size), got {score_size}")
        self.score_size = int(score_size)
        # Under DDP each rank trains on its own slice of every epoch's permutation, unless Lightning
        # shards the loader itself (train.use_distributed_sampler: true): see EpochSampler.
        self.shard_train = shard_train
        self.reports: dict[str, DatasetReport] = {}
        self.datasets: dict[str, SegmentationDataset] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.decoder.class_names)

    def _dataset(self, role: str) -> SegmentationDataset:
        split = self.splits[role]
        train = role == "train"
        masks = role != "predict"
        if self.check_data and masks and role not in self.reports:
            self.reports[role] = check_dataset(self.root_dir, split, self.decoder)
        transform = SegTransform(self.img_size, self.mean, self.std,
                                 augment=self.augmentation if train else None,
                                 resize_masks=train or not self.full_resolution_masks,
                                 mask_size=None if train else self.score_size or None)
        return SegmentationDataset(self.root_dir, split, self.decoder if masks else None, transform,
                                   require_masks=masks, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        roles = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        wanted = roles.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test")
        for role in wanted:
            if role not in self.datasets:
                self.datasets[role] = self._dataset(role)

    def _loader(self, role: str, batch_size: int, sampler=None) -> DataLoader:
        if role not in self.datasets:
            self.datasets[role] = self._dataset(role)
        # A generator of its own: starting an iterator draws the workers' base seed, from the global RNG
        # otherwise, which the model's stochastic depth also draws from. Persistent workers start once
        # per run, so a resumed run drew once more than the run it continues and trained differently.
        return DataLoader(self.datasets[role], batch_size=batch_size, sampler=sampler, num_workers=self.workers,
                          persistent_workers=self.workers > 0, pin_memory=torch.cuda.is_available(),
                          drop_last=False, generator=torch.Generator().manual_seed(self.seed))

    def train_batches(self, world_size: int = 1) -> int:
        """Batches per epoch on each of ``world_size`` processes (every rank takes ceil(n / world) samples,
        whether this sampler or Lightning's distributed one shards), without starting a loader."""
        if "train" not in self.datasets:
            self.datasets["train"] = self._dataset("train")
        per_rank = -(-len(self.datasets["train"]) // max(1, world_size))
        return -(-per_rank // self.batch_size)

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.datasets:
            self.datasets["train"] = self._dataset("train")
        sampler = EpochSampler(len(self.datasets["train"]), self.shuffle, self.seed, shard=self.shard_train)
        # Lightning starts the loader's iterator before it sets the sampler's epoch, and workers fetch their
        # first batches then: a resumed run (at epoch 2, say) trained them in epoch 0's order and augmentations.
        # The epoch Lightning is about to set (its restored loop's), so they are the uninterrupted run's.
        trainer = getattr(self, "trainer", None)
        sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0)
        return self._loader("train", self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size)


def _get(section: Any, name: str, where: str) -> Any:
    if not hasattr(section, name):
        raise DataError(f"{where}.{name} is missing from the config")
    return getattr(section, name)


def build_data(segment_cfg: Any, seed: int, *, train_batch_size: int | None = None,
               eval_batch_size: int | None = None, check_data: bool = True,
               full_resolution_masks: bool = False, shard_train: bool = True, cls: type[SegData] = SegData) -> SegData:
    """``cfg.dataset.segment`` -> :class:`SegData`, or ``cls`` (a subclass taking its arguments: the
    Lightning DataModule); the only config-to-arguments translation.

    A disabled augmentation block (``enable: false``) becomes probability 0 / None.
    ``train_batch_size`` overrides ``batch_size`` (AutoML); ``eval_batch_size`` is usually
    ``evaluate.batch_size``. ``shard_train`` is ``not train.use_distributed_sampler``: our sampler
    shards the training data across DDP ranks unless Lightning's distributed sampler does.
    """
    where = "dataset.segment"
    kind = _get(segment_cfg, "dataset", where)
    if kind not in SUPPORTED_DATASETS:
        raise DataError(f"{where}.dataset must be one of {list(SUPPORTED_DATASETS)}, got {kind!r}")
    root_dir = _get(segment_cfg, "root_dir", where)
    if root_dir in (None, "", "???"):
        raise DataError(f"{where}.root_dir is not set; point it at the folder holding images/ and masks/")
    aug = _get(segment_cfg, "augmentation", where)
    flip, rotate, color = aug.random_flip, aug.random_rotate, aug.random_color
    scale = aug.with_scale_random_crop
    settings = AugmentationSettings(
        hflip_probability=float(flip.hflip_probability) if flip.enable else 0.0,
        vflip_probability=float(flip.vflip_probability) if flip.enable else 0.0,
        rotate_probability=float(rotate.rotate_probability) if rotate.enable else 0.0,
        angle_list=tuple(float(a) for a in rotate.angle_list),
        color_probability=float(color.color_probability) if color.enable else 0.0,
        brightness=float(color.brightness), contrast=float(color.contrast),
        saturation=float(color.saturation), hue=float(color.hue),
        scale_range=tuple(float(s) for s in scale.scale_range) if scale.enable else None,  # type: ignore[arg-type]
        random_crop=bool(aug.with_random_crop),
        random_blur=bool(aug.with_random_blur),
    )
    return cls(
        root_dir=root_dir,
        num_classes=int(_get(segment_cfg, "num_classes", where)),
        img_size=int(_get(segment_cfg, "img_size", where)),
        palette=list(_get(segment_cfg, "palette", where)),
        label_transform=_get(segment_cfg, "label_transform", where),
        batch_size=int(train_batch_size or _get(segment_cfg, "batch_size", where)),
        eval_batch_size=eval_batch_size,
        workers=int(_get(segment_cfg, "workers", where)),
        shuffle=bool(_get(segment_cfg, "shuffle", where)),
        train_split=_get(segment_cfg, "train_split", where),
        validation_split=_get(segment_cfg, "validation_split", where),
        test_split=_get(segment_cfg, "test_split", where),
        predict_split=_get(segment_cfg, "predict_split", where),
        augmentation=settings,
        mean=tuple(aug.mean), std=tuple(aug.std),
        seed=int(seed),
        check_data=check_data,
        full_resolution_masks=full_resolution_masks,
        score_size=int(getattr(segment_cfg, "score_size", 0) or 0),
        shard_train=shard_train,
    )


SPLIT_KEYS = ("train_split", "validation_split", "test_split")


def check_splits(segment_cfg: Any, *, progress: bool | None = None, keys: Sequence[str] = SPLIT_KEYS) -> dict[str, int]:
    """Before anything trains: every problem of the splits a training reads (``train_split``,
    ``validation_split``, and ``test_split`` where it differs, since AutoML evaluates the winner on
    it), raised together as one :class:`DataError`; `keys` narrows them to one action's (a training's
    two, evaluate's test split). The palette is checked against ``num_classes`` first. Nothing
    decoded is kept (for a process that does not train, such as the AutoML driver). Returns each
    split's number of image/mask pairs."""
    where = "dataset.segment"
    root_dir = _get(segment_cfg, "root_dir", where)
    if root_dir in (None, "", "???"):
        raise DataError(f"{where}.root_dir is not set; point it at the folder holding images/ and masks/")
    if not Path(root_dir).is_dir():
        raise DataError(f"{where}.root_dir {root_dir} is not a folder; point it at the folder holding images/ and masks/")
    decoder = MaskDecoder(list(_get(segment_cfg, "palette", where)), _get(segment_cfg, "label_transform", where),
                          int(_get(segment_cfg, "num_classes", where)))
    problems: list[str] = []
    counts: dict[str, int] = {}
    for key in keys:
        split = _get(segment_cfg, key, where)
        if split in counts:
            continue
        counts[split] = 0
        images_only = key == "predict_split"  # inference reads images alone
        try:
            report = check_dataset(root_dir, split, None if images_only else decoder, require_masks=not images_only,
                                   progress=progress, raise_on_error=False, cache=None)
        except DataError as exc:  # no images at all
            problems.append(f"{where}.{key} {split!r}: {exc}")
            continue
        counts[split] = report.num_samples
        problems.extend(f"{where}.{key} {split!r}: {problem}" for problem in report.problems)
    if problems:
        shown = "\n  - ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise DataError(f"the dataset under {root_dir} has {len(problems)} problem(s):\n  - {shown}{more}")
    return counts


def split_counts(counts: dict[str, int], what: str = "image/mask pairs") -> str:
    """``40/10/10 train/val/test image/mask pairs``: what :func:`check_splits` read."""
    return f"{'/'.join(str(n) for n in counts.values())} {'/'.join(counts)} {what}"


def calibration_files(images_dir: str | Path, batch_size: int, max_batches: int | None = None) -> list[Path]:
    """The images calibration reads from ``images_dir``, in its order (:func:`iter_calibration_batches`);
    one DataError where the folder is missing or holds no image."""
    folder = Path(images_dir)
    if batch_size < 1:
        raise ValueError(f"calibration batch_size must be >= 1, got {batch_size}")
    if not folder.is_dir():  # a folder of images, not a dataset's layout: list_files' advice is the dataset's
        raise DataError(f"calibration folder {folder} does not exist")
    files = [path for _, path in sorted(list_files(folder, IMAGE_EXTENSIONS, folder).items())]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in calibration folder {folder}")
    if max_batches and max_batches > 0:
        files = files[: batch_size * max_batches]
    return files


def check_calibration_images(images_dir: str | Path, batch_size: int, max_batches: int | None = None) -> None:
    """Decode the images :func:`iter_calibration_batches` would read (with no ``max_batches``, the
    whole folder: its first batch only), so that a missing folder or a corrupt image is one DataError
    before the work that precedes calibration (an ONNX export)."""
    files = calibration_files(images_dir, batch_size, max_batches)
    for path in files if max_batches and max_batches > 0 else files[:batch_size]:
        with open_image(path, "calibration image"):
            pass


def iter_calibration_batches(images_dir: str | Path, img_size: int, mean: Sequence[float], std: Sequence[float],
                             batch_size: int, max_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Normalized (N, 3, S, S) batches from a folder of images (sorted by name), for PTQ / TensorRT.

    Uses :func:`preprocess_image`, so calibration sees exactly the inference inputs. The last batch
    may be smaller. ``max_batches`` None or <= 0 means all images.
    """
    files = calibration_files(images_dir, batch_size, max_batches)
    for start in range(0, len(files), batch_size):
        tensors = []
        for path in files[start:start + batch_size]:
            with open_image(path, "calibration image") as image:  # a corrupt or huge file: one message naming it
                tensors.append(preprocess_image(image, img_size, mean, std))
        yield torch.stack(tensors)
