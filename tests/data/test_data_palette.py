"""MaskDecoder: palette rules, label_transform, mapping_class merges and error texts; colourisers."""

from __future__ import annotations

import numpy as np
import pytest

from segformer.data.palette import IGNORE_INDEX, MaskDecoder, colorize, overlay
from segformer.errors import DataError

from datahelpers import COLOR_PALETTE, TAO_SEGMENT_DEFAULTS


def entry(seg_class, label_id, rgb, mapping_class=None):
    return {"seg_class": seg_class, "mapping_class": mapping_class or seg_class, "label_id": label_id, "rgb": rgb}


def test_colour_palette_decodes_and_ignores_255():
    decoder = MaskDecoder(COLOR_PALETTE, None, num_classes=2)
    mask = np.array([[[0, 0, 255], [0, 255, 0], [255, 255, 255]]], dtype=np.uint8)
    ids = decoder.decode(mask, "m.png")
    assert ids.dtype == np.int64
    assert ids.tolist() == [[0, 1, IGNORE_INDEX]]
    assert decoder.class_names == ["sky", "grass"]


def test_tao_default_palette_with_norm_reads_binary_0_255_masks():
    decoder = MaskDecoder(TAO_SEGMENT_DEFAULTS["palette"], "norm", num_classes=2)
    assert decoder.is_gray
    ids = decoder.decode(np.array([[0, 255], [255, 0]], dtype=np.uint8), "m.png")
    assert ids.tolist() == [[0, 1], [1, 0]]
    # the same palette as an RGB mask file
    rgb = np.stack([np.array([[0, 255]], dtype=np.uint8)] * 3, axis=-1)
    assert decoder.decode(rgb, "m.png").tolist() == [[0, 1]]


@pytest.mark.parametrize("label_transform", [None, "None", "none"])
def test_label_transform_none_reads_class_ids(label_transform):
    decoder = MaskDecoder(TAO_SEGMENT_DEFAULTS["palette"], label_transform, num_classes=2)
    assert decoder.label_transform is None
    assert decoder.decode(np.array([[0, 1]], dtype=np.uint8), "m.png").tolist() == [[0, 1]]


def test_grayscale_palette_with_one_element_rgb_and_16_bit_masks():
    palette = [entry("a", 0, [10]), entry("b", 1, [20]), entry("edge", 255, [300])]
    decoder = MaskDecoder(palette, None, num_classes=2)
    mask16 = np.array([[10, 20, 300]], dtype=np.uint16)
    assert decoder.decode(mask16, "m16.png").tolist() == [[0, 1, 255]]


def test_mapping_class_merges_to_the_named_entry_id():
    palette = [
        entry("road", 0, [128, 64, 128]),
        entry("car", 1, [0, 0, 142]),
        entry("truck", 2, [0, 0, 70], mapping_class="car"),  # merged into car -> id 1
        entry("unknown", 255, [0, 0, 0]),
    ]
    decoder = MaskDecoder(palette, None, num_classes=2)
    mask = np.array([[[128, 64, 128], [0, 0, 142], [0, 0, 70], [0, 0, 0]]], dtype=np.uint8)
    assert decoder.decode(mask, "m.png").tolist() == [[0, 1, 1, 255]]
    assert decoder.class_names == ["road", "car"]


def test_mapping_class_without_named_entry_uses_smallest_label_id():
    palette = [entry("bg", 0, [0]), entry("cat", 2, [2], mapping_class="animal"),
               entry("dog", 1, [1], mapping_class="animal")]
    decoder = MaskDecoder(palette, None, num_classes=2)
    assert decoder.decode(np.array([[0, 1, 2]], dtype=np.uint8), "m.png").tolist() == [[0, 1, 1]]
    assert decoder.class_names == ["bg", "animal"]


def test_unknown_colour_names_file_value_location_and_count():
    decoder = MaskDecoder(COLOR_PALETTE, None, num_classes=2)
    mask = np.zeros((4, 5, 3), dtype=np.uint8)
    mask[..., 2] = 255  # all sky
    mask[2, 3] = mask[3, 4] = (12, 34, 56)
    with pytest.raises(DataError) as info:
        decoder.decode(mask, "masks/train/a.png")
    text = str(info.value)
    assert "masks/train/a.png" in text
    assert "rgb (12, 34, 56) at row 2, col 3 (2 pixels)" in text
    assert "label_id 255 to ignore" in text


def test_unknown_gray_value_with_norm_hints_at_label_transform():
    decoder = MaskDecoder(TAO_SEGMENT_DEFAULTS["palette"], "norm", num_classes=2)
    with pytest.raises(DataError, match=r"value\(s\) not in dataset.segment.palette.*label_transform: None"):
        decoder.decode(np.array([[0, 1]], dtype=np.uint8), "ids.png")


