"""ONNX export: TAO names, dynamic batch, parity with PyTorch, one self-contained file, DeepStream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segformer.deploy.deepstream import parse_nvinfer_config, preprocessing_params
from segformer.deploy.onnx_export import ParityError, onnx_parity
from segformer.deploy.onnx_signature import read_onnx_signature
from segformer.deploy.runtime import OnnxPredictor

from deploy_helpers import NUM_CLASSES, SIZE


def test_names_and_dynamic_batch_run_in_ort(exported):
    _, result = exported
    sig = read_onnx_signature(result.onnx_file)
    assert (sig.input_name, sig.output_name, sig.opset) == ("input", "output", 17)
    assert sig.dynamic_batch and sig.input_shape[1:] == (3, SIZE, SIZE)
    session = ort.InferenceSession(str(result.onnx_file), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        (out,) = session.run(["output"], {"input": np.zeros((batch, 3, SIZE, SIZE), np.float32)})
        assert out.shape == (batch, NUM_CLASSES, SIZE // 4, SIZE // 4)


def test_parity_checked_on_validation_images(exported):
    _, result = exported
    assert "validation images" in result.parity_inputs
    assert result.max_abs_diff < 1e-3


def test_single_self_contained_file(exported):
    _, result = exported
    folder = result.onnx_file.parent
    assert not list(folder.glob("*.data")) and not list(folder.glob(".*"))  # no weights file, no temp left
    model = onnx.load(str(result.onnx_file), load_external_data=False)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    # Nodes carry module paths, so skip_names / layers_precision have something to match.
    assert any(n.name.startswith("/backbone/") for n in model.graph.node)


def test_parity_failure_is_reported(exported, checkpoint, make_deploy_cfg, tmp_path):
    from segformer.engine.predictor import load_torch_model

    cfg, result = exported
    model = load_torch_model(cfg.model, NUM_CLASSES, checkpoint)
    with torch.no_grad():
        for param in model.parameters():  # a model that no longer matches the exported file
            param.add_(0.1 * torch.randn_like(param))
    with pytest.raises(ParityError, match="differs from PyTorch"):
        onnx_parity(model, result.onnx_file, torch.randn(2, 3, SIZE, SIZE))


def test_deepstream_config_matches_onnx(exported):
    cfg, result = exported
    values = parse_nvinfer_config(result.deepstream_config)
    sig = read_onnx_signature(result.onnx_file)
    c, h, w = sig.chw
    assert values["infer-dims"] == f"{c};{h};{w}"
    assert values["output-blob-names"] == sig.output_name
    assert values["onnx-file"] == result.onnx_file.name
    assert (result.onnx_file.parent / values["onnx-file"]).is_file()
    assert values["network-type"] == "2" and values["cluster-mode"] == "4"
    assert values["model-color-format"] == "0"
    assert int(values["num-detected-classes"]) == NUM_CLASSES == sig.num_classes
    labels = result.labels_file.read_text().splitlines()
    assert len(labels) == NUM_CLASSES and (result.onnx_file.parent / values["labelfile-path"]) == result.labels_file
    # nvinfer computes scale * (x - offset) with x in 0..255: must equal (x/255 - mean)/std.
    aug = cfg.dataset.segment.augmentation
    scale = float(values["net-scale-factor"])
    offsets = [float(v) for v in values["offsets"].split(";")]
    for x in (0.0, 77.0, 255.0):
        for ch in range(3):
            expected = (x / 255 - aug.mean[ch]) / aug.std[ch]
            assert scale * (x - offsets[ch]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_an_int8_deepstream_config_of_a_float_model_names_the_calibration_cache(exported, make_deploy_cfg, tmp_path,
                                                                               caplog):
    """network-mode int8 on a float ONNX model gives nvinfer no int8 scales: the config names TensorRT's
    calibration cache that gen_trt_engine writes (relative to the config), and says to write it first."""
    import dataclasses
    import shutil

    from segformer.actions.export import deepstream_files

    _, result = exported
    onnx_file = shutil.copy(result.onnx_file, tmp_path / "model.onnx")
    for data_type, expected in (("fp16", None), ("int8", "results/gen_trt_engine/cal.bin")):
        cfg = make_deploy_cfg(tmp_path / "results", f"gen_trt_engine.tensorrt.data_type={data_type}")
        config, _ = deepstream_files(cfg, Path(onnx_file), NUM_CLASSES)
        values = parse_nvinfer_config(config)
        assert values.get("int8-calib-file") == expected and values["network-mode"] == ("1" if expected else "2")
    assert "which `segformer gen_trt_engine` with data_type int8 writes" in caplog.text
    # a cache the spec names stays as written (absolute): a chain of ../ breaks once the folder moves
    cfg = make_deploy_cfg(tmp_path / "results", "gen_trt_engine.tensorrt.data_type=int8",
                          "gen_trt_engine.tensorrt.calibration.cal_cache_file=/opt/cal/segformer_cal.bin")
    assert parse_nvinfer_config(deepstream_files(cfg, Path(onnx_file), NUM_CLASSES)[0])["int8-calib-file"] == \
        "/opt/cal/segformer_cal.bin"
    # without results_dir (export.results_dir alone) where gen_trt_engine writes it is not known: said, no line
    cfg = dataclasses.replace(make_deploy_cfg(tmp_path / "results", "gen_trt_engine.tensorrt.data_type=int8"),
                              results_dir=None)  # as a spec without ${results_dir} whose export.results_dir is set
    assert "int8-calib-file" not in parse_nvinfer_config(deepstream_files(cfg, Path(onnx_file), NUM_CLASSES)[0])
    assert "set gen_trt_engine.tensorrt.calibration.cal_cache_file" in caplog.text


def test_unequal_std_uses_mean_and_reports_error():
    scale, offsets, error = preprocessing_params([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert scale == pytest.approx(1 / (255 * (0.229 + 0.224 + 0.225) / 3))
    assert offsets[0] == pytest.approx(123.675)
    assert 0.005 < error < 0.02


def test_onnx_predictor_protocol_and_static_batch(exported, tmp_path):
    _, result = exported
    predictor = OnnxPredictor(result.onnx_file, providers=["CPUExecutionProvider"])
    assert predictor.num_classes == NUM_CLASSES and predictor.input_size == (SIZE, SIZE)
    out = predictor(torch.zeros(5, 3, SIZE, SIZE))
    assert out.dtype == torch.float32 and out.shape == (5, NUM_CLASSES, SIZE // 4, SIZE // 4)


def test_export_rejects_bad_batch(exported, tmp_path):
    from segformer.deploy.onnx_export import export_onnx

    with pytest.raises(ValueError, match="batch_size"):
        export_onnx(torch.nn.Conv2d(3, 2, 1), tmp_path / "x.onnx", input_height=64, input_width=64, batch_size=0)


def test_weights_above_the_protobuf_limit_go_to_a_data_file_named_after_the_graph(tmp_path, monkeypatch):
    """Models over 2 GiB keep their weights in ``<name>.onnx.data``; the graph refers to it by that
    name, so both are written under their final names and moved in together. The limit is lowered
    here so a tiny model takes that path."""
    import segformer.deploy.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", 0)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 256, 1)  # 3 KiB of weights: onnx keeps tensors under 1 KiB inline
    path = onnx_export.export_onnx(model, tmp_path / "out" / "big.onnx", input_height=32, input_width=32)
    assert sorted(p.name for p in path.parent.iterdir()) == ["big.onnx", "big.onnx.data"]
    graph = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for init in graph.graph.initializer for entry in init.external_data if entry.key == "location"}
    assert locations == {"big.onnx.data"}
    images = torch.randn(2, 3, 32, 32)
    assert onnx_parity(model, path, images, providers=["CPUExecutionProvider"]) < 1e-5


def test_a_reduce_mean_exports_at_tao_opset_17_without_the_fallback(tmp_path, caplog):
    """The FAN backbones (TAO's default, fan_small_12_p4_hybrid) take means over channels. The exporter
    writes opset 18 and converts down to TAO's 17; onnx's converter kept ReduceMean's opset-18 attribute
    noop_with_empty_axes, and the checker refused the file ("Unrecognized attribute"): `segformer export`
    and quantize ended in a traceback on NVIDIA's own templates."""
    from torch import nn

    from segformer.deploy.onnx_export import export_onnx

    class ChannelMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 4, stride=4)

        def forward(self, x):
            y = self.conv(x)
            return y - y.mean(dim=1, keepdim=True)

    model = ChannelMean().eval()
    with caplog.at_level("WARNING", logger="segformer.deploy.onnx_export"):
        path = export_onnx(model, tmp_path / "m.onnx", input_height=32, input_width=32, opset_version=17)
    assert not [r for r in caplog.records if "TorchScript" in r.getMessage()]  # the dynamo graph, checked
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17 and "ReduceMean" in {n.op_type for n in proto.graph.node}
    x = torch.randn(3, 3, 32, 32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_opsets_below_17_export_without_a_failure_on_the_way(tmp_path, caplog):
    """Opsets 14-16 (valid, and NVIDIA's schema allows them) printed "torch.export-based ONNX export
    failed (... No Previous Version of LayerNormalization exists)" before the fallback wrote the file:
    the torch.export graph can never go below 17. They go to the TorchScript exporter directly."""
    from torch import nn

    from segformer.deploy.onnx_export import export_onnx

    class ChannelLastNorm(nn.Module):  # as the backbones normalise their tokens
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 4, 4, stride=4), nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    model = ChannelLastNorm().eval()
    with caplog.at_level("WARNING", logger="segformer.deploy.onnx_export"):
        path = export_onnx(model, tmp_path / "m.onnx", input_height=32, input_width=32, opset_version=14)
    assert not [r for r in caplog.records if "failed" in r.getMessage()], [r.getMessage() for r in caplog.records]
    assert onnx.load(str(path)).opset_import[0].version == 14
    x = torch.randn(2, 3, 32, 32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
