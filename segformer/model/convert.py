"""``segformer convert``: turn published weights into a checkpoint in our own format.

    segformer convert --from hf|nvlabs|timm SRC OUT.pth [-e spec.yaml [key=value ...]] [--backbone NAME --num-classes K]

The output loads in every action (``train.pretrained_model_path``, ``evaluate.checkpoint``,
``export.checkpoint`` ...). With ``-e`` the model is built from the spec's ``model`` section and
``dataset.segment.num_classes``, after the ``key=value`` overrides (the same override path and
validation as every action: ``segformer.config.load_config``); otherwise from ``--backbone`` and
``--num-classes`` (read from the classifier in SRC when omitted). Encoder-only weights (ImageNet
MiT, timm ViTs) give a checkpoint whose decode head is freshly initialised; the report says so.

Module-level imports stay light (no torch) so ``segformer convert --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from segformer.cli import add_spec_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segformer convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, choices=("hf", "nvlabs", "timm"),
                        help="key convention of SRC: transformers (hf), NVlabs/mmseg (nvlabs), timm ViT (timm)")
    parser.add_argument("src", type=Path, help="weights file: .safetensors, .bin, .pth")
    parser.add_argument("out", type=Path, help="output checkpoint (our format)")
    add_spec_arguments(parser, required=False)
    parser.add_argument("--backbone", help="backbone name (model.backbone.type) when no spec is given")
    parser.add_argument("--num-classes", type=int, help="classes; default: read from the classifier in SRC")
    parser.add_argument("--embed-dim", type=int, help="decoder embed_dim; default: read from SRC, else 768")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # key=value may follow -e spec.yaml, after SRC and OUT
    if args.overrides and args.spec is None:
        parser.error(f"key=value overrides ({' '.join(args.overrides)}) change a spec: give it with -e spec.yaml")
    from .checkpoints import load_into, load_model_weights, save_model_checkpoint
    from .segformer import build_segformer

    if not args.src.is_file():
        parser.error(f"SRC {args.src} " + ("is a folder; give the weights file in it" if args.src.is_dir() else "does not exist"))
    state, meta = load_model_weights(args.src, source=args.source)
    if args.spec is not None:
        from segformer.config import load_config, read_spec

        overrides = list(args.overrides)
        if read_spec(args.spec).get("results_dir") in (None, "", "???") and not any(
                o.startswith("results_dir=") for o in overrides):
            # convert writes OUT alone: the ${results_dir} paths of a template or `data synth` spec are not used
            overrides.insert(0, f"results_dir={args.out.parent.absolute()}")  # absolute: "2024" would read as a number
        cfg = load_config(args.spec, overrides, fetch=False)  # the model's settings only
        model_cfg, num_classes = cfg.model, args.num_classes or cfg.dataset.segment.num_classes
    else:
        if not args.backbone:
            parser.error("give --backbone NAME (model.backbone.type), or -e spec.yaml whose model section describes it")
        num_classes = args.num_classes or _infer_num_classes(state)
        if num_classes is None:
            parser.error("SRC has no classifier to read the number of classes from; give --num-classes K")
        embed_dim = args.embed_dim or _infer_embed_dim(state) or 768
        from segformer.config import BackboneConfig, DecodeHeadConfig, DecoderParams, ModelConfig

        # No spec: the backbone's own channels and strides (empty lists are not checked against it).
        model_cfg = ModelConfig(
            backbone=BackboneConfig(type=args.backbone),
            decode_head=DecodeHeadConfig(in_channels=[], feature_strides=[],
                                         decoder_params=DecoderParams(embed_dim=embed_dim)),
        )
    model = build_segformer(model_cfg, num_classes, load_pretrained=False)
    adapt = getattr(model.backbone, "adapt_state_dict", None)
    if adapt is not None:
        backbone = adapt({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
        state = {**{k: v for k, v in state.items() if not k.startswith("backbone.")},
                 **{f"backbone.{k}": v for k, v in backbone.items()}}
    missing, unexpected = load_into(model, state)
    head_missing = [k for k in missing if k.startswith("decode_head.")]
    out_meta = {
        **meta,
        "backbone": model_cfg.backbone.type,
        "num_classes": num_classes,
        "embed_dim": model.decode_head.embed_dim,
        "converted_from": f"{args.source}:{Path(args.src).name}",
    }
    save_model_checkpoint(args.out, model, out_meta)
    print(f"wrote {args.out}: {len(model.state_dict()) - len(missing)} tensors from {args.src}, "
          f"{len(missing)} missing, {len(unexpected)} unexpected")
    if head_missing:
        print(f"note: {len(head_missing)} decode-head tensors were not in SRC and are freshly initialised")
    backbone_missing = [k for k in missing if k.startswith("backbone.")]
    if backbone_missing:
        print(f"warning: {len(backbone_missing)} backbone tensors missing, e.g. {backbone_missing[:3]}", file=sys.stderr)
    return 0


def _infer_num_classes(state: dict) -> int | None:
    weight = state.get("decode_head.classifier.weight")
    return int(weight.shape[0]) if weight is not None else None


def _infer_embed_dim(state: dict) -> int | None:
    weight = state.get("decode_head.fuse.weight")
    return int(weight.shape[0]) if weight is not None else None


if __name__ == "__main__":
    raise SystemExit(main())
