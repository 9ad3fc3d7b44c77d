"""Promotion's quantize step on a default install: TAO's default backend (torchao, the [quant] extra)
missing is a fallback to ONNX Runtime that the report shows as done, with its note, never "failed"."""

from __future__ import annotations

import json
import sys

import onnx
import pytest
import yaml

from searchhelpers import search_options

OVERRIDES = ("dataset.segment.batch_size=4", "dataset.segment.workers=0",
             "model.decode_head.decoder_params.embed_dim=32",
             # TAO's default quantize section (the synthetic spec's own is onnxruntime)
             "quantize.backend=torchao", "quantize.mode=weight_only_ptq", "quantize.algorithm=minmax")


def _trial(tmp_path, overrides=OVERRIDES, **search):
    """A search's state with one finished trial whose checkpoint has random weights (the steps'
    wiring is under test, not the model)."""
    from automl.state import FINISHED, SearchState, TrialRecord
    from segformer.config import load_config
    from segformer.data.synth import generate
    from segformer.model import build_segformer, save_model_checkpoint

    root = generate(tmp_path / "data", num_classes=3, size=32, train=4, val=4, test=2, seed=1)
    spec = root / "spec.yaml"
    results = tmp_path / "search"
    trial_dir = results / "trial_000"
    cfg = load_config(spec, [*overrides, f"results_dir={trial_dir}"])
    checkpoint = trial_dir / "train" / "segformer_model_latest.pth"
    checkpoint.parent.mkdir(parents=True)
    save_model_checkpoint(checkpoint, build_segformer(cfg.model, 3, load_pretrained=False),
                          {"backbone": cfg.model.backbone.type, "num_classes": 3})
    state = SearchState(results_dir=str(results), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings=search_options(results, spec, overrides, **search).to_dict(), spec=str(spec),
                        overrides=list(overrides))
    record = TrialRecord(trial_id="t0", name="trial_000", params={}, status=FINISHED, best_value=0.5,
                         best_epoch=1, results_dir=str(trial_dir))
    state.trials[record.trial_id] = record
    return state, record, results


