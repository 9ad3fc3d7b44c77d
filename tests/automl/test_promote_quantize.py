"""Promotion's quantize step on a default install: TAO's default backend (torchao, the [quant] extra)
missing is a fallback to ONNX Runtime that the report shows as done, with its note, never "failed"."""

from __future__ import annotations

import json
import sys

import onnx
import yaml

from searchhelpers import search_options

OVERRIDES = ("dataset.segment.batch_size=4", "dataset.segment.workers=0",
             "model.decode_head.decoder_params.embed_dim=32",
             # TAO's default quantize section (the synthetic spec's own is onnxruntime)
             "quantize.backend=torchao", "quantize.mode=weight_only_ptq", "quantize.algorithm=minmax")


def test_promotion_quantize_falls_back_without_torchao(tmp_path, monkeypatch):
    """A trial's checkpoint (random weights: the step's wiring is under test, not the model) promoted
    through export and quantize with torchao unimportable: None in sys.modules["torchao"] is Python's
    own way of failing that import, whether or not torchao is installed here."""
    from automl.options import PromotionConfig
    from automl.promote import prepare
    from automl.state import FINISHED, SearchState, TrialRecord
    from segformer.config import load_config
    from segformer.data.synth import generate
    from segformer.model import build_segformer, save_model_checkpoint

    monkeypatch.setitem(sys.modules, "torchao", None)
    root = generate(tmp_path / "data", num_classes=3, size=32, train=4, val=4, test=2, seed=1)
    spec = root / "spec.yaml"
    results = tmp_path / "search"
    trial_dir = results / "trial_000"
    cfg = load_config(spec, [*OVERRIDES, f"results_dir={trial_dir}"])
    checkpoint = trial_dir / "train" / "segformer_model_latest.pth"
    checkpoint.parent.mkdir(parents=True)
    save_model_checkpoint(checkpoint, build_segformer(cfg.model, 3, load_pretrained=False),
                          {"backbone": cfg.model.backbone.type, "num_classes": 3})
    state = SearchState(results_dir=str(results), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings=search_options(results, spec, OVERRIDES).to_dict(), spec=str(spec),
                        overrides=list(OVERRIDES))
    record = TrialRecord(trial_id="t0", name="trial_000", params={}, status=FINISHED, best_value=0.5,
                         best_epoch=1, results_dir=str(trial_dir))
    state.trials[record.trial_id] = record

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
