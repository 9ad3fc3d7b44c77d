"""Dataset layout on disk: finding, pairing and reading image and mask files.

TAO layout (``SFDataset``)::

    <root_dir>/images/<split>/<stem>.{jpg,jpeg,png,bmp,tif,tiff}
    <root_dir>/masks/<split>/<stem>.png (or a lossless .tif, .tiff, .bmp; never JPEG)

Images and masks pair by file stem (never by sorted position). Files and folders that are
symbolic links must stay inside ``root_dir``. Image policy: grayscale, palette, CMYK and RGBA
images are converted to RGB (alpha is dropped, not blended); deeper grey images are scaled to 8 bits;
EXIF orientation is NOT applied, so an image stays pixel-aligned with its mask.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segformer.errors import DataError, DataWarning

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")  # lossless: class ids survive
LOSSY_MASK_EXTENSIONS = (".jpg", ".jpeg", ".webp")  # never masks: compression changes class ids
_LISTED = 5


@dataclass(frozen=True)
class Sample:
    """One image and its mask (``mask`` is None for prediction splits)."""

    name: str
    image: Path
    mask: Path | None


def listed(paths: list[str]) -> str:
    shown = ", ".join(paths[:_LISTED])
    return shown + (f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else "")


def check_inside(path: Path, root: Path) -> None:
    """Refuse files or folders that resolve (through symlinks) to somewhere outside ``root``."""
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise DataError(
            f"{path} is a symbolic link to {resolved}, outside the dataset root {base}; links must stay "
            "inside root_dir: copy the file into the dataset or point root_dir at the real location"
        )


def missing_folder_message(directory: str | Path) -> str:
    """What a dataset folder that does not exist is told as (a local path or a URL, `segformer.remote`)."""
    return (f"folder {directory} does not exist; the dataset must use the layout <root_dir>/images/<split>/ "
            "and <root_dir>/masks/<split>/ (check dataset.segment.root_dir and the *_split names)")


def list_files(directory: Path, extensions: tuple[str, ...], root: Path, prefer: str | None = None,
               passed_over: list[Path] | None = None) -> dict[str, Path]:
    """stem -> path for the files in ``directory`` with one of ``extensions`` (case-insensitive). Two files
    of one stem are an error, unless one of them has the suffix ``prefer``: that one is taken. The
    entries it passes over (other types, folders, links to nothing; not hidden names such as
    .DS_Store) are appended to ``passed_over`` where given (`unread_entries` tells them)."""
    if not directory.is_dir():
        raise DataError(missing_folder_message(directory))
    check_inside(directory, root)
    found: dict[str, Path] = {}
    skipped = passed_over if passed_over is not None else []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in extensions:
            skipped.append(path)
            continue
        check_inside(path, root)
        if not path.is_file():
            skipped.append(path)
            continue
        pair = {path.suffix.lower(), found[path.stem].suffix.lower()} if path.stem in found else set()
        if prefer and len(pair) == 2 and prefer in pair:
            if path.suffix.lower() == prefer:
                found[path.stem] = path
            continue
        if path.stem in found:
            raise DataError(
                f"two files in {directory} share the stem {path.stem!r} ({found[path.stem].name}, {path.name}); "
                "images pair with masks by stem, so rename or remove one of them"
            )
        found[path.stem] = path
    return found


def unread_entries(directory: Path, extensions: tuple[str, ...], passed_over: list[Path]) -> str | None:
    """The entries `list_files` passed over in ``directory`` (files of other types, folders, links to
    nothing), as a sentence; None when there are none."""
    kinds: dict[str, list[str]] = {}
    for path in passed_over:
        if path.is_dir():
            kinds.setdefault("folders (a split is not read into its subfolders)", []).append(path.name + "/")
        elif not path.exists():
            kinds.setdefault("links to nothing", []).append(path.name)
        elif path.suffix.lower() not in extensions:
            kinds.setdefault(f"other file types (only {', '.join(extensions)} are read)", []).append(path.name)
    if not kinds:
        return None
    total = sum(len(names) for names in kinds.values())
    return (f"{total} entr{'y' if total == 1 else 'ies'} of {directory} not read: "
            + "; ".join(f"{listed(names)}: {kind}" for kind, names in kinds.items()))


def pair_samples(root_dir: str | Path, split: str, require_masks: bool = True,
                 strict: bool = True) -> tuple[list[Sample], str | None]:
    """Pair ``images/<split>`` with ``masks/<split>`` by stem.

    Returns the samples and a message describing unmatched files (None when all pair). With
    ``strict`` an unmatched file raises :class:`DataError` instead.
    """
    root = Path(root_dir)
    image_dir = root / "images" / split
    passed_over: list[Path] = []
    images = list_files(image_dir, IMAGE_EXTENSIONS, root, passed_over=passed_over)
    unread = unread_entries(image_dir, IMAGE_EXTENSIONS, passed_over)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}" + (f"; {unread}" if unread else ""))
    if unread:  # an image passed over in silence is a sample lost in silence
        warnings.warn(f"split {split!r}: {unread}", DataWarning, stacklevel=2)
    if not require_masks:
        return [Sample(stem, path, None) for stem, path in sorted(images.items())], None
    mask_dir = root / "masks" / split
    # a.png beside the a.tif it was converted from (as folders of GIS labels hold): the PNG is the mask
    masks = list_files(mask_dir, MASK_EXTENSIONS, root, prefer=".png")
    samples = [Sample(stem, images[stem], masks[stem]) for stem in sorted(images) if stem in masks]
    no_mask = [images[s].name for s in sorted(images) if s not in masks]
    no_image = [masks[s].name for s in sorted(masks) if s not in images]
    problem = None
    if no_mask or no_image:
        parts = []
        lossy = sorted(p.name for p in mask_dir.glob("*") if p.suffix.lower() in LOSSY_MASK_EXTENSIONS
                       and p.stem in {Path(n).stem for n in no_mask}) if mask_dir.is_dir() else []
        if lossy:
            raise DataError(
                f"split {split!r}: {len(lossy)} mask(s) in {mask_dir} are JPEG or WebP, not read as masks: {listed(lossy)}. "
                f"Their compression (lossy in JPEG, mostly in WebP) changes pixel values near class borders, so they would "
                f"not match the palette; save "
                f"masks in a lossless format ({', '.join(MASK_EXTENSIONS)}), from the original label data, not by converting the JPEGs"
            )
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask in {mask_dir}: {listed(no_mask)}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image in {image_dir}: {listed(no_image)}"
                         + (f" ({unread})" if unread else ""))
        problem = ("split " + repr(split) + ": " + "; ".join(parts)
                   + ". Images and masks pair by file stem (a.jpg <-> a.png); add or rename the missing files"
                   + _suffix_hint([s for s in images if s not in masks], [s for s in masks if s not in images]))
        if strict:
            raise DataError(problem)
    return samples, problem


def _suffix_hint(image_stems: list[str], mask_stems: list[str]) -> str:
    """Masks named after their image plus a common ending (a_mask.png for a.jpg), as many tools write them."""
    images = set(image_stems)
    endings = {next((m[len(i):] for i in sorted(images, key=len, reverse=True) if m.startswith(i) and len(m) > len(i)), None)
               for m in mask_stems}
    if len(endings) != 1 or None in endings or len(mask_stems) < len(image_stems):
        return ""
    (ending,) = endings
    return f" (the masks are named <image stem>{ending}: rename them to the image's stem, e.g. with the ending {ending!r} removed)"


def exif_orientation(path: Path) -> int | None:
    """The EXIF orientation tag of an image file (1 stored as shown, 2-8 mirrored or turned); None
    without one or when the file cannot be read (its reader reports that)."""
    try:
        with Image.open(path) as image:
            return image.getexif().get(0x0112)
    except (OSError, ValueError):
        return None


def open_image(path: Path, what: str) -> Image.Image:
    """``path`` opened and decoded (its one page, `_one_page`); what cannot be read is one DataError naming
    it as ``what`` ("image", "mask", "calibration image")."""
    try:
        image = Image.open(path)
        _one_page(image, path, what)
        image.load()
    except Image.DecompressionBombError as exc:
        # PIL refuses images above 2x Image.MAX_IMAGE_PIXELS before decoding (a "decompression bomb").
        raise DataError(
            f"{what} {path} is too large to read: {exc} Images this large are refused so a crafted file cannot "
            f"exhaust memory; resize or tile it (below {Image.MAX_IMAGE_PIXELS} pixels), or remove it"
        ) from exc
    except PermissionError as exc:
        raise DataError(f"cannot read {what} {path}: permission denied; make the file readable "
                        "(chmod a+r) or remove it") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # EOFError: a page cut short (seek)
        raise DataError(f"cannot read {what} {path}: {exc}; the file is corrupt or not an image, "
                        "replace or remove it") from exc
    return image


def _one_page(image: Image.Image, path: Path, what: str) -> None:
    """A multi-page TIFF (or an animated GIF/PNG) read as its first page gave a wrong image or mask
    in silence (a mask whose labels are on page 2 read as background). Pages of another size are
    kept (a TIFF's overviews and thumbnails); another page of the first's size is refused. A JPEG's
    further frames (MPO: a phone's preview, depth or HDR gain map) are never the picture: not checked."""
    if image.format not in ("TIFF", "GIF", "PNG"):
        return
    try:
        pages = int(getattr(image, "n_frames", 1) or 1)
        if pages < 2:
            return
        first, same = image.size, 0
        for page in range(1, pages):
            image.seek(page)
            # a TIFF's reduced-resolution pages and masks (NewSubfileType bits 1 and 4: GDAL's overviews
            # and nodata masks) belong to the first page
            subfile = int(image.tag_v2.get(254, 0)) if image.format == "TIFF" else 0
            same += image.size == first and not subfile & 0b101
        image.seek(0)
    except Exception as exc:  # noqa: BLE001 - a later page cut short or malformed: PIL raises many kinds
        raise DataError(f"cannot read {what} {path}: a page after the first is unreadable ({type(exc).__name__}: "
                        f"{exc}); the file is corrupt, replace or remove it") from exc
    if same:
        raise DataError(f"{what} {path} holds {pages} pages (frames), {same + 1} of them {first[0]}x{first[1]}; one file "
                        f"is one {what} here, and only its first page would be read: save the page that is the {what} "
                        "on its own, one file per page")


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (see the module docstring for the conversion policy)."""
    return to_rgb_array(open_image(Path(path), "image"))


DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def scale_depth(image: Image.Image) -> str | None:
    """What a deep grey image is scaled from by :func:`to_rgb_array` ("12-bit", "0..1"); None for
    8-bit images. :func:`segformer.data.check_dataset` compares it across a split."""
    return _deep_scale(np.nan_to_num(np.asarray(image, dtype=np.float32)), image.mode)[1] if image.mode in DEEP_MODES else None


def _deep_scale(array: np.ndarray, mode: str) -> tuple[float, str]:
    top = float(array.max()) if array.size else 0.0
    if mode == "F" and top <= 1.0:
        return 255.0, "0..1"
    bits = next((b for b in (8, 10, 12, 14, 16) if top < 2**b), math.ceil(math.log2(top + 1)))
    return 255.0 / (2**bits - 1), f"{bits}-bit"


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 RGB (gray/palette/CMYK/RGBA converted, deeper grey scaled).

    A 16-bit, 32-bit or float grey image is scaled from the bit depth its values fit in (8, 10, 12,
    14 or 16 bits: cameras write 12-bit data into 16-bit files, which read as 0..65535 spanned 0..14
    of 0..255), and floats within 0..1 from 0..1. Each image on its own: a split whose images are
    scaled from different depths is named by ``check_dataset``.
    """
    if image.mode in DEEP_MODES:
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        scale, _ = _deep_scale(array, image.mode)
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def load_mask(path: str | Path, as_color: bool) -> np.ndarray:
    """Read a mask as (H, W) integers or (H, W, 3) uint8.

    Indexed (``P``) PNGs give their colours when ``as_color`` (a colour palette), else their
    indices (class ids); `segformer.data.dataset.load_pair` falls back to the indices when the
    colours are not the palette's. 16-bit masks are read as integer gray levels / class ids.
    """
    image = open_image(Path(path), "mask")
    mode = image.mode
    if mode == "P":
        return np.asarray(image.convert("RGB")) if as_color else np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode in ("LA", "RGBA"):
        return np.asarray(image)[..., :-1].squeeze(-1) if mode == "LA" else np.asarray(image)[..., :3]
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.int64)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(f"mask {path} holds values outside 0..65535; save masks as 8-bit PNGs")
        return array.astype(np.uint16)
    raise DataError(
        f"mask {path} has image mode {mode!r}; masks must be PNG, TIFF or BMP with class ids / gray levels (L, P, 16-bit) "
        "or colours (RGB)"
    )
