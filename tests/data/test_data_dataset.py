"""SFDataset layout: pairing by stem, unmatched files, unreadable files, sizes, symlinks, check_dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segformer.data.dataset import SegmentationDataset, check_dataset
from segformer.data.files import load_image, pair_samples
from segformer.data.palette import MaskDecoder
from segformer.data.transforms import SegTransform
from segformer.errors import DataError

from datahelpers import COLOR_PALETTE, color_mask, write_image

DECODER = MaskDecoder(COLOR_PALETTE, None, num_classes=2)


def eval_dataset(root: Path, split: str = "train", require_masks: bool = True) -> SegmentationDataset:
    return SegmentationDataset(root, split, DECODER if require_masks else None,
                               SegTransform(16, (0.5,) * 3, (0.5,) * 3), require_masks=require_masks)


def test_pairs_by_stem_not_sorted_order(tmp_path):
    # image names sort differently from mask names once extensions differ: b.bmp, a.png vs a.png, b.png
    ids_a, ids_b = np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)
    write_image(tmp_path / "images/train/b.bmp", np.full((8, 8, 3), 200, np.uint8))
    write_image(tmp_path / "images/train/a.tif", np.full((8, 8, 3), 10, np.uint8))
    write_image(tmp_path / "masks/train/a.png", color_mask(ids_a))
    write_image(tmp_path / "masks/train/b.png", color_mask(ids_b))
    samples, problem = pair_samples(tmp_path, "train")
    assert problem is None
    assert [(s.name, s.image.name, s.mask.name) for s in samples] == [("a", "a.tif", "a.png"), ("b", "b.bmp", "b.png")]
    ds = eval_dataset(tmp_path)
    for item in (ds[0], ds[1]):
        expected = 0 if item["name"] == "a" else 1
        assert (item["mask"] == expected).all()


def test_unmatched_files_are_listed_both_ways(tmp_path):
    for i in range(8):
        write_image(tmp_path / f"images/train/img{i}.jpg", np.zeros((8, 8, 3), np.uint8))
    write_image(tmp_path / "masks/train/img0.png", color_mask(np.zeros((8, 8), np.uint8)))
    write_image(tmp_path / "masks/train/orphan.png", color_mask(np.zeros((8, 8), np.uint8)))
    with pytest.raises(DataError) as info:
        pair_samples(tmp_path, "train")
    text = str(info.value)
    assert "7 image(s) without a mask" in text and "img1.jpg, img2.jpg" in text and "and 2 more" in text
    assert "1 mask(s) without an image" in text and "orphan.png" in text


def test_missing_split_folder_explains_layout(tmp_path):
    with pytest.raises(DataError, match=r"images/<split>/"):
        pair_samples(tmp_path, "train")


def test_corrupt_image_names_the_file(color_dataset):
    bad = color_dataset / "images/train/img0.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*img0.png"):
        eval_dataset(color_dataset)[0]


def test_mask_size_mismatch_names_both_sizes(color_dataset):
    write_image(color_dataset / "masks/train/img1.png", color_mask(np.zeros((16, 24), np.uint8)))
    with pytest.raises(DataError, match=r"img1.png is 24x16 \(WxH\) but its image .*img1.png is 32x32"):
        eval_dataset(color_dataset)[1]


def test_check_dataset_reports_every_problem(color_dataset):
    (color_dataset / "images/train/img0.png").write_bytes(b"broken")
    write_image(color_dataset / "masks/train/img1.png", color_mask(np.zeros((16, 16), np.uint8)))
    mask = np.asarray(Image.open(color_dataset / "masks/train/img2.png")).copy()
    mask[3, 4] = (9, 9, 9)
    write_image(color_dataset / "masks/train/img2.png", mask)
    write_image(color_dataset / "masks/train/extra.png", mask)
    with pytest.raises(DataError) as info:
        check_dataset(color_dataset, "train", DECODER, progress=False)
    text = str(info.value)
    assert "4 problem(s)" in text
    assert "extra.png" in text and "cannot read image" in text and "16x16" in text
    assert "rgb (9, 9, 9) at row 3, col 4 (1 pixels)" in text


def test_masks_with_the_same_unknown_value_are_one_problem(color_dataset):
    """A wrong palette colour failed every mask alike, and the check listed each file with the whole
    palette and advice (some 600 characters a file); the files holding the same values are one problem."""
    for i in range(6):
        mask = np.asarray(Image.open(color_dataset / f"masks/train/img{i}.png")).copy()
        mask[1, 2] = (9, 9, 9)
        if i == 5:
            mask[0, 0] = (7, 7, 7)  # other values: its own problem
        write_image(color_dataset / f"masks/train/img{i}.png", mask)
    report = check_dataset(color_dataset, "train", DECODER, progress=False, raise_on_error=False)
    assert len(report.problems) == 2, report.problems
    grouped = next(p for p in report.problems if p.startswith("5 masks"))
    assert "(img0.png, img1.png, img2.png, img3.png, img4.png): mask value(s) not in dataset.segment.palette: rgb (9, 9, 9)" in grouped
    assert "img0.png: rgb (9, 9, 9) at row 1, col 2 (1 pixels)" in grouped and grouped.count("Palette values") == 1
    single = next(p for p in report.problems if not p.startswith("5 masks"))
    assert "img5.png" in single and "rgb (7, 7, 7)" in single and "rgb (9, 9, 9)" in single


def test_indexed_masks_in_other_colours_are_read_by_their_indices(color_dataset):
    """PASCAL VOC-style masks: indexed-colour PNGs whose index is the class id, drawn in colours of their
    own. TAO's loader reads their indices; they were refused as colours the palette lacks."""
    voc = [0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192]  # VOC's colours for 0, 1 and 255
    for path in (color_dataset / "masks/train").iterdir():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        ids = np.select([(rgb == c).all(-1) for c in ((0, 0, 255), (0, 255, 0))], [0, 1], 255).astype(np.uint8)
        indexed = Image.fromarray(ids, mode="L").convert("P")
        indexed.putpalette(voc)
        indexed.save(path)
        assert Image.open(path).mode == "P"
    report = check_dataset(color_dataset, "train", DECODER, progress=False, raise_on_error=False)
    assert report.problems == [] and report.class_pixels.sum() > 0
    item = eval_dataset(color_dataset)[0]
    image = item["image"].numpy()  # class c -> value 60 + 120 * c: the mask must say the same
    assert ((image[0] > 0) == (item["mask"].numpy() == 1)).mean() > 0.95
    # indices that are no label_id either: the colours' message, naming the palette
    indexed = Image.fromarray(np.full((32, 32), 7, np.uint8), mode="L").convert("P")
    indexed.putpalette(voc)
    indexed.save(color_dataset / "masks/train/img0.png")
    report = check_dataset(color_dataset, "train", DECODER, progress=False, raise_on_error=False)
    assert len(report.problems) == 1 and "img0.png" in report.problems[0] and "Palette values" in report.problems[0]


