"""SegFormer model: backbone registry, MiT/FAN/ViT backbones, all-MLP head, checkpoints.

See README.md in this folder for the parameter-count tables and what each backbone returns.
Names are imported lazily (PEP 562) so that ``segformer.model.convert`` -- the ``segformer
convert`` entry point -- can be imported for ``--help`` without importing torch.
"""

from __future__ import annotations

from segformer.lazy import lazy_exports

_EXPORTS = {
    "SegFormer": ".segformer",
    "build_segformer": ".segformer",
    "check_input_size": ".segformer",
    "decoder_inputs": ".segformer",
    "freeze_backbone": ".segformer",
    "upsample_logits": ".segformer",
    "SegFormerHead": ".head",
    "create_backbone": ".backbones",
    "list_backbones": ".backbones",
    "register_backbone": ".backbones",
    "load_into": ".checkpoints",
    "load_model_weights": ".checkpoints",
    "load_pretrained_backbone": ".checkpoints",
    "load_pretrained_model": ".checkpoints",
    "save_model_checkpoint": ".checkpoints",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
