"""Registry, shapes over every backbone, parameter counts (paper tables), freeze/build."""

from __future__ import annotations

import warnings

import pytest
import torch

from segformer.config import BackboneConfig, DecodeHeadConfig, DecoderParams, ModelConfig
from segformer.model import SegFormer, build_segformer, create_backbone, list_backbones, upsample_logits
from segformer.model.backbones.fan import classification_parameter_count

EXPECTED = {
    "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
    "fan_tiny_8_p4_hybrid", "fan_small_12_p4_hybrid", "fan_base_16_p4_hybrid", "fan_large_16_p4_hybrid",
    "vit_large_nvdinov2", "vit_giant_nvdinov2", "vit_base_nvclip_16_siglip", "vit_huge_nvclip_14_siglip",
    "c_radio_v2_vit_base_patch16_224", "c_radio_v2_vit_large_patch16_224", "c_radio_v2_vit_huge_patch16_224",
    "vit_small_dinov3", "vit_small_plus_dinov3", "vit_base_dinov3", "vit_large_dinov3", "vit_huge_plus_dinov3",
}
VIT = sorted(n for n in EXPECTED if n.startswith(("vit_", "c_radio")))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_every_backbone_and_rejects_unknown_names():
    from segformer.config import BACKBONES

    assert set(list_backbones()) == EXPECTED == set(BACKBONES)  # the config enum is the registry
    with pytest.raises(ValueError, match="mit_b0.*mit_b5"):
        create_backbone("mit_b9")
    with pytest.raises(TypeError):
        create_backbone("mit_b0", feat_downsample=True)  # factories never swallow keywords


@pytest.mark.parametrize("name, paper", [("mit_b0", 3.4), ("mit_b1", 13.1), ("mit_b2", 24.2), ("mit_b3", 44.0),
                                         ("mit_b4", 60.8), ("mit_b5", 81.4)])
def test_mit_encoder_parameters_match_the_paper(name, paper):
    with torch.device("meta"):
        backbone = create_backbone(name)
    assert abs(count(backbone) / 1e6 - paper) < 0.1


MIT_DEPTHS = {"mit_b0": (2, 2, 2, 2), "mit_b1": (2, 2, 2, 2), "mit_b2": (3, 4, 6, 3), "mit_b3": (3, 4, 18, 3),
              "mit_b4": (3, 8, 27, 3), "mit_b5": (3, 6, 40, 3)}


@pytest.mark.parametrize("name, embed_dim, millions", [
    ("mit_b0", 256, 3.75), ("mit_b1", 256, 13.72), ("mit_b2", 768, 27.46), ("mit_b3", 768, 47.34),
    ("mit_b4", 768, 64.11), ("mit_b5", 768, 84.71)])