def test_check_dataset_counts_pixels(color_dataset):
    report = check_dataset(color_dataset, "val", DECODER, progress=True)
    assert report.num_samples == 2 and report.problems == []
    assert report.class_pixels.sum() + report.ignored_pixels == 2 * 32 * 32


def test_a_class_without_pixels_in_a_split_is_named(color_dataset):
    """A class absent from the validation split scores IoU 0 wherever the model predicts it, and one
    absent from training is never learnt; nothing said so."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        check_dataset(color_dataset, "val", DECODER, progress=False)
    assert not seen
    for mask in (color_dataset / "masks" / "val").iterdir():
        Image.fromarray(np.zeros((32, 32, 3), np.uint8) + np.array([0, 0, 255], np.uint8)).save(mask)  # all sky
    with pytest.warns(UserWarning, match=r"split 'val' under .* has no pixel of class 'grass' \(training id 1\): a class "
                                         r"missing from training is never learnt"):
        report = check_dataset(color_dataset, "val", DECODER, progress=False)
    assert report.class_pixels[1] == 0 and not report.problems


def test_predict_split_needs_no_masks_and_converts_gray_and_rgba(tmp_path):
    write_image(tmp_path / "images/test/gray.png", np.full((8, 8), 128, np.uint8))
    write_image(tmp_path / "images/test/rgba.png", np.full((8, 8, 4), 50, np.uint8))
    ds = eval_dataset(tmp_path, "test", require_masks=False)
    items = [ds[0], ds[1]]
    assert all("mask" not in item and item["image"].shape == (3, 16, 16) for item in items)
    assert load_image(tmp_path / "images/test/rgba.png").shape == (8, 8, 3)
    assert items[0]["orig_size"].tolist() == [8, 8]


def test_16_bit_image_is_scaled_to_8_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(path)
    assert load_image(path).max() == 255


@pytest.mark.parametrize("values, expected", [
    (np.array([[0, 3712]], np.uint16), [0, 231]),  # 12-bit camera data in a 16-bit file: read as 0..4095
    (np.array([[0, 1000]], np.uint16), [0, 249]),  # 10-bit
    (np.array([[0, 200]], np.uint16), [0, 200]),  # 8-bit values in a 16-bit file
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # floats in 0..1
    (np.array([[0.0, 100.0]], np.float32), [0, 100]),  # floats in 0..255
])
def test_deep_grey_images_are_scaled_from_the_depth_their_values_fit(tmp_path, values, expected):
    """12-bit data in 16-bit files was scaled from 0..65535 and spanned 0..14 of 0..255, and float
    images in 0..1 became 0/1: the model trained on near-black images without a word."""
    path = tmp_path / ("deep.tif" if values.dtype == np.float32 else "deep.png")
    Image.fromarray(values).save(path)
    assert load_image(path)[0, :, 0].tolist() == expected


def test_masks_named_with_an_ending_get_a_rename_hint(color_dataset):
    for mask in (color_dataset / "masks" / "val").iterdir():
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    with pytest.raises(DataError, match=r"pair by file stem .* \(the masks are named <image stem>_mask: rename them"):
        pair_samples(color_dataset, "val")


def test_deep_images_scaled_from_different_depths_and_turned_photos_are_named(color_dataset):
    """Each deep grey image is scaled from the depth its own values fit in, so a dark frame of a 12-bit
    set reads brighter than the others: the check says so. A photo with an EXIF turn is read as
    stored (as TAO reads it): the check names it too."""
    images = sorted((color_dataset / "images" / "val").iterdir())
    for image in images:
        image.unlink()
    Image.fromarray(np.full((32, 32), 3000, np.uint16)).save(images[0].with_suffix(".png"))  # 12-bit
    Image.fromarray(np.full((32, 32), 900, np.uint16)).save(images[1].with_suffix(".tif"))  # 10-bit
    with pytest.warns(UserWarning, match=r"deep grey images are scaled to 8 bits from different depths \(10-bit: 1 "):
        check_dataset(color_dataset, "val", DECODER, progress=False)
    train = sorted((color_dataset / "images" / "train").iterdir())[0]
    photo = Image.new("RGB", (32, 32))
    exif = photo.getexif()
    exif[0x0112] = 8
    train.unlink()
    photo.save(train.with_suffix(".jpg"), exif=exif)
    with pytest.warns(UserWarning, match=rf"1 image\(s\) carry an EXIF orientation \({train.stem}.jpg\): their pixels are "
                                         r"read as stored"):
        check_dataset(color_dataset, "train", DECODER, progress=False)


def test_colour_images_of_16_bits_per_channel_are_named(color_dataset):
    """A 48-bit PNG of 12-bit data read almost black (4095 -> 15), in silence: PIL keeps the top 8 bits."""
    import struct
    import zlib

    image = sorted((color_dataset / "images" / "test").iterdir())[0]
    pixels = np.zeros((32, 32, 3), ">u2")
    pixels[..., 0] = 4095

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + row.tobytes() for row in pixels)
    image.unlink()
    image.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 16, 2, 0, 0, 0))
                                          + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert load_image(image.with_suffix(".png"))[0, 0].tolist() == [15, 0, 0]
    with pytest.warns(UserWarning, match=rf"1 colour image\(s\) of 16 bits per channel \({image.stem}.png\) are read as "
                                         r"their top 8 bits"):
        check_dataset(color_dataset, "test", DECODER, progress=False)


def test_a_png_mask_beside_the_tiff_it_came_from_is_the_mask(color_dataset):
    mask = sorted((color_dataset / "masks" / "val").iterdir())[0]
    Image.open(mask).save(mask.with_suffix(".tif"))
    samples, problem = pair_samples(color_dataset, "val")
    assert problem is None and all(s.mask.suffix == ".png" for s in samples)


def test_the_rename_hint_takes_the_longest_image_stem(tmp_path):
    for stem in ("img1", "img10", "img2"):
        write_image(tmp_path / "images" / "val" / f"{stem}.png", np.zeros((4, 4, 3), np.uint8))
        write_image(tmp_path / "masks" / "val" / f"{stem}_mask.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"named <image stem>_mask: rename"):
        pair_samples(tmp_path, "val")


def test_a_mask_drawn_on_an_exif_turned_photo_says_so(color_dataset):
    """A JPEG with EXIF orientation 6 (stored landscape, shown portrait) and a mask drawn on the portrait
    view: the size mismatch says why."""
    image = next((color_dataset / "images" / "val").iterdir())
    mask = color_dataset / "masks" / "val" / f"{image.stem}.png"
    photo = Image.new("RGB", (40, 32))
    exif = photo.getexif()
    exif[0x0112] = 6
    image.unlink()
    photo.save(image.with_suffix(".jpg"), exif=exif)
    Image.new("RGB", (32, 40), (0, 0, 255)).save(mask)
    with pytest.raises(DataError, match=r"is 32x40 \(WxH\) but its image .* is 40x32.*EXIF orientation 6"):
        check_dataset(color_dataset, "val", DECODER, progress=False)


@pytest.mark.parametrize("suffix", [".tif", ".bmp"])
def test_lossless_masks_other_than_png_pair(color_dataset, suffix):
    """TIFF and BMP masks keep their class ids exactly; they were 'images without a mask'."""
    for mask in (color_dataset / "masks" / "val").iterdir():
        Image.open(mask).save(mask.with_suffix(suffix))
        mask.unlink()
    samples, problem = pair_samples(color_dataset, "val")
    assert problem is None and len(samples) == 2 and all(s.mask.suffix == suffix for s in samples)
    assert check_dataset(color_dataset, "val", DECODER, progress=False).class_pixels.sum() > 0


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_symlink_leaving_root_is_refused(color_dataset, tmp_path):
    outside = tmp_path / "outside.png"
    write_image(outside, np.zeros((32, 32, 3), np.uint8))
    (color_dataset / "images/train/img9.png").symlink_to(outside)
    with pytest.raises(DataError, match="outside the dataset root"):
        pair_samples(color_dataset, "train")
    # a link that stays inside root_dir is fine
    (color_dataset / "images/train/img9.png").unlink()
    (color_dataset / "images/train/img9.png").symlink_to(color_dataset / "images/val/img0.png")
    (color_dataset / "masks/train/img9.png").symlink_to(color_dataset / "masks/val/img0.png")
    assert len(pair_samples(color_dataset, "train")[0]) == 7


def test_files_that_are_not_read_are_named(tmp_path):
    """A .webp or .gif image, a link to nothing and a subfolder were passed over in silence: inference
    wrote 18 results for 22 files, and a mask beside train_00000.webp was said to have no image."""
    from segformer.errors import DataWarning

    write_image(tmp_path / "images/test/a.png", np.zeros((8, 8, 3), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/test/b.webp")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images/test/c.gif")
    (tmp_path / "images/test/more").mkdir()
    os.symlink(tmp_path / "images/test/gone.png", tmp_path / "images/test/d.jpg")
    (tmp_path / "images/test/.DS_Store").write_bytes(b"")  # hidden: left out of the count
    with pytest.warns(DataWarning) as said:
        samples, _ = pair_samples(tmp_path, "test", require_masks=False)
    assert [s.name for s in samples] == ["a"]
    text = str(said[0].message)
    assert "4 entries of" in text and "b.webp, c.gif: other file types (only .jpg" in text, text
    assert "more/: folders" in text and "d.jpg: links to nothing" in text and ".DS_Store" not in text
    write_image(tmp_path / "masks/test/b.png", color_mask(np.zeros((8, 8), np.uint8)))
    write_image(tmp_path / "masks/test/a.png", color_mask(np.zeros((8, 8), np.uint8)))
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"1 mask\(s\) without an image .*: b.png \(4 entries"):
        pair_samples(tmp_path, "test")


def test_a_tiff_of_several_pages_is_refused(tmp_path):
    """A 2-page TIFF mask (labels on page 2) was read as its blank first page: background everywhere."""
    from segformer.data.files import load_mask

    blank, labels, small = (Image.fromarray(a) for a in (np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8),
                                                          np.ones((4, 4), np.uint8)))
    blank.save(tmp_path / "stack.tif", save_all=True, append_images=[labels])
    blank.save(tmp_path / "overview.tif", save_all=True, append_images=[small])  # a smaller page: an overview
    with pytest.raises(DataError, match=r"mask .*stack.tif holds 2 pages \(frames\), 2 of them 8x8"):
        load_mask(tmp_path / "stack.tif", as_color=False)
    assert load_mask(tmp_path / "overview.tif", as_color=False).shape == (8, 8)
    assert load_image(tmp_path / "overview.tif").shape == (8, 8, 3)
    # a GeoTIFF's nodata mask is a page of the first's size (NewSubfileType 4): it belongs to the image
    from PIL import TiffImagePlugin

    nodata = Image.fromarray(np.full((8, 8), 255, np.uint8))
    nodata.encoderinfo = {"tiffinfo": TiffImagePlugin.ImageFileDirectory_v2()}
    nodata.encoderinfo["tiffinfo"][254] = 4
    blank.save(tmp_path / "geo.tif", save_all=True, append_images=[nodata])
    assert load_mask(tmp_path / "geo.tif", as_color=False).max() == 0
    # a later page cut short: the corrupt-file message, not PIL's TypeError
    blank.save(tmp_path / "cut.tif", save_all=True, append_images=[small, small])
    (tmp_path / "cut.tif").write_bytes((tmp_path / "cut.tif").read_bytes()[:-150])
    with pytest.raises(DataError, match=r"cut.tif: a page after the first is unreadable .*the file is corrupt"):
        load_mask(tmp_path / "cut.tif", as_color=False)
    # a phone's JPEG with a second frame of its size (MPO: an HDR gain map, a stereo view) is its first frame
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "phone.jpg", format="MPO", save_all=True,
                                                             append_images=[Image.fromarray(np.zeros((8, 8, 3), np.uint8))])
    assert Image.open(tmp_path / "phone.jpg").n_frames == 2 and load_image(tmp_path / "phone.jpg")[0, 0].tolist() == [100] * 3


def test_an_error_in_a_dataloader_worker_reads_as_with_no_workers(tmp_path):
    """With dataset.segment.workers >= 1, a corrupt image ended inference in "Caught DataError in
    DataLoader worker process 0. Original Traceback ...", 30 lines; with workers=0 it was one line."""
    from torch.utils.data import DataLoader

    write_image(tmp_path / "images/test/a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "images/test/a.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as failed:
        next(iter(DataLoader(eval_dataset(tmp_path, "test", require_masks=False), num_workers=1)))
    assert str(failed.value).startswith("cannot read image ") and "Traceback" not in str(failed.value), str(failed.value)


def test_the_data_check_does_not_import_torchvision(tmp_path):
    """The AutoML driver checks every split before Ray starts and never augments: torchvision, which
    only augmentations use, stays out of it (some 1.8 s of imports per `automl run`)."""
    import subprocess
    import sys

    from segformer.data.synth import generate

    data = generate(tmp_path / "data", num_classes=3, size=32, train=4, val=2, test=2)
    code = ("import sys; from segformer.config import load_config; from segformer.data.segdata import check_splits; "
            f"check_splits(load_config({str(data / 'spec.yaml')!r}, ['results_dir={tmp_path}']).dataset.segment, progress=False); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