def test_binary_0_255_masks_without_norm_hint_at_norm_not_at_ignoring_255():
    """0/255 masks with label_transform None (TAO's example spec) were told to add label_id 255 to
    ignore the value: the foreground, ignored everywhere, trained a model that never predicts it."""
    decoder = MaskDecoder(TAO_SEGMENT_DEFAULTS["palette"], None, num_classes=2)
    with pytest.raises(DataError, match=r"masks look binary 0/255: set label_transform: norm, which reads 255 as 1"):
        decoder.decode(np.array([[0, 255]], dtype=np.uint8), "binary.png")
    # 0, 1 and 255: 1 is the foreground, so 255 marks pixels to ignore (following the norm advice then
    # said "the values look like class ids: set label_transform: None", round in a circle)
    with pytest.raises(DataError, match=r"masks hold 0, 1 and 255: if 255 marks pixels to ignore .*{label_id: 255"):
        decoder.decode(np.array([[0, 1, 255]], dtype=np.uint8), "ignore.png")


def test_num_classes_disagreeing_with_palette_is_an_error():
    with pytest.raises(DataError, match=r"num_classes is 3 but the palette defines 2 training classes.*num_classes: 2"):
        MaskDecoder(COLOR_PALETTE, None, num_classes=3)


def test_non_contiguous_label_ids_are_an_error():
    with pytest.raises(DataError, match=r"training ids must be 0..1.*got \[0, 2\]"):
        MaskDecoder([entry("a", 0, [0]), entry("b", 2, [2])], None, num_classes=2)


def test_palette_units_must_match_label_transform():
    with pytest.raises(DataError, match=r"palette\[0\].*must be in 0..1"):
        MaskDecoder(COLOR_PALETTE, "norm", num_classes=2)
    with pytest.raises(DataError, match="must be integers in 0..255"):
        MaskDecoder([entry("a", 0, [0.5, 0, 0]), entry("b", 1, [1, 1, 1])], None, num_classes=2)
    with pytest.raises(DataError, match="label_transform must be 'norm' or None"):
        MaskDecoder(COLOR_PALETTE, "scale", num_classes=2)


def test_same_colour_for_two_classes_is_an_error():
    with pytest.raises(DataError, match="twice with different classes"):
        MaskDecoder([entry("a", 0, [1, 2, 3]), entry("b", 1, [1, 2, 3])], None, num_classes=2)


def test_single_channel_mask_with_colour_palette_holds_label_ids():
    decoder = MaskDecoder(COLOR_PALETTE, None, num_classes=2)
    assert decoder.decode(np.array([[0, 1, 255]], dtype=np.uint8), "ids.png").tolist() == [[0, 1, 255]]
    with pytest.raises(DataError, match=r"ids.png: single-channel mask value\(s\) are not a palette label_id: 7 at row 0, col 1"):
        decoder.decode(np.array([[0, 7]], dtype=np.uint8), "ids.png")
    norm = MaskDecoder([entry("a", 0, [0, 0, 1]), entry("b", 1, [0, 1, 0])], "norm", num_classes=2)
    assert norm.decode(np.array([[0, 255]], dtype=np.uint8), "bin.png").tolist() == [[0, 1]]


def test_palette_objects_with_attributes_are_accepted():
    from types import SimpleNamespace

    palette = [SimpleNamespace(**e) for e in COLOR_PALETTE]
    assert MaskDecoder(palette, None, 2).num_classes == 2


def test_colorize_and_overlay():
    decoder = MaskDecoder(COLOR_PALETTE, None, num_classes=2)
    ids = np.array([[0, 1], [255, 0]])
    rgb = colorize(ids, decoder)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[0, 1].tolist() == [0, 255, 0]
    assert colorize(ids, COLOR_PALETTE).tolist() == rgb.tolist()  # palette entries work too
    # gray/class-id palettes get visible, distinct colours instead of near-black ones
    gray = colorize(np.array([[0, 1]]), TAO_SEGMENT_DEFAULTS["palette"], label_transform=None)
    assert gray[0, 0].tolist() != gray[0, 1].tolist() and gray.max() > 100

    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    blended = overlay(image, ids, decoder, alpha=0.5)  # ids resized (nearest) to the image size
    assert blended.shape == (4, 4, 3)
    assert blended[0, 0].tolist() == [50, 50, 178]  # half blue
    assert blended[3, 0].tolist() == [100, 100, 100]  # ignore keeps the image
