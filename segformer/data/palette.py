"""The palette: how mask pixels become training ids, and how ids become colours again.

:class:`MaskDecoder` is the only place where a mask file's pixel values are interpreted. The
PyTorch dataset, ONNX Runtime and TensorRT evaluation all decode masks through it, so the three
runtimes are scored against exactly the same labels.

Rules (TAO ``dataset.segment`` semantics, made exact):

* ``label_transform: norm`` -- mask values are read as ``value / 255`` and the palette ``rgb`` is
  given in 0..1 (TAO's default palette ``[0,0,0]`` / ``[1,1,1]`` therefore means a 0/255 binary
  mask). Internally the palette is scaled by 255 and rounded, and masks are compared as integers.
* ``label_transform: None`` (the string ``"None"`` or YAML null) -- palette ``rgb`` is compared with
  the raw mask values: colours in 0..255, or gray levels / class ids.
* An ``rgb`` of one element (``[7]``), or of three equal elements, is a gray level; with such a
  palette, single-channel (``L``, 16-bit or indexed ``P``) masks are matched on that gray level.
* With a colour palette, single-channel masks hold ``label_id`` values (TAO's reading of gray
  masks; with ``norm`` the value / 255), and RGB masks are matched on the colour.
* ``mapping_class`` merges classes. All entries sharing a ``mapping_class`` get one training id:
  the ``label_id`` of the entry whose ``seg_class`` equals that ``mapping_class``; if no entry
  names it as its ``seg_class``, the smallest ``label_id`` in the group. A group whose id is 255 is
  ignored by loss and metric.
* The training ids other than 255 must be exactly ``0 .. num_classes - 1``.
* A mask value that no palette entry lists is an error (never silently class 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segformer.errors import DataError

IGNORE_INDEX = 255
"""Training id ignored by the loss and the metric (TAO's ``label_id: 255``)."""

_MAX_LISTED = 5


def _values_at(keys: np.ndarray, bad: np.ndarray, show: Callable[[int], str]) -> tuple[np.ndarray, list[str], str]:
    """The distinct values of the `bad` pixels of a 2-D `keys`, the ones listed (the most frequent
    `_MAX_LISTED`, as `show` writes them) and where each is first seen: "v at row r, col c (n pixels); ..."."""
    flat_bad = np.flatnonzero(bad.ravel())
    values, first, counts = np.unique(keys.ravel()[flat_bad], return_index=True, return_counts=True)
    listed, parts = [], []
    for value, index, count in sorted(zip(values, first, counts), key=lambda t: -t[2])[:_MAX_LISTED]:
        row, col = divmod(int(flat_bad[index]), keys.shape[1])
        listed.append(show(int(value)))
        parts.append(f"{listed[-1]} at row {row}, col {col} ({int(count)} pixels)")
    more = f"; and {len(values) - _MAX_LISTED} more values" if len(values) > _MAX_LISTED else ""
    return values, listed, "; ".join(parts) + more


class MaskValueError(DataError):
    """Mask values the palette does not list, in one file: what they are (``values``, where first
    seen in ``found``) and the advice. :meth:`grouped` writes one message for many files that
    hold the same values (a wrong palette fails every mask alike)."""

    def __init__(self, source: str, what: str, values: Sequence[str], found: str, advice: str) -> None:
        super().__init__(f"{source}: {what}: {found}. {advice}")
        self.source, self.what, self.values, self.found, self.advice = source, what, tuple(values), found, advice
        self.key = (what, self.values, advice)

    @staticmethod
    def grouped(errors: Sequence["MaskValueError"]) -> str:
        """One message for errors of one ``key`` (the first's own message when there is one)."""
        first = errors[0]
        if len(errors) == 1:
            return str(first)
        from segformer.data.files import listed

        names = listed([Path(str(e.source)).name for e in errors])
        return (f"{len(errors)} masks ({names}): {first.what}: {', '.join(first.values)} "
                f"(in {first.source}: {first.found}). {first.advice}")


@dataclass(frozen=True)
class PaletteEntry:
    """One TAO palette entry. ``rgb`` has one element (gray level / class id) or three (colour)."""

    seg_class: str
    mapping_class: str
    label_id: int
    rgb: tuple[float, ...]


def normalize_label_transform(value: str | None) -> str | None:
    """TAO spells "no transform" as the string ``"None"`` or YAML null; both become ``None``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    if isinstance(value, str) and value.strip().lower() == "norm":
        return "norm"
    raise DataError(
        f"dataset.segment.label_transform must be 'norm' or None, got {value!r}; use 'norm' for 0/255 "
        "masks with a palette in 0..1, or None for masks compared with palette rgb in 0..255 / class ids"
    )


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def to_palette_entries(palette: Sequence[Any]) -> tuple[PaletteEntry, ...]:
    """Accept config dataclasses, dicts or :class:`PaletteEntry` and validate their fields."""
    if palette is None or len(palette) == 0:
        raise DataError("dataset.segment.palette is empty; list one entry per mask colour or class id")
    entries = []
    for position, raw in enumerate(palette):
        where = f"dataset.segment.palette[{position}]"
        seg_class = _field(raw, "seg_class")
        if not isinstance(seg_class, str) or not seg_class:
            raise DataError(f"{where}.seg_class must be a non-empty string, got {seg_class!r}")
        mapping_class = _field(raw, "mapping_class") or seg_class
        label_id = _field(raw, "label_id")
        if isinstance(label_id, bool) or not isinstance(label_id, (int, np.integer)) or not 0 <= label_id <= 255:
            raise DataError(f"{where}.label_id must be an integer in 0..255 (255 = ignore), got {label_id!r}")
        rgb = _field(raw, "rgb")
        if isinstance(rgb, (int, float)) and not isinstance(rgb, bool):
            rgb = [rgb]
        if rgb is None or len(rgb) not in (1, 3) or not all(
            isinstance(c, (int, float, np.number)) and not isinstance(c, bool) for c in rgb
        ):
            raise DataError(
                f"{where}.rgb must be a list of 3 numbers (a colour) or 1 number (a gray level / class id), "
                f"got {rgb!r} for seg_class {seg_class!r}"
            )
        entries.append(PaletteEntry(seg_class, str(mapping_class), int(label_id), tuple(float(c) for c in rgb)))
    return tuple(entries)


def _training_ids(entries: Sequence[PaletteEntry]) -> dict[str, int]:
    """mapping_class -> training id (see the module docstring for the rule)."""
    groups: dict[str, list[PaletteEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.mapping_class, []).append(entry)
    ids = {}
    for mapping_class, members in groups.items():
        named = [e for e in entries if e.seg_class == mapping_class]
        ids[mapping_class] = named[0].label_id if named else min(e.label_id for e in members)
    return ids


def _default_colors(n: int = 256) -> np.ndarray:
    """A fixed table of well separated colours (bit-interleaved, as in the PASCAL VOC colormap)."""
    table = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        code, r, g, b = i + 1, 0, 0, 0  # +1: id 0 gets a visible colour, not black
        for bit in range(8):
            r |= ((code >> 0) & 1) << (7 - bit)
            g |= ((code >> 1) & 1) << (7 - bit)
            b |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        table[i] = (r, g, b)
    return table


class MaskDecoder:
    """Turns a mask array into training ids (int64, 255 = ignore), or fails naming file and value.

    Args:
        palette: TAO palette entries (config objects, dicts or :class:`PaletteEntry`).
        label_transform: ``"norm"`` or ``None`` (``"None"`` accepted).
        num_classes: ``dataset.segment.num_classes``; must equal the palette's training classes.
    """

    def __init__(self, palette: Sequence[Any], label_transform: str | None, num_classes: int) -> None:
        self.entries = to_palette_entries(palette)
        self.label_transform = normalize_label_transform(label_transform)
        self.num_classes = int(num_classes)
        group_ids = _training_ids(self.entries)

        self._value_to_id: dict[tuple[int, int, int], int] = {}
        self._value_to_entry: dict[tuple[int, int, int], PaletteEntry] = {}
        for position, entry in enumerate(self.entries):
            value = self._mask_value(entry, position)
            train_id = group_ids[entry.mapping_class]
            previous = self._value_to_entry.get(value)
            if previous is not None and self._value_to_id[value] != train_id:
                raise DataError(
                    f"dataset.segment.palette lists rgb {list(entry.rgb)} twice with different classes "
                    f"({previous.seg_class!r} -> id {self._value_to_id[value]}, {entry.seg_class!r} -> id "
                    f"{train_id}); give each class its own colour or merge them with one mapping_class"
                )
            self._value_to_id[value] = train_id
            self._value_to_entry.setdefault(value, entry)
        self.is_gray = all(r == g == b for r, g, b in self._value_to_id)
        self._check_shared_ids(group_ids)
        self._check_num_classes(group_ids)

        # training id -> class name (the mapping_class) and display colour
        self.class_names: list[str] = [""] * self.num_classes
        for mapping_class, train_id in group_ids.items():
            if train_id != IGNORE_INDEX and not self.class_names[train_id]:
                self.class_names[train_id] = mapping_class
        keys = sorted(self._value_to_id)
        packed = np.array([(r << 16) + (g << 8) + b for r, g, b in keys], dtype=np.int64)
        order = np.argsort(packed)
        self._packed_keys = packed[order]
        self._packed_ids = np.array([self._value_to_id[keys[i]] for i in order], dtype=np.int64)

    # ------------------------------------------------------------------ construction helpers
    def _mask_value(self, entry: PaletteEntry, position: int) -> tuple[int, int, int]:
        """The palette rgb as the integer pixel value it matches in a mask file."""
        rgb = entry.rgb * 3 if len(entry.rgb) == 1 else entry.rgb
        where = f"dataset.segment.palette[{position}] (seg_class {entry.seg_class!r}) rgb {list(entry.rgb)}"
        if self.label_transform == "norm":
            if not all(0.0 <= c <= 1.0 for c in rgb):
                raise DataError(
                    f"{where}: with label_transform 'norm' palette rgb must be in 0..1 (mask value / 255); "
                    "divide the rgb by 255, or set label_transform: None to compare raw 0..255 values"
                )
            return tuple(int(round(c * 255)) for c in rgb)  # type: ignore[return-value]
        limit = 65535 if len(set(rgb)) == 1 else 255
        if not all(float(c).is_integer() and 0 <= c <= limit for c in rgb):
            raise DataError(
                f"{where}: with label_transform None palette rgb must be integers in 0..255 (or class ids); "
                "use label_transform: norm for rgb given in 0..1"
            )
        return tuple(int(c) for c in rgb)  # type: ignore[return-value]

    def _check_shared_ids(self, group_ids: Mapping[str, int]) -> None:
        """Two classes (different mapping_class) with one training id would merge silently."""
        owner: dict[int, str] = {}
        for mapping_class, train_id in group_ids.items():
            if train_id == IGNORE_INDEX:
                continue
            if train_id in owner:
                raise DataError(
                    f"dataset.segment.palette: classes {owner[train_id]!r} and {mapping_class!r} share label_id "
                    f"{train_id}, so training would merge them into one class; give each its own label_id, or give "
                    f"both the same mapping_class to merge them on purpose"
                )
            owner[train_id] = mapping_class

    def _check_num_classes(self, group_ids: Mapping[str, int]) -> None:
        ids = sorted({i for i in group_ids.values() if i != IGNORE_INDEX})
        described = ", ".join(f"{name!r}->{i}" for name, i in group_ids.items())
        if len(ids) != self.num_classes:
            raise DataError(
                f"dataset.segment.num_classes is {self.num_classes} but the palette defines {len(ids)} training "
                f"classes (mapping_class -> id: {described}; id 255 is ignored). Set num_classes: {len(ids)}, "
                "or add/merge palette entries (entries sharing a mapping_class become one class)"
            )
        if ids != list(range(self.num_classes)):
            raise DataError(
                f"palette training ids must be 0..{self.num_classes - 1} (plus 255 for ignore), got {ids} "
                f"(mapping_class -> id: {described}); renumber the label_id values, and where masks hold the old "
                f"ids give each entry its mask value as rgb (masks with ids 0, 1, 3: the third class takes "
                f"rgb: [3] and label_id: 2)"
            )

    # ------------------------------------------------------------------ decoding
    def decode(self, mask: np.ndarray, source: str) -> np.ndarray:
        """Mask array (H,W) or (H,W,3|4) -> training ids (H,W) int64 with 255 = ignore.

        ``source`` (usually the file path) is named in every error.
        """
        mask = np.asarray(mask)
        if mask.ndim == 3 and mask.shape[2] in (2, 4):
            mask = mask[..., : mask.shape[2] - 1]  # drop alpha (LA / RGBA)
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[..., 0]
        if mask.ndim == 3 and mask.shape[2] == 3 and self.is_gray:
            if np.array_equal(mask[..., 0], mask[..., 1]) and np.array_equal(mask[..., 1], mask[..., 2]):
                mask = mask[..., 0]
        if mask.ndim == 2 and not self.is_gray:
            return self._decode_label_ids(mask, source)
        if mask.ndim == 2:
            keys = mask.astype(np.int64) * 0x010101  # gray v -> packed (v, v, v)
        elif mask.ndim == 3 and mask.shape[2] == 3:
            if mask.dtype != np.uint8:
                raise DataError(f"{source}: colour masks must be 8-bit per channel, got dtype {mask.dtype}")
            m = mask.astype(np.int64)
            keys = (m[..., 0] << 16) | (m[..., 1] << 8) | m[..., 2]
        else:
            raise DataError(f"{source}: a mask must be (H, W) or (H, W, 3), got shape {mask.shape}")

        pos = np.clip(np.searchsorted(self._packed_keys, keys), 0, len(self._packed_keys) - 1)
        found = self._packed_keys[pos] == keys
        if not found.all():
            raise self._unknown_values(keys, found, source, gray=mask.ndim == 2, dtype=mask.dtype)
        return self._packed_ids[pos]

    def _decode_label_ids(self, mask: np.ndarray, source: str) -> np.ndarray:
        """Single-channel mask with a colour palette: pixel values are label_ids (TAO's reading)."""
        values = mask.astype(np.int64)
        if self.label_transform == "norm":
            values = np.where(values % 255 == 0, values // 255, -1)
        lut = np.full(256, -1, dtype=np.int64)
        for value, train_id in self._value_to_id.items():
            label_id = self._value_to_entry[value].label_id
            if lut[label_id] < 0:
                lut[label_id] = train_id
        ids = np.full(values.shape, -1, dtype=np.int64)
        valid = (values >= 0) & (values < 256)
        ids[valid] = lut[values[valid]]
        bad = ids < 0
        if bad.any():
            _, listed_values, where = _values_at(mask, bad, str)
            known = sorted({e.label_id for e in self.entries})
            scale = " (x255 with label_transform norm)" if self.label_transform == "norm" else ""
            raise MaskValueError(
                source, f"single-channel mask value(s) are not a palette label_id{scale}", listed_values,
                where, f"A single-channel mask with a colour palette holds label_ids {known}; save the "
                "mask as an RGB colour PNG, or fix its values, or add palette entries for them (label_id 255 to ignore)")
        return ids

    def _format_value(self, packed: int, gray: bool) -> str:
        r, g, b = (packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF
        if gray:
            value = packed // 0x010101
            raw = f"{value}"
        else:
            raw = f"rgb ({r}, {g}, {b})"
        if self.label_transform == "norm":
            scaled = [round(c / 255, 4) for c in ((value,) if gray else (r, g, b))]
            raw += f" (= {scaled} after label_transform norm)"
        return raw

    def _unknown_values(self, keys: np.ndarray, found: np.ndarray, source: str, gray: bool, dtype: Any) -> MaskValueError:
        values, listed_values, where = _values_at(keys, ~found, lambda value: self._format_value(value, gray))
        known = ", ".join(
            f"{self._format_value((r << 16) + (g << 8) + b, gray and self.is_gray)}->{i}"
            for (r, g, b), i in list(self._value_to_id.items())[:12]
        )
        hint = ""
        if dtype == np.uint16 or dtype == np.int32:
            hint = " (a 16-bit mask: its values are compared as gray levels / class ids)"
        binary = {rgb[0] for rgb in self._value_to_id} <= {0, 1}
        if gray and self.label_transform != "norm" and binary and any(int(v) // 0x010101 == 255 for v in values):
            if ((keys == 0x010101) & found).any():  # 0, 1 and 255: 1 is the foreground, so 255 is not
                hint += ("; the masks hold 0, 1 and 255: if 255 marks pixels to ignore (borders, unlabelled), add the "
                         "palette entry {label_id: 255, rgb: [255, 255, 255]} to ignore them")
            else:
                hint += ("; the masks look binary 0/255: set label_transform: norm, which reads 255 as 1 (do not ignore "
                         "255 here: it is the foreground)")
        if gray and self.label_transform == "norm" and values.max() // 0x010101 < self.num_classes + 1:
            hint += ("; the values look like class ids: with label_transform norm masks must be 0/255, "
                     "so set label_transform: None for masks that hold class ids")
        return MaskValueError(
            source, f"mask value(s) not in dataset.segment.palette{hint}", listed_values, where,
            f"Palette values -> training ids: {known}. Fix the mask, or add a palette entry for the value "
            "(label_id 255 to ignore it); if masks hold class ids 0..K-1, set num_classes: K and list each id")

    # ------------------------------------------------------------------ colours
    def color_table(self) -> np.ndarray:
        """(256, 3) uint8: display colour per training id (id 255 -> black).

        Colour palettes show their own colours; gray or class-id palettes (whose colours would be
        near black) use a fixed table of well separated colours.
        """
        table = _default_colors()
        table[IGNORE_INDEX] = 0
        if not self.is_gray:
            for (r, g, b), train_id in self._value_to_id.items():
                entry = self._value_to_entry[(r, g, b)]
                if group_representative(entry, self.entries):
                    table[train_id] = (r, g, b)
        return table


def group_representative(entry: PaletteEntry, entries: Sequence[PaletteEntry]) -> bool:
    """True for the entry whose colour stands for its merged class (seg_class == mapping_class, else first)."""
    members = [e for e in entries if e.mapping_class == entry.mapping_class]
    named = [e for e in members if e.seg_class == e.mapping_class]
    return entry is (named[0] if named else members[0])


def _color_table(palette: Any, label_transform: str | None, num_classes: int | None) -> np.ndarray:
    if isinstance(palette, MaskDecoder):
        return palette.color_table()
    array = np.asarray(palette) if not isinstance(palette, (list, tuple)) or not palette or not (
        isinstance(palette[0], Mapping) or hasattr(palette[0], "seg_class")) else None
    if array is not None and array.ndim == 2 and array.shape[1] == 3:
        table = _default_colors()
        table[: len(array)] = np.clip(array, 0, 255).astype(np.uint8)
        return table
    entries = to_palette_entries(palette)
    if num_classes is None:
        num_classes = len({i for i in _training_ids(entries).values() if i != IGNORE_INDEX})
    return MaskDecoder(entries, label_transform, num_classes).color_table()


def colorize(ids: np.ndarray, palette: Any, label_transform: str | None = None,
             num_classes: int | None = None) -> np.ndarray:
    """Training ids (H, W) -> RGB uint8 (H, W, 3).

    ``palette`` is a :class:`MaskDecoder`, a (K, 3) array of 0..255 colours, or TAO palette entries
    (then ``label_transform`` says how to read their rgb). Ids without a colour (255) are black.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"colorize expects ids of shape (H, W), got {ids.shape}")
    table = _color_table(palette, label_transform, num_classes)
    return table[np.clip(ids, 0, 255).astype(np.intp)]


def overlay(image: Any, ids: np.ndarray, palette: Any, alpha: float = 0.5,
            label_transform: str | None = None, num_classes: int | None = None) -> np.ndarray:
    """Blend class colours over an image: ``(1 - alpha) * image + alpha * colour`` (uint8 RGB).

    ``image`` is a PIL image or an (H, W, 3) array; ``ids`` are resized (nearest) to its size when
    they differ. Pixels with id 255 keep the plain image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    ids = np.asarray(ids)
    h, w = image.shape[:2]
    if ids.shape != (h, w):
        rows = np.minimum(((np.arange(h) + 0.5) * ids.shape[0] / h).astype(np.intp), ids.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * ids.shape[1] / w).astype(np.intp), ids.shape[1] - 1)
        ids = ids[rows[:, None], cols[None, :]]
    colours = colorize(ids, palette, label_transform, num_classes).astype(np.float32)
    blended = (1.0 - alpha) * image[..., :3].astype(np.float32) + alpha * colours
    blended = np.where((ids == IGNORE_INDEX)[..., None], image[..., :3], blended)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
