"""Joint image/mask transforms and the single image pre-processing used by every runtime.

Resize policy: images (bilinear, antialiased) and masks (nearest) are resized to a square
``img_size x img_size`` as TAO does; the aspect ratio is not kept. The original (H, W) travels
with each sample as ``orig_size`` so predictions can be resized back.

Augmentations follow TAO's ``dataset.segment.augmentation`` fields, applied in this order after the
resize (bilinear for the image, nearest for the mask, fill 255 = ignore for mask pixels that come
from outside the image):

1. random_flip: horizontal with ``hflip_probability``, then vertical with ``vflip_probability``.
2. random_rotate: with ``rotate_probability`` one angle from ``angle_list`` (counter-clockwise,
   uniform choice). Multiples of 90 degrees are exact pixel permutations; other angles rotate
   about the centre (bilinear image with black fill, nearest mask with 255 fill).
3. with_random_crop: a random square-aspect crop covering 80-100 % of the area, resized back.
4. with_scale_random_crop: rescale by a factor drawn from ``scale_range``, then crop a random
   ``img_size`` window (or pad with black / 255 when the factor is below 1).
5. with_random_blur: Gaussian blur with sigma drawn from U(0, 1) (below 0.1: no blur).
6. random_color: with ``color_probability``, torchvision ``ColorJitter`` semantics: brightness,
   contrast and saturation factors from U(max(0, 1 - v), 1 + v), hue shift from U(-hue, hue),
   applied in a random order.
7. Normalisation ``(x / 255 - mean) / std`` (mean/std in 0..1 units, TAO default 0.5/0.5).

Every random draw comes from a ``torch.Generator`` seeded from (seed, epoch, sample index), never
from global state, so batches are reproducible for a seed with any number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# torchvision is imported where an augmentation uses it: the AutoML driver checks the data through
# this module and never augments, and importing torchvision takes some 1.8 s (it loads torch._dynamo).
from segformer.data.files import to_rgb_array
from segformer.data.palette import IGNORE_INDEX
from segformer.errors import SpecError


@dataclass(frozen=True)
class AugmentationSettings:
    """Training augmentations with explicit values; a disabled TAO block is probability 0 / None."""

    hflip_probability: float = 0.0
    vflip_probability: float = 0.0
    rotate_probability: float = 0.0
    angle_list: tuple[float, ...] = (90.0, 180.0, 270.0)
    color_probability: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    scale_range: tuple[float, float] | None = None  # None: with_scale_random_crop disabled
    random_crop: bool = False
    random_blur: bool = False

    def __post_init__(self) -> None:
        prefix = "dataset.segment.augmentation"
        for name in ("hflip_probability", "vflip_probability", "rotate_probability", "color_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SpecError(f"{prefix} {name} must be in [0, 1], got {value}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise SpecError(f"{prefix}.random_color.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise SpecError(f"{prefix}.random_color.hue must be in [0, 0.5] (ColorJitter), got {self.hue}")
        if self.rotate_probability > 0 and not self.angle_list:
            raise SpecError(f"{prefix}.random_rotate.angle_list is empty; list angles in degrees, e.g. [90, 180, 270]")
        if self.scale_range is not None:
            if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
                raise SpecError(
                    f"{prefix}.with_scale_random_crop.scale_range must be [low, high] with 0 < low <= high, "
                    f"got {list(self.scale_range)}"
                )


def size_pair(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, (int, np.integer)):
        size = (int(img_size), int(img_size))
    else:
        size = tuple(int(s) for s in img_size)  # type: ignore[assignment]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"img_size must be a positive int or (height, width), got {img_size!r}")
    return size  # type: ignore[return-value]


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"augmentation mean and std need 3 values (RGB), got mean={list(mean)} std={list(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"augmentation std values must be > 0, got {list(std)}")
    if any(abs(m) > 1.5 for m in mean):
        raise ValueError(
            f"augmentation mean {list(mean)} looks like 0..255 units; mean and std are in 0..1 units "
            "(TAO default 0.5), e.g. ImageNet mean [0.485, 0.456, 0.406]"
        )
    return (torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(3, 1, 1))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float (3, H, W) -> (3, *size), bilinear with antialiasing (shared by every runtime)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Int64 ids (H, W) -> (*size) with nearest-neighbour sampling at pixel centres."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    resized = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].round().to(torch.int64)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> float (3, H, W) in 0..1."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def preprocess_image(pil_image, img_size: int | Sequence[int], mean: Sequence[float],
                     std: Sequence[float]) -> torch.Tensor:
    """PIL image (any mode) -> normalized float (3, H, W): the evaluation/inference input.

    The same code path as validation batches, so PyTorch, ONNX Runtime and TensorRT see
    identical inputs.
    """
    mean_t, std_t = _check_stats(mean, std)
    image = resize_image(image_to_tensor(to_rgb_array(pil_image)), size_pair(img_size))
    return (image - mean_t) / std_t


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch, index)."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)]).generate_state(1, np.uint64)[0]
    generator = torch.Generator()
    generator.manual_seed(int(state))
    return generator


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (), generator=generator).item())


class SegTransform:
    """Joint transform: (H,W,3) uint8 image + (H,W) int64 ids -> normalized (3,S,S) + (S,S) int64.

    Args:
        img_size: square side (or (height, width)) of the network input.
        mean, std: normalisation in 0..1 units.
        augment: training augmentations; None for evaluation (resize + normalise only).
        resize_masks: False keeps masks at their original size (evaluation at full resolution).
        mask_size: the side (or (height, width)) masks are resized to for evaluation; None: img_size.
    """

    def __init__(self, img_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 augment: AugmentationSettings | None = None, resize_masks: bool = True,
                 mask_size: int | Sequence[int] | None = None) -> None:
        self.size = size_pair(img_size)
        self.mean, self.std = _check_stats(mean, std)
        self.augment = augment
        if augment is not None and mask_size is not None and size_pair(mask_size) != self.size:
            raise ValueError("training masks are augmented with their image: mask_size must be img_size")
        self.resize_masks = resize_masks
        self.mask_size = size_pair(mask_size) if mask_size else self.size

    def __call__(self, image: np.ndarray, mask: np.ndarray | None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        img = resize_image(image_to_tensor(image), self.size)
        ids = None
        if mask is not None:
            mask = np.asarray(mask, dtype=np.int64)
            # a read-only input (the decoded-data cache) is never shared with the output tensor
            ids = torch.from_numpy(mask if mask.flags.writeable else mask.copy())
        if ids is not None and (self.resize_masks or self.augment is not None):
            ids = resize_mask(ids, self.mask_size)
        if self.augment is not None:
            if generator is None:
                raise ValueError("training transforms need a generator (see sample_generator)")
            img, ids = self._augment(img, ids, generator)
        return (img - self.mean) / self.std, ids

    # ------------------------------------------------------------------ augmentations
    def _augment(self, img: torch.Tensor, ids: torch.Tensor | None,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = self.augment
        assert a is not None
        if a.hflip_probability > 0 and _uniform(g, 0, 1) < a.hflip_probability:
            img, ids = img.flip(-1), None if ids is None else ids.flip(-1)
        if a.vflip_probability > 0 and _uniform(g, 0, 1) < a.vflip_probability:
            img, ids = img.flip(-2), None if ids is None else ids.flip(-2)
        if a.rotate_probability > 0 and _uniform(g, 0, 1) < a.rotate_probability:
            angle = float(a.angle_list[_randint(g, len(a.angle_list) - 1)])
            img, ids = self._rotate(img, ids, angle)
        if a.random_crop:
            img, ids = self._random_resized_crop(img, ids, g)
        if a.scale_range is not None:
            img, ids = self._scale_crop(img, ids, g, a.scale_range)
        if a.random_blur:
            sigma = _uniform(g, 0.0, 1.0)
            if sigma >= 0.1:
                from torchvision.transforms.v2 import functional as TF

                kernel = 2 * math.ceil(3 * sigma) + 1
                img = TF.gaussian_blur(img, [kernel, kernel], [sigma, sigma])
        if a.color_probability > 0 and _uniform(g, 0, 1) < a.color_probability:
            img = self._color_jitter(img, g)
        return img.clamp_(0.0, 1.0), ids

    def _rotate(self, img: torch.Tensor, ids: torch.Tensor | None,
                angle: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        if angle % 90 == 0:
            k = int(angle // 90) % 4
            img = torch.rot90(img, k, dims=(-2, -1))
            ids = None if ids is None else torch.rot90(ids, k, dims=(-2, -1))
            if tuple(img.shape[-2:]) != self.size:  # non-square img_size: back to the input size
                img = resize_image(img, self.size)
                ids = None if ids is None else resize_mask(ids, self.size)
            return img, ids
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        img = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0, 0.0, 0.0])
        if ids is not None:
            rotated = TF.rotate(ids[None].float(), angle, interpolation=InterpolationMode.NEAREST,
                                fill=[float(IGNORE_INDEX)])
            ids = rotated[0].round().to(torch.int64)
        return img, ids

    def _random_resized_crop(self, img: torch.Tensor, ids: torch.Tensor | None,
                             g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        height, width = img.shape[-2:]
        side = math.sqrt(_uniform(g, 0.8, 1.0))
        h, w = max(1, round(height * side)), max(1, round(width * side))
        top, left = _randint(g, height - h), _randint(g, width - w)
        img = resize_image(img[:, top:top + h, left:left + w], self.size)
        ids = None if ids is None else resize_mask(ids[top:top + h, left:left + w], self.size)
        return img, ids

    def _scale_crop(self, img: torch.Tensor, ids: torch.Tensor | None, g: torch.Generator,
                    scale_range: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor | None]:
        height, width = self.size
        factor = _uniform(g, scale_range[0], scale_range[1])
        scaled = (max(1, round(height * factor)), max(1, round(width * factor)))
        img = resize_image(img, scaled)
        ids = None if ids is None else resize_mask(ids, scaled)
        pad_h, pad_w = max(0, height - scaled[0]), max(0, width - scaled[1])
        if pad_h or pad_w:
            top, left = _randint(g, pad_h), _randint(g, pad_w)
            padding = (left, pad_w - left, top, pad_h - top)
            img = F.pad(img, padding, value=0.0)
            ids = None if ids is None else F.pad(ids, padding, value=IGNORE_INDEX)
        top = _randint(g, img.shape[-2] - height)
        left = _randint(g, img.shape[-1] - width)
        img = img[:, top:top + height, left:left + width]
        ids = None if ids is None else ids[top:top + height, left:left + width]
        return img.contiguous(), None if ids is None else ids.contiguous()

    def _color_jitter(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        a = self.augment
        assert a is not None
        for op in torch.randperm(4, generator=g).tolist():
            if op == 0 and a.brightness > 0:
                img = TF.adjust_brightness(img, _uniform(g, max(0.0, 1 - a.brightness), 1 + a.brightness))
            elif op == 1 and a.contrast > 0:
                img = TF.adjust_contrast(img, _uniform(g, max(0.0, 1 - a.contrast), 1 + a.contrast))
            elif op == 2 and a.saturation > 0:
                img = TF.adjust_saturation(img, _uniform(g, max(0.0, 1 - a.saturation), 1 + a.saturation))
            elif op == 3 and a.hue > 0:
                img = TF.adjust_hue(img, _uniform(g, -a.hue, a.hue))
        return img
