"""Checkpoints: our own format, and importers for the weights the ecosystem publishes.

Our format (what every action writes and reads)::

    {"format": "segformer-automl", "version": 1,
     "state_dict": model.state_dict(),
     "meta": {"backbone": ..., "num_classes": ..., "embed_dim": ..., plain types only}}

``load_model_weights(path)`` also reads, and renames into our key names:

- Lightning checkpoints: ``state_dict`` keys prefixed ``model.``, our meta under ``segformer_meta``;
- transformers SegFormer / MiT (``.safetensors`` or ``.bin``), both the v4/hub names
  (``segformer.encoder.block.{s}.{b}.attention.self.query``, ``layer_norm_1``, ``mlp.dense1``,
  ``decode_head.linear_c``) and the v5 names (``segformer.stages.{s}.blocks.{b}.attention.q_proj``,
  ``sequence_reduction``, ``layernorm_before``, ``decode_head.linear_projections``); separate
  key/value projections are concatenated into our single ``kv``;
- NVlabs/mmseg SegFormer (``mit_b*.pth`` ImageNet encoders and segmentation checkpoints:
  ``patch_embed1``, ``block1.0.attn.kv``, ``norm1``, ``decode_head.linear_c1``, ``linear_fuse.conv/bn``);
- timm ViT state dicts (``blocks.*``, ``patch_embed.*``) and RADIO checkpoints
  (``radio_model.model.*``), placed under ``backbone.vit.``; the ViT backbone adapts them with
  timm's own checkpoint filter when they are loaded into a model.

Everything is read with ``torch.load(weights_only=True)`` or safetensors: no pickled code runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segformer.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "segformer-automl"
VERSION = 1
SOURCES = ("ours", "lightning", "hf", "nvlabs", "timm")

Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]


# --------------------------------------------------------------------------- reading files
def read_state_file(path: str | Path) -> dict[str, Any]:
    """Load a ``.safetensors`` file or a torch file (``weights_only=True``) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own types for bad files
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}; the file is truncated or not a "
                                  "safetensors file, copy or download it again") from exc
    obj = safe_torch_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors or a checkpoint dict, got {type(obj).__name__}")
    return obj


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one clear :class:`CheckpointError` for every way a
    file can be unusable: truncated or not a torch file, or holding pickled Python objects other
    than tensors and plain values (weights-only loading refuses those, so no code in the file runs).
    """
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if refused is None:  # not a pickle of allowed types at all: garbage, a cut file, another format
            raise CheckpointError(f"cannot read checkpoint {path}: " + (_other_format(path) or (
                "it is not a PyTorch checkpoint, or it is truncated (was it copied completely?)"))) from exc
        raise CheckpointError(
            f"checkpoint {path} was refused by safe (weights_only) loading: it holds the Python object "
            f"{refused.group(1)}, not only tensors and plain values. Such a file can run code when loaded, so "
            "it is never unpickled; use a checkpoint written by segformer, or re-save only its state_dict "
            "in an environment you trust"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise CheckpointError(f"cannot open checkpoint {path}: {exc.strerror or exc}") from exc
        # the reader's own words say what is wrong with a zip checkpoint; a text file fed to the
        # unpickler fails with an IndexError or KeyError whose words mean nothing to a user
        said = str(exc).strip().splitlines()[0] if isinstance(exc, (RuntimeError, OSError)) and str(exc).strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {path}: " + (_other_format(path) or (
                f"{said + '; ' if said else ''}the file is truncated or not a PyTorch checkpoint (was it copied completely?)"))
        ) from exc


def _other_format(path: str | Path) -> str | None:
    """What a deploy artifact given where PyTorch weights are read is, and what to give instead."""
    kind = {".onnx": "an ONNX model", ".engine": "a TensorRT engine", ".plan": "a TensorRT engine",
            ".trt": "a TensorRT engine"}.get(Path(path).suffix.lower())
    if kind is None:
        return None
    return (f"it is {kind}, not PyTorch weights: give the .pth checkpoint train wrote (or its results folder), "
            f"from which the model was exported")


def _unwrap(obj: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any], str | None]:
    """Find the tensor dict inside a checkpoint; return (state_dict, meta, source or None)."""
    if obj.get("format") == FORMAT:
        return dict(obj["state_dict"]), dict(obj.get("meta") or {}), "ours"
    if "pytorch-lightning_version" in obj or "segformer_meta" in obj:
        state = {k.removeprefix("model."): v for k, v in obj["state_dict"].items()}
        return state, dict(obj.get("segformer_meta") or {}), "lightning"
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj.get(wrapper), Mapping):
            return _unwrap(obj[wrapper])
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):  # DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, {}, None


def detect_source(state_dict: Mapping[str, Tensor]) -> str:
    """Name the key convention of ``state_dict``: "hf", "nvlabs", "timm" or "ours"."""
    keys = list(state_dict)
    if any(re.match(r"^(segformer\.)?(encoder\.(block|patch_embeddings)|stages\.\d+\.(blocks|patch_embeddings))\.", k)
           or re.match(r"^decode_head\.(linear_c\.\d|linear_projections\.\d+\.proj)\.", k) for k in keys):
        return "hf"
    if any(re.match(r"^(backbone\.)?(patch_embed\d|block\d)\.", k) or k.startswith("decode_head.linear_c1.")
           for k in keys):
        return "nvlabs"
    if any(k.startswith(("backbone.", "decode_head.")) for k in keys):
        return "ours"
    if any(k.startswith(("blocks.", "radio_model.model.")) for k in keys) or "patch_embed.proj.weight" in keys:
        return "timm"
    raise ValueError(f"cannot tell which model these weights belong to (first keys: {keys[:5]}); "
                     f"expected one of {SOURCES}")


# --------------------------------------------------------------------------- key renaming
_HF_RULES: list[Rule] = [
    (r"^(?:segformer\.)?encoder\.patch_embeddings\.(\d+)\.proj\.", r"backbone.stages.\1.patch_embed.proj."),
    (r"^(?:segformer\.)?encoder\.patch_embeddings\.(\d+)\.layer_norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (r"^(?:segformer\.)?encoder\.block\.(\d+)\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^(?:segformer\.)?encoder\.layer_norm\.(\d+)\.", r"backbone.stages.\1.norm."),
    (r"^(?:segformer\.)?stages\.(\d+)\.patch_embeddings\.proj\.", r"backbone.stages.\1.patch_embed.proj."),
    (r"^(?:segformer\.)?stages\.(\d+)\.patch_embeddings\.layer_norm\.", r"backbone.stages.\1.patch_embed.norm."),
    (r"^(?:segformer\.)?stages\.(\d+)\.blocks\.(\d+)\.", r"backbone.stages.\1.blocks.\2."),
    (r"^(?:segformer\.)?stages\.(\d+)\.layer_norm\.", r"backbone.stages.\1.norm."),
    # inside a block: v4 names, then v5 names
    (r"\.layer_norm_1\.|\.layernorm_before\.", ".norm1."),
    (r"\.layer_norm_2\.|\.layernorm_after\.", ".norm2."),
    (r"\.attention\.self\.query\.|\.attention\.q_proj\.", ".attn.q."),
    (r"\.attention\.self\.key\.|\.attention\.k_proj\.", ".attn.k."),
    (r"\.attention\.self\.value\.|\.attention\.v_proj\.", ".attn.v."),
    (r"\.attention\.self\.sr\.|\.attention\.sequence_reduction\.sequence_reduction\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.|\.attention\.sequence_reduction\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.|\.attention\.o_proj\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.", r"decode_head.linear_projections.\1."),
    (r"^decode_head\.linear_fuse\.", "decode_head.fuse."),
    (r"^decode_head\.batch_norm\.", "decode_head.bn."),
]


def _minus_one(template: str) -> Callable[[re.Match[str]], str]:
    """NVlabs numbers stages from 1; ours from 0."""
    return lambda m: template.format(int(m.group(1)) - 1, *m.groups()[1:])


_NVLABS_RULES: list[Rule] = [
    (r"^(?:backbone\.)?patch_embed(\d)\.", _minus_one("backbone.stages.{}.patch_embed.")),
    (r"^(?:backbone\.)?block(\d)\.(\d+)\.", _minus_one("backbone.stages.{}.blocks.{}.")),
    (r"^(?:backbone\.)?norm(\d)\.", _minus_one("backbone.stages.{}.norm.")),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^decode_head\.linear_c(\d)\.proj\.", _minus_one("decode_head.linear_projections.{}.")),
    (r"^decode_head\.linear_fuse\.conv\.", "decode_head.fuse."),
    (r"^decode_head\.linear_fuse\.bn\.", "decode_head.bn."),
    (r"^decode_head\.linear_pred\.", "decode_head.classifier."),
]

# Keys that belong to nothing we build (ImageNet classifiers, mmseg's unused conv_seg).
_DROP = re.compile(r"^(classifier\.|head\.|decode_head\.conv_seg\.|segformer\.encoder\.?$)")


def _rename(state_dict: Mapping[str, Tensor], rules: list[Rule]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if _DROP.match(key):
            log.info("checkpoint key %s dropped (not part of a SegFormer)", key)
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return _merge_key_value(out)


def _merge_key_value(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate separate ``attn.k``/``attn.v`` tensors into our single ``attn.kv``."""
    for key in [k for k in state_dict if ".attn.k." in k]:
        value_key = key.replace(".attn.k.", ".attn.v.")
        state_dict[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([state_dict.pop(key), state_dict.pop(value_key)])
    return state_dict


def convert_state_dict(state_dict: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Rename a state dict from ``source`` ("hf", "nvlabs", "timm", "ours") into our key names."""
    if source in ("ours", "lightning"):
        return dict(state_dict)
    if source == "hf":
        return _rename(state_dict, _HF_RULES)
    if source == "nvlabs":
        return _rename(state_dict, _NVLABS_RULES)
    if source == "timm":
        return {f"backbone.vit.{k}": v for k, v in state_dict.items()}
    raise ValueError(f"unknown checkpoint source {source!r}; expected one of {SOURCES}")


# --------------------------------------------------------------------------- public API
def load_model_weights(path: str | Path, source: str | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read any supported checkpoint into (state_dict in our key names, meta).

    ``source`` forces the key convention ("hf", "nvlabs", "timm"); by default it is detected.
    """
    state, meta, found = _unwrap(read_state_file(path))
    if not state:
        raise ValueError(f"{path}: no tensors found in the checkpoint")
    source = source or found or detect_source(state)
    return convert_state_dict(state, source), meta


def save_model_checkpoint(path: str | Path, model: nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write our format atomically (temporary file in the same folder, then ``os.replace``)."""
    from segformer.fileio import atomic_write

    payload = {"format": FORMAT, "version": VERSION, "state_dict": model.state_dict(), "meta": dict(meta)}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks")  # what only a resumed training reads


def save_weights_copy(source: str | Path, target: str | Path) -> Path:
    """A copy of the training checkpoint ``source`` without what only resuming its training reads
    (the optimizer's moments, two thirds of an AdamW checkpoint; the schedulers; the loops' and
    callbacks' state). Every loader of weights reads it as it reads ``source``. Written atomically."""
    from segformer.fileio import atomic_write

    kept = {key: value for key, value in read_state_file(source).items() if key not in TRAINING_STATE}
    return atomic_write(target, lambda handle: torch.save(kept, handle))


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = False,
              refuse: Callable[[int, int], None] | None = None) -> tuple[list[str], list[str]]:
    """Copy matching tensors into ``model``; report and return (missing, unexpected) keys.

    Linear weights load into 1x1 convolutions (and back). A tensor whose shape cannot match
    (e.g. a classifier trained for another number of classes) is skipped and counted as both
    missing and unexpected, with both shapes in the report. ``strict=True`` raises instead;
    ``refuse(loaded, total)`` may raise before anything is loaded or reported.
    """
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    mismatched: dict[str, str] = {}  # key -> both shapes
    for key, value in state_dict.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape != target.shape and value.numel() == target.numel() and value.dim() + 2 == target.dim():
            value = value.reshape(target.shape)  # Linear (out, in) -> 1x1 conv (out, in, 1, 1)
        elif value.shape != target.shape and value.dim() == target.dim() + 2 and value.numel() == target.numel():
            value = value.reshape(target.shape)
        if value.shape != target.shape:
            mismatched[key] = f"checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}"
            continue
        usable[key] = value
    missing = sorted(k for k in own if k not in usable)
    unexpected = sorted(k for k in state_dict if k not in own or k not in usable)
    if refuse is not None:
        refuse(len(usable), len(own))
    report = _report(len(usable), missing, unexpected, mismatched)
    if strict and (missing or unexpected):
        raise RuntimeError(f"checkpoint does not match the model exactly: {report}")
    model.load_state_dict(usable, strict=False)
    log.info("loaded weights: %s", report)
    if missing or unexpected:
        log.warning("weights partly loaded: %s", report)
    return missing, unexpected


def _report(loaded: int, missing: list[str], unexpected: list[str], mismatched: Mapping[str, str]) -> str:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8} more)" if len(keys) > 8 else "")

    # a tensor of another shape is in neither list: it is listed once, with its two shapes
    missing, unexpected = [k for k in missing if k not in mismatched], [k for k in unexpected if k not in mismatched]

    parts = [f"{loaded} tensors loaded"]
    if missing:
        parts.append(f"{len(missing)} missing (left as initialised): {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (ignored): {show(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} with another shape: {show([f'{k}: {v}' for k, v in mismatched.items()])}")
    return "; ".join(parts)


def load_pretrained_backbone(model: nn.Module, path: str | Path, *,
                             backbone: str | None = None) -> tuple[list[str], list[str]]:
    """``model.backbone.pretrained_backbone_path``: load encoder weights only, from any format.

    Head weights in the file are ignored; keys without a ``backbone.`` prefix are taken as
    backbone keys. Reports the backbone keys the file did not provide. A file of another model
    (`check_foreign`; ``backbone`` is the spec's model.backbone.type) is refused.
    """
    state, meta = load_model_weights(path)
    backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("decode_head.")}
    adapt = getattr(model.backbone, "adapt_state_dict", None)
    if adapt is not None:
        backbone_state = adapt(backbone_state)
    key = "model.backbone.pretrained_backbone_path"
    return load_into(model.backbone, backbone_state,
                     refuse=lambda loaded, total: check_foreign(path, key, meta, backbone, (loaded, total)))