def test_whole_model_parameters_equal_transformers(name, embed_dim, millions):
    """Exactly transformers' SegformerForSemanticSegmentation count (150 classes; FACTS.md 3.75M ... 84.71M)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    widths = (32, 64, 160, 256) if name == "mit_b0" else (64, 128, 320, 512)
    config = SegformerConfig(num_labels=150, depths=list(MIT_DEPTHS[name]), hidden_sizes=list(widths),
                             decoder_hidden_size=embed_dim)
    with torch.device("meta"):
        reference = SegformerForSemanticSegmentation(config)
        model = SegFormer(create_backbone(name), num_classes=150, embed_dim=embed_dim)
    assert count(model) == count(reference)
    assert round(count(model) / 1e6, 2) == millions


@pytest.mark.parametrize("name, published", [("fan_tiny_8_p4_hybrid", 7.4), ("fan_small_12_p4_hybrid", 26.3),
                                             ("fan_base_16_p4_hybrid", 50.4), ("fan_large_16_p4_hybrid", 76.8)])
def test_fan_parameters_match_the_published_table(name, published):
    with torch.device("meta"):
        backbone = create_backbone(name)
    assert abs(classification_parameter_count(backbone) / 1e6 / published - 1) < 0.01


@pytest.mark.parametrize("name, millions", [("vit_large_nvdinov2", 304.4), ("vit_giant_nvdinov2", 1136.5),
                                            ("vit_base_nvclip_16_siglip", 85.8), ("vit_huge_nvclip_14_siglip", 630.8),
                                            ("c_radio_v2_vit_base_patch16_224", 86.5),
                                            ("c_radio_v2_vit_large_patch16_224", 304.2),
                                            ("c_radio_v2_vit_huge_patch16_224", 632.0),
                                            # DINOv3 paper / model card: 21M, 29M, 86M, 300M, 840M
                                            ("vit_small_dinov3", 21.6), ("vit_small_plus_dinov3", 28.7),
                                            ("vit_base_dinov3", 85.6), ("vit_large_dinov3", 303.1),
                                            ("vit_huge_plus_dinov3", 840.5)])
def test_full_size_vit_parameters_on_meta_device(name, millions):
    with torch.device("meta"):
        backbone = create_backbone(name)
    assert abs(count(backbone.vit) / 1e6 - millions) < 0.1


def _tiny(name: str) -> torch.nn.Module:
    if name in VIT:
        return create_backbone(name, depth=1)
    return create_backbone(name)


@pytest.mark.parametrize("name", sorted(EXPECTED - {"mit_b3", "mit_b4", "mit_b5", "fan_base_16_p4_hybrid",
                                                     "fan_large_16_p4_hybrid"}))
def test_forward_backward_shapes_non_square_channels_last(name):
    torch.manual_seed(0)
    backbone = _tiny(name)
    patch = getattr(backbone, "patch_size", 16)
    height, width = (4 * patch, 6 * patch) if patch == 14 else (64, 96)
    model = SegFormer(backbone, num_classes=3, embed_dim=32)
    x = torch.randn(1, 3, height, width).to(memory_format=torch.channels_last)
    features = backbone(x)
    assert [f.shape[1] for f in features] == list(backbone.out_channels)
    for f, stride in zip(features, backbone.strides):
        assert f.shape[-2:] == (-(-height // stride), -(-width // stride))
    logits = model(x)
    assert logits.shape == (1, 3, -(-height // 4), -(-width // 4))
    full = upsample_logits(logits, (height, width))
    full.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.decode_head.parameters())
    assert sum(p.grad.abs().sum() for p in backbone.parameters() if p.grad is not None) > 0


def test_fan_feat_downsample_adds_a_stride_32_level():
    backbone = create_backbone("fan_tiny_8_p4_hybrid", feat_downsample=True)
    assert backbone.strides == (4, 8, 16, 32) and backbone.out_channels == (128, 256, 192, 768)
    assert [f.shape[-1] for f in backbone(torch.randn(1, 3, 64, 96))] == [24, 12, 6, 3]


def _model_cfg(backbone="mit_b0", in_channels=(32, 64, 160, 256), freeze=False, feat_downsample=False):
    return ModelConfig(
        backbone=BackboneConfig(type=backbone, freeze_backbone=freeze, feat_downsample=feat_downsample),
        decode_head=DecodeHeadConfig(in_channels=list(in_channels), decoder_params=DecoderParams(embed_dim=64)))


def test_build_segformer_reads_tao_keys_and_warns_on_other_channel_lists():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_segformer(_model_cfg(), num_classes=5)
    assert model.decode_head.classifier.out_channels == 5 and model.decode_head.embed_dim == 64
    with pytest.warns(UserWarning, match=r"\[64, 128, 256, 512\].*\[32, 64, 160, 256\]"):
        build_segformer(_model_cfg(in_channels=(64, 128, 256, 512)), num_classes=5)
    with warnings.catch_warnings():  # TAO's default list (MiT-B1..B5's), left in a MiT-B0 spec: nothing to warn about
        warnings.simplefilter("error")
        build_segformer(_model_cfg(in_channels=(64, 128, 320, 512)), num_classes=5)
    with pytest.warns(UserWarning, match="feat_downsample"):
        build_segformer(_model_cfg(feat_downsample=True), num_classes=5)


def test_freeze_backbone_keeps_head_trainable():
    model = build_segformer(_model_cfg(freeze=True), num_classes=2)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.decode_head.parameters())


def test_head_train_and_eval_paths_agree_with_the_published_formulation():
    """The re-associated head equals concat -> fuse conv -> BN -> ReLU -> classifier."""
    torch.manual_seed(0)
    model = SegFormer(create_backbone("mit_b0"), num_classes=4, embed_dim=16, align_corners=True)
    head = model.decode_head
    head.bn.running_mean.normal_(), head.bn.running_var.uniform_(0.5, 2.0)
    feats = model.backbone(torch.randn(1, 3, 64, 96))
    size = feats[0].shape[-2:]
    ups = [torch.nn.functional.interpolate(torch.nn.functional.conv2d(f, p.weight, p.bias), size=size,
                                           mode="bilinear", align_corners=True)
           for f, p in zip(feats, head.linear_projections)]
    model.eval()
    with torch.no_grad():
        ref = head.classifier(torch.relu(head.bn(head.fuse(torch.cat(ups[::-1], 1)))))
        assert torch.allclose(head(feats), ref, atol=1e-5)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_input_multiple_matches_the_built_backbone(name):
    from segformer.model.backbones.registry import backbone_input_multiple

    multiple = backbone_input_multiple(name)
    if name in VIT:
        with torch.device("meta"):
            backbone = create_backbone(name, depth=1)
        assert multiple == backbone.input_multiple == backbone.patch_size
    else:
        assert multiple == 1  # MiT/FAN pad or ceil every stride


def test_check_input_size_fails_early_naming_keys_and_nearest_sizes():
    from segformer.model.segformer import check_input_size

    for name in ("vit_large_nvdinov2", "vit_giant_nvdinov2", "vit_huge_nvclip_14_siglip"):
        with pytest.raises(ValueError, match=rf"model.backbone.type='{name}'.*multiples of 14.*"
                                             r"dataset.segment.img_size=256.*use 252 or 266"):
            check_input_size(_model_cfg(name), 256)
        check_input_size(_model_cfg(name), 224)
        check_input_size(_model_cfg(name), (448, 224))
    with pytest.raises(ValueError, match=r"export.input_height/input_width=\(224, 250\).*use 240 or 256"):
        check_input_size(_model_cfg("vit_base_dinov3"), (224, 250), key="export.input_height/input_width")
    check_input_size(_model_cfg("vit_base_dinov3"), 256)
    check_input_size(_model_cfg("mit_b0"), 257)
    check_input_size(_model_cfg("fan_tiny_8_p4_hybrid"), 100)
    with pytest.raises(ValueError, match="multiples of 14"):  # build_segformer checks before building
        build_segformer(_model_cfg("vit_giant_nvdinov2"), num_classes=2, img_size=256)


def test_dinov3_checkpoint_filter_is_timm_eva_one():
    """adapt_state_dict uses the filter of the architecture's own timm module (eva for DINOv3)."""
    backbone = create_backbone("vit_small_dinov3", depth=1)
    state = {f"vit.{k}": v for k, v in backbone.vit.state_dict().items()}
    adapted = backbone.adapt_state_dict(state)
    missing, unexpected = backbone.load_state_dict({k: v for k, v in adapted.items()}, strict=False)
    assert not unexpected and all(k.startswith(("pyramid", "norms")) for k in missing)
