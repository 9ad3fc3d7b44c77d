"""Data: TAO image/mask folder datasets, the one mask decoder, joint transforms, datamodule, synth.

Public names are imported lazily (PEP 562) so that ``segformer.data.synth`` and the CLI's
``--help`` do not pay for torch and Lightning.
"""

from __future__ import annotations

from segformer.lazy import lazy_exports

_EXPORTS = {
    "IGNORE_INDEX": "segformer.data.palette",
    "PaletteEntry": "segformer.data.palette",
    "MaskDecoder": "segformer.data.palette",
    "colorize": "segformer.data.palette",
    "overlay": "segformer.data.palette",
    "normalize_label_transform": "segformer.data.palette",
    "IMAGE_EXTENSIONS": "segformer.data.files",
    "Sample": "segformer.data.files",
    "pair_samples": "segformer.data.files",
    "load_image": "segformer.data.files",
    "load_mask": "segformer.data.files",
    "AugmentationSettings": "segformer.data.transforms",
    "SegTransform": "segformer.data.transforms",
    "preprocess_image": "segformer.data.transforms",
    "sample_generator": "segformer.data.transforms",
    "SegmentationDataset": "segformer.data.dataset",
    "EpochSampler": "segformer.data.dataset",
    "DatasetReport": "segformer.data.dataset",
    "check_dataset": "segformer.data.dataset",
    "SegData": "segformer.data.segdata",
    "build_data": "segformer.data.segdata",
    "iter_calibration_batches": "segformer.data.segdata",
    "check_calibration_images": "segformer.data.segdata",
    "SegDataModule": "segformer.data.datamodule",
    "build_datamodule": "segformer.data.datamodule",
    "generate": "segformer.data.synth",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