def load_pretrained_model(model: nn.Module, path: str | Path, strict: bool = False, *,
                          backbone: str | None = None) -> tuple[list[str], list[str]]:
    """``train.pretrained_model_path`` (and evaluate/export checkpoints): load a whole model; a file of
    another model is refused (`check_foreign`)."""
    state, meta = load_model_weights(path)
    adapt = getattr(getattr(model, "backbone", None), "adapt_state_dict", None)
    if adapt is not None:
        backbone_state = adapt({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
        state = {**{k: v for k, v in state.items() if not k.startswith("backbone.")},
                 **{f"backbone.{k}": v for k, v in backbone_state.items()}}
    key = "train.pretrained_model_path"
    return load_into(model, state, strict=strict,
                     refuse=lambda loaded, total: check_foreign(path, key, meta, backbone, (loaded, total)))


def check_foreign(path: str | Path, key: str, meta: Mapping[str, Any], backbone: str | None,
                  fitted: tuple[int, int] | None = None) -> None:
    """Refuse weights of another model rather than train from (almost) scratch after a warning: a
    checkpoint of ours that names another backbone than ``backbone``, or, ``fitted`` = (tensors
    loaded, tensors of the model), one that fits fewer than a quarter of them (a FAN checkpoint
    fitted 0 of MiT-B0's 176 backbone tensors, and training went on)."""
    where = f"{key}: " if key else ""
    trained = meta.get("backbone")
    if backbone and trained and trained != backbone:
        raise CheckpointError(f"{where}{path} holds a {trained!r} model but model.backbone.type is {backbone!r}; "
                              f"set model.backbone.type: {trained}, or give weights of {backbone}")
    if fitted is not None and fitted[0] * 4 < fitted[1]:
        # No description of ours: its tensor names and shapes are all there is to go by. They fit a file of
        # another backbone as badly as weights of this one in a layout this tool does not read (FAN's own).
        raise CheckpointError(
            f"{where}{path} fits only {fitted[0]} of the {fitted[1]} tensors of the model"
            f"{f' ({backbone})' if backbone else ''}: it is weights of another model, or in a layout this tool does "
            f"not read (it reads HF, NVlabs and timm files and its own; `segformer convert` writes its own); give "
            f"weights it reads, or leave {key or 'the key'} unset to train from scratch")


def check_checkpoint_fits(path: str | Path, meta: Mapping[str, Any], *, backbone: str, embed_dim: int,
                          num_classes: int, key: str = "") -> None:
    """A whole checkpoint's own description (``meta``; empty for a file without one) against the
    spec's model, with the spec key to change: one line instead of a list of every tensor's shape."""
    where = f"{key}: " if key else ""
    classes = meta.get("num_classes")
    if classes is not None and int(classes) != num_classes:
        raise CheckpointError(f"{where}{path} was trained for {classes} classes but dataset.segment.num_classes is "
                              f"{num_classes}; use the dataset spec the model was trained with")
    check_foreign(path, key, meta, backbone)
    dim = meta.get("embed_dim")
    if dim is not None and int(dim) != int(embed_dim):
        raise CheckpointError(f"{where}{path} has a decoder of embed_dim {dim} but "
                              f"model.decode_head.decoder_params.embed_dim is {embed_dim}; set "
                              f"model.decode_head.decoder_params.embed_dim: {dim}")
