"""Parity with transformers (a reference we did not write) and checkpoint import/export round trips."""

from __future__ import annotations

import re
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from segformer.model import (SegFormer, create_backbone, load_into, load_model_weights, load_pretrained_backbone,
                             load_pretrained_model, save_model_checkpoint)
from segformer.model.checkpoints import convert_state_dict

transformers = pytest.importorskip("transformers")


def _hf_model(depths, widths, num_classes=5, decoder=64):
    config = transformers.SegformerConfig(num_labels=num_classes, depths=list(depths), hidden_sizes=list(widths),
                                          decoder_hidden_size=decoder)
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    bn = model.decode_head.batch_norm  # non-trivial statistics so BN folding is exercised
    bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.normal_(), bn.bias.data.normal_()
    return model


@pytest.mark.parametrize("name, depths, widths", [("mit_b0", (2, 2, 2, 2), (32, 64, 160, 256)),
                                                  ("mit_b2", (3, 4, 6, 3), (64, 128, 320, 512))])
def test_logits_equal_transformers(name, depths, widths):
    hf = _hf_model(depths, widths)
    ours = SegFormer(create_backbone(name, layer_norm_eps=1e-5), num_classes=5, embed_dim=64).eval()
    missing, unexpected = load_into(ours, convert_state_dict(hf.state_dict(), "hf"), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff < 1e-4


def _old_hf_names(state):
    """transformers v4 / hub names, written from the v5 names."""
    rules = [(r"^segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
             (r"^segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
             (r"^segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
             (r"layernorm_before", "layer_norm_1"), (r"layernorm_after", "layer_norm_2"),
             (r"attention\.q_proj", "attention.self.query"), (r"attention\.k_proj", "attention.self.key"),
             (r"attention\.v_proj", "attention.self.value"), (r"attention\.o_proj", "attention.output.dense"),
             (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
             (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
             (r"mlp\.fc1", "mlp.dense1"), (r"mlp\.fc2", "mlp.dense2"), (r"linear_projections", "linear_c")]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def test_hf_files_load_with_old_and_new_names(tmp_path):
    from safetensors.torch import save_file

    hf = _hf_model((2, 2, 2, 2), (32, 64, 160, 256))
    new = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(new, tmp_path / "model.safetensors")
    torch.save(_old_hf_names(new), tmp_path / "pytorch_model.bin")
    a, _ = load_model_weights(tmp_path / "model.safetensors")
    b, _ = load_model_weights(tmp_path / "pytorch_model.bin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ours = SegFormer(create_backbone("mit_b0"), num_classes=5, embed_dim=64)
    assert load_into(ours, b) == ([], [])


def _to_nvlabs(state):
    """Our names -> NVlabs/mmseg names (stages numbered from 1, mmseg head names)."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^backbone\.stages\.(\d)\.patch_embed\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.", key)
        key = re.sub(r"^backbone\.stages\.(\d)\.blocks\.", lambda m: f"backbone.block{int(m[1]) + 1}.", key)
        key = re.sub(r"^backbone\.stages\.(\d)\.norm\.", lambda m: f"backbone.norm{int(m[1]) + 1}.", key)
        key = key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
        key = re.sub(r"^decode_head\.linear_projections\.(\d)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}.proj.", key)
        key = key.replace("decode_head.fuse.", "decode_head.linear_fuse.conv.").replace("decode_head.bn.", "decode_head.linear_fuse.bn.")
        key = key.replace("decode_head.classifier.", "decode_head.linear_pred.")
        if key.startswith("decode_head.linear_c"):
            value = value.flatten(1) if value.dim() == 4 else value
        out[key] = value
    return out


def test_nvlabs_state_dict_round_trips(tmp_path):
    ours = SegFormer(create_backbone("mit_b0"), num_classes=3, embed_dim=32).eval()
    torch.save({"meta": {}, "state_dict": _to_nvlabs(ours.state_dict())}, tmp_path / "segformer.b0.pth")
    state, _ = load_model_weights(tmp_path / "segformer.b0.pth")
    other = SegFormer(create_backbone("mit_b0"), num_classes=3, embed_dim=32).eval()
    assert load_into(other, state, strict=True) == ([], [])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), other(x))
    # an ImageNet encoder file (mit_b0.pth): top-level keys and a classifier that is dropped
    encoder = {k.removeprefix("backbone."): v for k, v in _to_nvlabs(ours.state_dict()).items() if k.startswith("backbone.")}
    torch.save({**encoder, "head.weight": torch.zeros(1000, 256)}, tmp_path / "mit_b0.pth")
    missing, unexpected = load_pretrained_backbone(other, tmp_path / "mit_b0.pth")
    assert missing == [] and unexpected == []


def test_our_format_and_lightning_checkpoints(tmp_path):
    model = SegFormer(create_backbone("mit_b0"), num_classes=3, embed_dim=32)
    path = save_model_checkpoint(tmp_path / "m.pth", model, {"backbone": "mit_b0", "num_classes": 3})
    state, meta = load_model_weights(path)
    assert meta["num_classes"] == 3 and state.keys() == model.state_dict().keys()
    torch.save({"pytorch-lightning_version": "2.6", "segformer_meta": {"num_classes": 3},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "l.ckpt")
    other = SegFormer(create_backbone("mit_b0"), num_classes=3, embed_dim=32)
    assert load_pretrained_model(other, tmp_path / "l.ckpt", strict=True) == ([], [])
    # a classifier for another class count: reported, not fatal
    five = SegFormer(create_backbone("mit_b0"), num_classes=5, embed_dim=32)
    missing, unexpected = load_pretrained_model(five, path)
    assert missing == ["decode_head.classifier.bias", "decode_head.classifier.weight"]


def test_timm_vit_weights_load_into_backbone(tmp_path):
    backbone = create_backbone("vit_base_nvclip_16_siglip", depth=1)
    model = SegFormer(backbone, num_classes=2, embed_dim=16)
    torch.save(backbone.vit.state_dict(), tmp_path / "vit.pth")
    missing, unexpected = load_pretrained_backbone(model, tmp_path / "vit.pth")
    assert unexpected == [] and all(not k.startswith("vit.") for k in missing)


def test_convert_cli_writes_our_format(tmp_path):
    from safetensors.torch import save_file

    hf = _hf_model((2, 2, 2, 2), (32, 64, 160, 256), num_classes=4)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    from segformer.model.convert import main

    assert main(["--from", "hf", str(tmp_path / "model.safetensors"), str(tmp_path / "out.pth"),
                 "--backbone", "mit_b0"]) == 0
    state, meta = load_model_weights(tmp_path / "out.pth")
    assert meta["num_classes"] == 4 and meta["embed_dim"] == 64 and meta["backbone"] == "mit_b0"


def test_convert_module_does_not_import_torch():
    code = "import sys, segformer.model.convert as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _convert_spec(tmp_path):
    """A spec for an MiT-B0 model, and HF weights of one with 4 classes and a 64-channel decoder."""
    from safetensors.torch import save_file

    hf = _hf_model((2, 2, 2, 2), (32, 64, 160, 256), num_classes=4)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    spec = tmp_path / "spec.yaml"
    spec.write_text("model:\n  backbone:\n    type: mit_b0\n  decode_head:\n    in_channels: [32, 64, 160, 256]\n"
                    "dataset:\n  segment:\n    num_classes: 3\n")
    return spec


def test_convert_takes_key_value_overrides_like_every_action(tmp_path, capsys, monkeypatch):
    """The overrides go through load_config: the spec's 3 classes and 768-channel decoder become the
    weights' 4 and 64, and every tensor of SRC loads."""
    from segformer.cli import main

    spec = _convert_spec(tmp_path)
    # a template's ${results_dir} paths, results_dir unset: convert writes OUT alone, so it is not asked for
    spec.write_text(spec.read_text() + "evaluate:\n  checkpoint: ${results_dir}/train/segformer_model_latest.pth\n")
    monkeypatch.chdir(tmp_path)
    out = Path("2024") / "out.pth"  # a relative folder named like a number: results_dir=2024 read as an int
    out.parent.mkdir()
    assert main(["convert", "--from", "hf", str(tmp_path / "model.safetensors"), str(out), "-e", str(spec),
                 "dataset.segment.num_classes=4", "model.decode_head.decoder_params.embed_dim=64"]) == 0
    assert "0 missing, 0 unexpected" in capsys.readouterr().out
    state, meta = load_model_weights(out)
    assert meta["num_classes"] == 4 and meta["embed_dim"] == 64 and meta["backbone"] == "mit_b0"


def test_convert_reports_a_bad_override_as_the_actions_do(tmp_path, capsys):
    from segformer.cli import main

    spec = _convert_spec(tmp_path)
    bad = "model.decode_head.decoder_params.embed_dimm=64"
    assert main(["export", "-e", str(spec), bad]) == 1
    action_error = capsys.readouterr().err
    assert main(["convert", "--from", "hf", str(tmp_path / "model.safetensors"), str(tmp_path / "out.pth"),
                 "-e", str(spec), bad]) == 1
    convert_error = capsys.readouterr().err
    assert "embed_dimm" in action_error and "Traceback" not in convert_error
    assert convert_error.removeprefix("segformer convert") == action_error.removeprefix("segformer export")
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(SystemExit) as exit_:  # an override needs a spec to change
        main(["convert", "--from", "hf", str(tmp_path / "model.safetensors"), str(tmp_path / "out.pth"), bad])
    assert exit_.value.code == 2 and "give it with -e spec.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # neither a spec nor a backbone: the usage error, named as convert's
        main(["convert", "--from", "hf", str(tmp_path / "model.safetensors"), str(tmp_path / "out.pth")])
    assert exit_.value.code == 2 and "segformer convert: error: give --backbone NAME" in capsys.readouterr().err


def test_a_classifier_of_another_shape_is_reported_once_and_an_onnx_file_by_name(tmp_path, caplog):
    """Another num_classes listed the same 2 classifier tensors three times (missing, unexpected, with
    another shape); an ONNX model given as PyTorch weights read 'not a PyTorch checkpoint, or truncated'."""
    from segformer.errors import CheckpointError
    from segformer.model.checkpoints import safe_torch_load

    source = SegFormer(create_backbone("mit_b0"), num_classes=3, embed_dim=32).state_dict()
    target = SegFormer(create_backbone("mit_b0"), num_classes=5, embed_dim=32)
    with caplog.at_level("WARNING", logger="segformer.model.checkpoints"):
        missing, unexpected = load_into(target, source)
    assert {k.rsplit(".", 1)[0] for k in missing} == {"decode_head.classifier"} and len(unexpected) == 2  # the API keeps both
    said = next(r.getMessage() for r in caplog.records if "partly loaded" in r.getMessage())
    assert said.count("decode_head.classifier.weight") == 1 and "missing" not in said and "unexpected" not in said, said
    assert "2 with another shape: decode_head.classifier.weight: checkpoint (3, 32, 1, 1) vs model (5, 32, 1, 1)" in said
    onnx_file = tmp_path / "segformer.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")  # an ONNX protobuf's first bytes
    with pytest.raises(CheckpointError, match=r"segformer.onnx: it is an ONNX model, not PyTorch weights: give the .pth"):
        safe_torch_load(onnx_file)