def test_promotion_quantize_falls_back_without_torchao(tmp_path, monkeypatch):
    """A trial promoted through export and quantize with torchao unimportable: None in
    sys.modules["torchao"] is Python's own way of failing that import, whether or not torchao is
    installed here."""
    from automl.options import PromotionConfig
    from automl.promote import prepare

    monkeypatch.setitem(sys.modules, "torchao", None)
    state, record, results = _trial(tmp_path)
    lines: list[str] = []
    report = prepare(state, record, PromotionConfig(evaluate=False, trt=False), echo=lines.append)
    quantize = report["steps"]["quantize"]
    assert isinstance(quantize, dict) and quantize["status"] == "done", (report, lines)
    assert quantize["backend"] == "onnxruntime" and quantize["requested_backend"] == "torchao"
    assert quantize["note"] == ("quantize.backend torchao is not installed (pip install 'segformer-automl[quant]'); "
                                "quantizing with onnxruntime instead, in mode static_ptq (int8 weights and "
                                "activations, minmax calibration), not weight_only_ptq")
    assert not any("failed" in line for line in lines), lines
    artifact = onnx.load(quantize["artifact"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in artifact.graph.node}
    saved = json.loads((results / "best" / "quantize" / "quantize_report.json").read_text())
    assert saved["backend"] == "onnxruntime" and saved["note"] == quantize["note"]
    # onnxruntime runs: it quantized the promoted ONNX model, as best/experiment.yaml says, not a second export
    onnx_file = results / "best" / "export" / "segformer.onnx"
    assert saved["float_model"] == str(onnx_file) and not (results / "best" / "quantize" / "float_model.onnx").exists()
    written = yaml.safe_load((results / "best" / "experiment.yaml").read_text())
    assert written["quantize"]["model_path"] == "${results_dir}/export/segformer.onnx" and written["results_dir"] == str(results / "best")


@pytest.mark.parametrize("runtime", ["onnxruntime", "tensorrt"])
def test_a_model_chosen_at_int8_deploys_the_int8_files(tmp_path, runtime):
    """A deploy-aware search that met its latency limit at int8: best/experiment.yaml points
    evaluate and inference at the quantized model. Before, they still named the fp32 model the
    search had timed over the limit. A search timed on TensorRT quantizes with zero point 0, the
    model TensorRT builds: gen_trt_engine takes it at int8 (its QDQ scales) and the DeepStream config
    the champion carries names it with network-mode int8. ONNX Runtime's CPU model (uint8) TensorRT
    cannot build: both stay with the float model, and the quantize step says why. The spec runs as written."""
    from automl.options import PromotionConfig
    from automl.promote import champion_artifacts, prepare
    from segformer.actions import evaluate
    from segformer.config import load_config
    from segformer.deploy.deepstream import parse_nvinfer_config
    from segformer.deploy.trt import tensorrt_refuses

    overrides = (*OVERRIDES[:3], "quantize.backend=onnxruntime", "quantize.mode=static_ptq")
    state, record, results = _trial(tmp_path, overrides, structure={"deploy.precision": ["fp32", "int8"]},
                                    max_latency_ms=5.0, latency_runtime=runtime)
    record.latency = {"latency_ms": 0.7, "precision_bits": 8.0}  # as `automl.deploy` records the choice
    lines: list[str] = []
    report = prepare(state, record, PromotionConfig(evaluate=False, trt=False), echo=lines.append)
    assert report["steps"]["quantize"]["status"] == "done", report
    best = results / "best"
    written = yaml.safe_load((best / "experiment.yaml").read_text())
    int8 = "${results_dir}/quantize/quantized_model_onnxruntime.onnx"
    assert written["evaluate"]["checkpoint"] == written["inference"]["checkpoint"] == int8
    assert written["evaluate"]["is_quantized"] is written["inference"]["is_quantized"] is True
    deepstream = champion_artifacts(best, report)["deepstream"]
    refused = tensorrt_refuses(best / "quantize" / "quantized_model_onnxruntime.onnx")
    if runtime == "tensorrt":
        assert refused is None and written["quantize"]["backend_kwargs"]["symmetric"] is True
        assert written["gen_trt_engine"]["onnx_file"] == int8 and written["gen_trt_engine"]["tensorrt"]["data_type"] == "int8"
        assert deepstream == best / "quantize" / "config_infer_primary_segformer.txt"
        config = parse_nvinfer_config(deepstream)
        assert config["onnx-file"] == "quantized_model_onnxruntime.onnx" and config["network-mode"] == "1"
        assert "int8-calib-file" not in config  # the QDQ model carries its scales
    else:
        assert refused and "not for TensorRT" in report["steps"]["quantize"]["tensorrt"]
        assert any("the int8 model is ONNX Runtime's, for the CPU" in line for line in lines), lines
        assert written["gen_trt_engine"]["onnx_file"] == "${results_dir}/export/segformer.onnx"
        assert deepstream == best / "export" / "config_infer_primary_segformer.txt"
    assert parse_nvinfer_config(best / "export" / "config_infer_primary_segformer.txt")["onnx-file"] == "segformer.onnx"
    scored = evaluate.run(load_config(best / "experiment.yaml", ["evaluate.results_dir=" + str(tmp_path / "ev")]), quiet=True)
    assert 0.0 <= scored.miou <= 1.0


def test_a_stop_python_wrapped_while_the_model_is_logged_stops_the_promotion(tmp_path, monkeypatch):
    """A SIGTERM during the MLflow-model step landed in MLflow's lazy import of its pydantic classes,
    which Python reports as a RuntimeError: the registry's `except Exception` recorded "failed" and the
    search ended FINISHED with no champion (resume then said it had finished). It stops the promotion,
    as a stop anywhere else in it does."""
    import pytest

    from automl import promote as promote_module
    from automl import signals

    state, record, results = _trial(tmp_path)
    record.mlflow_run_id = "run"

    def cut(*_args, **_kwargs):
        signals._TAKEN["signal"] = True  # as the handler does, before its KeyboardInterrupt is wrapped
        raise RuntimeError("Error calling __set_name__ on 'PydanticDescriptorProxy'")

    monkeypatch.setattr(promote_module, "_log_model", cut)
    prepared = {"trial": record.name, "checkpoint": str(tmp_path / "model.pth"), "steps": {}}
    try:
        with pytest.raises(KeyboardInterrupt):
            promote_module.promote(state, record, object(), echo=lambda _: None, prepared=prepared)
    finally:
        signals._TAKEN.clear()
    assert not (results / "best" / "promotion.json").exists()  # nothing recorded as done
