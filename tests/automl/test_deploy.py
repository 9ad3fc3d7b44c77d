"""Deploy-aware search: latency measured on ONNX Runtime, structural options, the latency limit.

Everything here runs for real: the model is exported with the export action's exporter, quantized
with ONNX Runtime and timed in a real session; the searches run Ray, Optuna and MLflow.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from segformer.deploy.latency import LatencyCache, Target, measure
from tests.automl.searchhelpers import search_options

SMALL = ("dataset.segment.batch_size=4", "model.decode_head.decoder_params.embed_dim=32", "train.num_epochs=1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from segformer.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "data", num_classes=3, size=32, train=8, val=4, test=4)


def _cfg(root: Path, *overrides: str):
    """The spec as a search's trial configures it: a searched img_size is also the export's (timed) size."""
    from automl.deploy import trial_overrides
    from automl.options import SearchConfig
    from automl.trial import base_config
    from segformer.config import apply_overrides

    values = dict(o.split("=", 1) for o in overrides)
    if "dataset.segment.img_size" in values:
        values["dataset.segment.img_size"] = int(values["dataset.segment.img_size"])
    return apply_overrides(base_config(root / "spec.yaml", SMALL, root), trial_overrides(values, SearchConfig()))


def test_the_model_is_timed_at_the_size_it_deploys_at(data, tmp_path) -> None:
    """The latency is the exported model's: at export.input_height/width where the user chose them
    (a model trained at 32 px and exported at 64 px runs at 64 px), else at the size it trains at;
    a searched img_size is the export's size too."""
    import yaml

    from automl.trial import base_config
    from segformer.deploy.latency import architecture

    spec = yaml.safe_load((data / "spec.yaml").read_text())
    spec["export"].update(input_height=64, input_width=48)
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text(yaml.safe_dump(spec))
    assert architecture(base_config(chosen, SMALL, tmp_path))["input"] == [3, 64, 48]
    del spec["export"]["input_height"], spec["export"]["input_width"]
    unset = tmp_path / "unset.yaml"
    unset.write_text(yaml.safe_dump(spec))
    assert architecture(base_config(unset, [*SMALL, "dataset.segment.img_size=40"], tmp_path))["input"] == [3, 40, 40]
    assert architecture(base_config(unset, [*SMALL, "export.input_width=96"], tmp_path))["input"] == [3, 256, 96]
    assert architecture(_cfg(data, "dataset.segment.img_size=128"))["input"] == [3, 128, 128]


def test_a_model_deployed_at_another_size_than_it_was_scored_at_is_said(data, tmp_path) -> None:
    """The test mIoU is the checkpoint's at img_size; an export size the user chose deploys another
    model (resized otherwise): the summary and the report say its accuracy there was not measured."""
    import yaml

    from automl.finals import deployed_size, final_lines
    from automl.state import FINISHED, SearchState, TrialRecord

    spec = yaml.safe_load((data / "spec.yaml").read_text())  # trained at 32 px, exported at 32 px
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={}, spec=str(data / "spec.yaml"), overrides=list(SMALL))
    trial = TrialRecord(trial_id="0", name="trial_000", params={"train.optim.lr": 0.01}, status=FINISHED)
    assert deployed_size(state, trial) == {}
    spec["export"].update(input_height=64, input_width=48)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    state.spec = str(tmp_path / "spec.yaml")
    final = {"skipped": "the test split is the validation split", **deployed_size(state, trial)}
    assert final["deployed_input"] == [64, 48] and final["scored_at"] == 32
    note = final_lines(final)[-1]
    assert note.startswith("  deploy   NOTE: the exported model") and "64x48" in note and "32x32" in note
    searched = TrialRecord(trial_id="1", name="trial_001", params={"dataset.segment.img_size": 64}, status=FINISHED)
    assert deployed_size(state, searched) == {}  # a searched size is the export's too


def test_latency_is_measured_on_onnxruntime_and_cached(data, tmp_path) -> None:
    target = Target(threads=1, runs=5, warmup=1)
    cache = LatencyCache(tmp_path / "latency.json", target)
    fp32 = cache.lookup(_cfg(data, "dataset.segment.img_size=32"))  # measured (`measure_many`), then kept
    assert fp32["runtime"] == "onnxruntime" and fp32["threads"] == 1 and fp32["batch"] == 1
    assert fp32["architecture"] == {"backbone": "mit_b0", "embed_dim": 32, "num_classes": 3, "input": [3, 32, 32],
                                    "precision": "fp32"}
    assert 0 < fp32["latency_ms"] <= fp32["latency_p90_ms"] and 3.0 < fp32["params_m"] < 4.0  # MiT-B0 is 3.3 M
    # three passes; the fastest is the latency (a slow spell of the machine in the others does not decide it)
    assert fp32["passes"] == 3 and fp32["latency_ms"] == pytest.approx(min(fp32["passes_ms"]), abs=1e-4)
    # the learning rate does not change the architecture: the second lookup is the cached record
    assert cache.lookup(_cfg(data, "dataset.segment.img_size=32", "train.optim.lr=0.01")) == fp32
    assert len(json.loads((tmp_path / "latency.json").read_text())) == 1
    # several at once: the new ones measured together (their passes alternate), the known one kept
    both = cache.lookup_many([(_cfg(data, "dataset.segment.img_size=32"), "fp32"), (_cfg(data, "dataset.segment.img_size=32"), "int8")])
    int8 = both[1]
    assert both[0] == fp32 and int8["architecture"]["precision"] == "int8"
    assert len(json.loads((tmp_path / "latency.json").read_text())) == 2
    assert int8["model_mb"] < fp32["model_mb"] / 2  # int8 weights: a quarter of the float file, plus the graph
    # four times the pixels: about four times the operations (counted, not timed)
    assert measure(_cfg(data, "dataset.segment.img_size=64"), target)["gflops"] > 3 * fp32["gflops"]
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ValueError, match="latency on TensorRT: TensorRT is not installed"):
            measure(_cfg(data), Target(runtime="tensorrt"))
    with pytest.raises(ValueError, match="fp16 is a GPU precision"):
        measure(_cfg(data), target, "fp16")


def test_a_search_timed_on_tensorrt_builds_its_engine_as_timed(tmp_path) -> None:
    """Promotion's gen_trt_engine follows the precision the search chose on TensorRT (int8 from
    the quantize step's QDQ model); a search timed elsewhere leaves the spec's engine settings."""
    from automl.promote import _engine_as_timed, _precision_skip
    from automl.state import SearchState, TrialRecord
    from segformer.actions.quantize import QuantizeResult

    def state(runtime: str) -> SearchState:
        return SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="random", metric="val_miou", mode="max",
                           settings={"search": {"latency_runtime": runtime,
                                                "structure": {"deploy.precision": ["fp32", "fp16", "int8"]}}})

    def trial(bits: float) -> TrialRecord:
        return TrialRecord(trial_id="t0", name="trial_000", params={}, latency={"latency_ms": 1.0, "precision_bits": bits})

    qdq = QuantizeResult(artifact=Path("best/quantize/model_int8.onnx"), backend="onnxruntime", float_miou=None,
                         quantized_miou=None, float_bytes=4, quantized_bytes=1, report_file=Path("r.json"),
                         results_dir=Path("best/quantize"))
    assert _engine_as_timed(state("tensorrt"), trial(16), None) == {"gen_trt_engine.tensorrt.data_type": "fp16"}
    assert _engine_as_timed(state("tensorrt"), trial(8), qdq) == {"gen_trt_engine.tensorrt.data_type": "int8",
                                                                 "gen_trt_engine.onnx_file": str(qdq.artifact)}
    assert _engine_as_timed(state("onnxruntime"), trial(8), qdq) == {}
    assert "fp16" in _precision_skip(state("tensorrt"), trial(16)) and _precision_skip(state("tensorrt"), trial(8)) is None


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_latency_is_measured_on_tensorrt_at_each_precision(data) -> None:
    records = {p: measure(_cfg(data, "dataset.segment.img_size=64"), Target(runtime="tensorrt", runs=5, warmup=2), p)
               for p in ("fp32", "fp16", "int8")}
    for precision, record in records.items():
        assert record["runtime"] == "tensorrt" and record["architecture"]["precision"] == precision
        assert 0 < record["latency_ms"] <= record["latency_p90_ms"] and record["device"]
    assert records["fp16"]["model_mb"] < records["fp32"]["model_mb"]  # the engine's weights in half precision


def test_a_busy_machine_while_timing_is_said() -> None:
    """The driver warns when an architecture was slow in most of its passes (its latency, the fastest
    pass, may be disturbed too); one slow pass of three is what the fastest pass already drops."""
    from automl.deploy import noisy_timing

    def record(size: int, *passes: float) -> dict:
        return {"architecture": {"backbone": "mit_b0", "input": [3, size, size], "embed_dim": 256, "precision": "fp32"},
                "latency_ms": min(passes), "latency_p90_ms": max(passes), "params_m": 3.7, "gflops": 0.4,
                "model_mb": 14.2, "passes_ms": list(passes)}

    quiet = [record(64, 2.0, 2.1, 4.8), record(96, 3.4, 3.3, 3.5)]
    assert noisy_timing(quiet) is None and noisy_timing(quiet, record(128, 5.0, 9.4, 5.0)) is None
    spec = record(128, 11.3, 5.8, 10.7)
    warning = noisy_timing(quiet, spec)
    assert "11.30, 5.80, 10.70 ms" in warning and "the limit is uncertain" in warning and "--max-latency-ms" in warning
    assert "1 of 2 architectures" in noisy_timing([quiet[0], record(96, 7.0, 3.3, 6.0)])


def test_each_architecture_deploys_at_the_most_accurate_precision_within_the_limit() -> None:
    from automl.deploy import choose

    records = {"fp32": {"latency_ms": 10.0}, "int8": {"latency_ms": 6.0}}
    assert choose(records, None)[0] == "fp32" and choose(records, 12)[0] == "fp32"
    assert choose(records, 8)[:3:2] == ("int8", True)
    assert choose(records, 5)[:3:2] == ("int8", False)  # none fits: the fastest, infeasible
    # int8 slower than fp32 on this target (no VNNI, say): never chosen over fp32
    slow_int8 = {"fp32": {"latency_ms": 10.0}, "int8": {"latency_ms": 11.0}}
    assert choose(slow_int8, 10.5)[0] == "fp32" and choose(slow_int8, 9)[:3:2] == ("fp32", False)


def test_the_front_and_its_knee(tmp_path) -> None:
    from automl.pareto import decide, front, knee, parse
    from automl.state import FINISHED, SearchState, TrialRecord

    points = [{"trial": n, "accuracy": a, "cost": c} for n, a, c in
              (("slow_best", 0.80, 40.0), ("knee", 0.78, 12.0), ("fast", 0.60, 5.0), ("dominated", 0.70, 20.0), ("mid", 0.74, 9.0))]
    members = front(points)
    assert [p["trial"] for p in members] == ["fast", "mid", "knee", "slow_best"]  # by cost; "dominated" is not on it
    assert knee(members)["trial"] == "knee"  # most of the accuracy for a third of the slow model's latency
    assert knee(members[2:])["trial"] == "slow_best"  # two members: no knee, the most accurate
    with pytest.raises(ValueError, match="the first is the search's metric"):
        parse("latency_ms:min,val_miou:max", "val_miou", "max")
    with pytest.raises(ValueError, match="a deploy cost to minimise"):
        parse("val_miou:max,val_loss:min", "val_miou", "max")
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    for i, (a, c) in enumerate(((0.80, 40.0), (0.78, 12.0), (0.60, 5.0))):
        state.trials[str(i)] = TrialRecord(trial_id=str(i), name=f"trial_00{i}", params={}, status=FINISHED, best_value=a,
                                           latency={"latency_ms": c}, is_baseline=i == 0)
    state.trials["3"] = TrialRecord(trial_id="3", name="trial_003", params={}, status=FINISHED, latency={"latency_ms": 1.0},
                                    infeasible=True)
    decided = decide(state, ("val_miou:max", "latency_ms:min"), None)
    assert decided["chosen"] == "trial_001" and "knee" in decided["rule"] and len(decided["points"]) == 3
    assert decide(state, ("latency_ms:min",), 50.0)["chosen"] == "trial_000"  # the cost alone: the metric joins it
    # NVIDIA's scalarisation, sum(+-weight * value / scale): the weights move the choice along the front
    for weights, chosen in ((((1, 1), (1, 1000)), "trial_001"), (((1, 1), (1, 10)), "trial_002"), (((1, 1), (0, 1)), "trial_000")):
        decided = decide(state, ("val_miou:max", "latency_ms:min"), None, weights)
        assert decided["chosen"] == chosen, (weights, decided)
    assert decided["rule"].startswith("the best weighted score, 1 * val_miou / 1 - 0 * latency_ms / 1")


def test_the_front_hands_over_the_recheck_pick_of_the_configuration_it_chooses(tmp_path) -> None:
    """Re-check trainings are off the front (it holds each configuration's first training): where the
    front chooses the configuration the re-check kept, the re-check's pick, its better training, is
    promoted, not the first training the front lists."""
    from types import SimpleNamespace

    from automl.runner import _pareto_choice
    from automl.state import FINISHED, SearchState, TrialRecord

    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={})
    for i, (a, c, of) in enumerate(((0.80, 40.0, None), (0.78, 12.0, None), (0.60, 5.0, None), (0.82, 40.0, "trial_000"),
                                    (0.70, 12.0, "trial_001"))):
        state.trials[str(i)] = TrialRecord(trial_id=str(i), name=f"trial_00{i}", params={}, status=FINISHED, best_value=a,
                                           latency={"latency_ms": c}, is_baseline=i == 0, recheck_of=of)
    state.recheck = {"leader": "trial_001", "baseline": "trial_000", "confirmed": False, "baseline_led": True,
                     "configuration": "trial_000", "promoted": "trial_003"}
    opts = SimpleNamespace(search=SimpleNamespace(objectives=("val_miou:max", "latency_ms:min"), max_latency_ms=50.0,
                                                  objective_weights=None))
    lines: list[str] = []
    chosen = _pareto_choice(opts, state, state.by_name("trial_003"), lines.append)
    assert chosen.name == "trial_003" and state.pareto["chosen"] == "trial_003"
    assert "trial_003 is trial_000's configuration trained on the re-check seed" in state.pareto["rule"]
    assert json.loads((tmp_path / "pareto.json").read_text())["chosen"] == "trial_003"
    # a member of another configuration is promoted as the front chose it
    state.trials["0"].infeasible = True  # over the limit: the front chooses trial_001
    state.recheck.update(confirmed=True, baseline_led=False, configuration="trial_001", promoted="trial_001")
    assert _pareto_choice(opts, state, state.by_name("trial_001"), lines.append).name == "trial_001"


def test_structure_options_and_their_errors(data, tmp_path) -> None:
    from automl.cli import main
    from automl.options import SearchError

    spec = str(data / "spec.yaml")
    with pytest.raises(SearchError, match="deploy.precision options \\['int4'\\]"):
        search_options(tmp_path / "r", data / "spec.yaml", structure={"deploy.precision": ["int4"]})
    with pytest.raises(SearchError, match="structure parameter 'train.optim.lr'"):
        search_options(tmp_path / "r", data / "spec.yaml", structure={"train.optim.lr": [0.1]})
    with pytest.raises(SearchError, match="max_latency_ms must be"):
        search_options(tmp_path / "r", data / "spec.yaml", max_latency_ms=0)
    assert main(["run", "-e", spec, "--results-dir", str(tmp_path / "r"), "--pretrained", "mit_b1", "--dry-run"]) == 2


def test_dry_run_searches_the_structure_the_user_names(data, tmp_path, capsys) -> None:
    """The flags and TAO's route (automl_hyperparameters + custom_param_ranges valid_options +
    override_automl_disabled_params) both search structure; the spec's own value joins the options."""
    from automl.cli import main

    spec = str(data / "spec.yaml")
    assert main(["run", "-e", spec, "--results-dir", str(tmp_path / "a"), "--img-sizes", "64,96", "--precisions", "fp32,int8",
                 "--backbones", "mit_b1", "--dry-run", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "{32, 64, 96}" in out  # the spec's 32 first: the baseline is the spec
    assert "{mit_b0, mit_b1}" in out and "the most accurate of fp32, int8 within the limit" in out
    assert "searched although disabled (a structure searched on request)" in out
    settings = tmp_path / "settings.yaml"
    settings.write_text("automl_hyperparameters: [train.optim.lr, model.decode_head.decoder_params.embed_dim, deploy.precision]\n"
                        "override_automl_disabled_params: true\n"
                        "custom_param_ranges:\n"
                        "  model.decode_head.decoder_params.embed_dim: {valid_options: [32, 64]}\n"
                        "  deploy.precision: {valid_options: [fp32, int8]}\n")
    assert main(["run", "-e", spec, "--results-dir", str(tmp_path / "b"), "--settings", str(settings), "--dry-run", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "{32, 64}" in out and "the most accurate of fp32, int8 within the limit" in out
    # a searched backbone without its own weights, while the spec starts from weights of another
    weights = tmp_path / "mit_b0.pth"
    weights.write_bytes(b"0")
    assert main(["run", "-e", spec, "--results-dir", str(tmp_path / "c"), "--backbones", "mit_b1", "--dry-run", *SMALL,
                 f"model.backbone.pretrained_backbone_path={weights}"]) == 2
    assert "--pretrained BACKBONE=PATH" in capsys.readouterr().err
    # a whole model of the spec's backbone to start every trial from: no other backbone's trial could load it
    assert main(["run", "-e", spec, "--results-dir", str(tmp_path / "d"), "--backbones", "mit_b1", "--dry-run", *SMALL,
                 f"train.pretrained_model_path={weights}"]) == 2
    assert "a whole mit_b0 model, which cannot start mit_b1: clear train.pretrained_model_path" in capsys.readouterr().err


def test_trials_of_different_input_sizes_are_scored_on_masks_of_one_size(tmp_path) -> None:
    """With img_size searched, every trial, the baseline too, is validated (and evaluated) on masks
    of the largest size the search trains at (the spec's own 96 here, larger than the options):
    scored on masks shrunk to its own input, a 32 px trial matched easier targets than a 64 px
    one. Training masks stay at each trial's own input size; a spec's own score_size is kept."""
    from automl.runner import _plan
    from automl.skill import find_skill
    from automl.trial import base_config
    from segformer.config import apply_overrides
    from segformer.data import build_data
    from segformer.data.synth import generate

    root = generate(tmp_path / "data", num_classes=3, size=64, train=2, val=2, test=2)
    sized = (*SMALL, "dataset.segment.img_size=96")
    opts = search_options(tmp_path / "s", root / "spec.yaml", overrides=sized, structure={"dataset.segment.img_size": [32, 64]})
    opts, space, _, _ = _plan(opts, find_skill("segformer"))
    assert opts.overrides[-1] == "dataset.segment.score_size=96"
    assert "every trial is scored on masks at 96 px (dataset.segment.score_size)" in space.describe()
    shapes = {}
    for size in (32, 64):
        cfg = apply_overrides(base_config(str(root / "spec.yaml"), opts.overrides, tmp_path / "s"),
                              {"dataset.segment.img_size": size})
        data = build_data(cfg.dataset.segment, seed=0)
        val, train = next(iter(data.val_dataloader())), next(iter(data.train_dataloader()))
        shapes[size] = (val["image"].shape[-1], val["mask"].shape[-1], train["mask"].shape[-1])
    assert shapes == {32: (32, 96, 32), 64: (64, 96, 64)}
    own = search_options(tmp_path / "o", root / "spec.yaml", overrides=(*sized, "dataset.segment.score_size=48"),
                         structure={"dataset.segment.img_size": [32, 64]})
    assert _plan(own, find_skill("segformer"))[0].overrides == own.overrides
    plain = search_options(tmp_path / "p", root / "spec.yaml", overrides=sized)
    assert _plan(plain, find_skill("segformer"))[0].overrides == plain.overrides


def test_a_searched_backbone_brings_its_decoder_inputs(data, monkeypatch) -> None:
    """The spec's decode_head.in_channels are MiT-B0's; a trial on MiT-B1 gets B1's with it, so the
    trial, its latency measurement and the promoted spec build the model without a mismatch warning.
    A mismatch is said once per process, however often the model is built."""
    import warnings

    monkeypatch.setattr("segformer.model.segformer._WARNED", set())  # as in a fresh process

    from automl.deploy import trial_overrides
    from automl.options import SearchConfig
    from segformer.config import apply_overrides
    from segformer.model import build_segformer

    overrides = trial_overrides({"model.backbone.type": "mit_b1", "deploy.precision": "int8"}, SearchConfig())
    assert overrides == {"model.backbone.type": "mit_b1", "model.decode_head.in_channels": [64, 128, 320, 512],
                         "model.decode_head.feature_strides": [4, 8, 16, 32]}
    with pytest.warns(UserWarning, match=r"in_channels=\[32, 64, 160, 256\] differs from what backbone 'mit_b1' provides"):
        build_segformer(apply_overrides(_cfg(data), {"model.backbone.type": "mit_b1"}).model, 3, load_pretrained=False)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        build_segformer(apply_overrides(_cfg(data), {"model.backbone.type": "mit_b1"}).model, 3, load_pretrained=False)
    assert not [w for w in again if "differs from what backbone" in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_segformer(apply_overrides(_cfg(data), overrides).model, 3, load_pretrained=False)
    assert sum(p.numel() for p in model.parameters()) > 13_000_000  # MiT-B1 indeed


@pytest.mark.slow  # two small searches, about 3 min on 2 shared cores; CI runs it (make test)
def test_a_latency_limit_keeps_slow_models_out(data, tmp_path) -> None:
    """A grid over two input sizes with a limit between their measured latencies: the slow one is
    recorded with its latency, trains nothing and is never promoted; with a limit no model meets,
    nothing is promoted and the summary says so."""
    import automl
    from mlflow import MlflowClient

    from automl.console import format_table, summary

    # Measured into the search's own cache (the search reads it, so the limit falls between the very
    # numbers it compares; timing noise on a shared machine cannot move a model across it).
    results = tmp_path / "limit"
    cache = LatencyCache(results / "latency.json", Target(threads=1))
    fast = cache.lookup(_cfg(data, "dataset.segment.img_size=32"))["latency_ms"]
    slow = cache.lookup(_cfg(data, "dataset.segment.img_size=128"))["latency_ms"]
    assert slow > fast  # 16 times the pixels
    limit = (fast * slow) ** 0.5
    opts = search_options(results, data / "spec.yaml", overrides=SMALL, algorithm="grid", only=["dataset.segment.img_size"],
                          structure={"dataset.segment.img_size": [32, 128]}, max_latency_ms=limit, latency_threads=1,
                          objectives="val_miou:max,latency_ms:min", objective_weights=((1.0, 1.0), (1.0, 100.0)), num_cpus=2,
                          max_concurrent=1,  # one trial process to start (a Lightning import), not two
                          promote=False)  # the chosen trial, pareto.json and the report come without a promotion
    lines: list[str] = []
    state = automl.run(opts, echo=lines.append).state
    by_size = {t.params["dataset.segment.img_size"]: t for t in state.trials.values()}
    assert by_size[128].infeasible and by_size[128].epochs_trained == 0 and by_size[128].latency["latency_ms"] > limit
    assert not by_size[32].infeasible and by_size[32].epochs_trained == 1 and by_size[32].latency["latency_ms"] < limit
    assert state.best().name == by_size[32].name and [t.name for t in state.ranked()] == [by_size[32].name]
    assert "OVER LATENCY" in format_table(state) and "over the latency limit" in summary(state)
    assert any(line.startswith("automl: latency on onnxruntime, batch 1, 1 thread(s)") for line in lines)
    client = MlflowClient(state.mlflow_tracking_uri)
    run = client.get_run(by_size[128].mlflow_run_id)
    assert run.data.metrics["latency_ms"] == pytest.approx(by_size[128].latency["latency_ms"])
    assert run.data.tags["automl.infeasible"] == "true" and "val_miou" not in run.data.metrics
    assert run.data.tags["automl.epochs_trained"] == "0"  # as the state says (it said 1: its one report)
    assert client.get_run(by_size[32].mlflow_run_id).data.tags["automl.epochs_trained"] == "1"
    assert client.get_run(by_size[32].mlflow_run_id).data.metrics["gflops"] > 0
    # the front (of the feasible trials) decides the promotion; pareto.json, the plot and MLflow keep it
    pareto = json.loads((results / "pareto.json").read_text())
    assert pareto["chosen"] == by_size[32].name and [p["trial"] for p in pareto["points"]] == [by_size[32].name]
    assert "NVIDIA's weights" in pareto["rule"] and f"under the latency limit ({limit:g} ms)" in pareto["rule"]
    assert (results / "report" / "pareto.png").is_file()
    assert "Pareto front" in (results / "report" / "report.md").read_text()
    assert [a.path for a in client.list_artifacts(state.mlflow_parent_run_id, "search")].count("search/pareto.json") == 1
    # a limit no architecture meets: the search stops before any trial, naming the fastest (the two
    # measured above, handed over in its cache: measuring them again proves nothing more)
    import shutil

    from automl.options import SearchError

    (tmp_path / "none").mkdir()
    shutil.copy(results / "latency.json", tmp_path / "none" / "latency.json")
    opts = search_options(tmp_path / "none", data / "spec.yaml", overrides=SMALL, structure={"dataset.segment.img_size": [32, 128]},
                          max_latency_ms=fast / 1000, latency_threads=1, num_cpus=2)
    with pytest.raises(SearchError, match=r"no architecture the search may try meets --max-latency-ms .*the fastest, mit_b0 32x32"):
        automl.run(opts, echo=lines.append)
    assert not list((tmp_path / "none").glob("trial_*"))
    # measured by the trials (too many to measure first) and none feasible: nothing is promoted
    state.trials[by_size[32].trial_id].infeasible, state.best_trial = True, None
    assert "no trial meets the latency limit (" in summary(state)


def test_an_infeasible_baseline_gives_its_recheck_reserve_back(tmp_path) -> None:
    """No leader is re-checked against a spec that cannot be deployed: the reserve goes to the search."""
    from automl.budget import EpochBudget, search_share
    from automl.state import FINISHED, SearchState, TrialRecord

    budget = EpochBudget(trainings=6, spec_epochs=10, trial_epochs=10, recheck=20, first_rung=10, seed=0)
    state = SearchState(results_dir=str(tmp_path), skill="segformer", algorithm="bayesian", metric="val_miou", mode="max",
                        settings={}, baseline_params={})
    state.trials["0"] = TrialRecord(trial_id="0", name="trial_000", params={}, status=FINISHED, is_baseline=True)
    assert search_share(state, budget) == 40
    state.trials["0"].infeasible = True
    assert search_share(state, budget) == 60


def test_lower_precisions_without_a_limit_are_said_to_change_nothing(data, tmp_path) -> None:
    """Without a latency limit every model deploys at its most accurate precision: --precisions
    fp32,int8 alone puts no int8 model on the front, and the driver says so before any trial."""
    from automl.deploy import premeasure
    from automl.runner import _plan
    from automl.skill import find_skill

    opts = search_options(tmp_path / "p", data / "spec.yaml", overrides=SMALL, structure={"deploy.precision": ["fp32", "int8"]},
                          latency_threads=1)
    opts, space, baseline, _ = _plan(opts, find_skill("segformer"))
    lines: list[str] = []
    premeasure(opts, space, baseline, lines.append)
    assert any(line.startswith("automl: latency: --precisions fp32,int8 without a limit: every model deploys at fp32")
               for line in lines), lines


def test_a_relative_limit_is_a_share_of_the_specs_own_latency(data, tmp_path) -> None:
    """--max-latency-ratio: the spec's own model is measured first, and the limit is that share of it."""
    from automl.deploy import premeasure
    from automl.runner import _plan
    from automl.skill import find_skill

    opts = search_options(tmp_path / "r", data / "spec.yaml", overrides=SMALL, structure={"dataset.segment.img_size": [64]},
                          max_latency_ratio=1.5, latency_threads=1)
    opts, space, baseline, _ = _plan(opts, find_skill("segformer"))
    lines: list[str] = []
    resolved = premeasure(opts, space, baseline, lines.append)
    own = LatencyCache(tmp_path / "r" / "latency.json", Target(threads=1)).get(_cfg(data))["latency_ms"]
    assert resolved.search.max_latency_ratio is None and resolved.search.max_latency_ms == pytest.approx(1.5 * own, abs=1e-3)
    assert lines[0].startswith(f"automl: latency limit {resolved.search.max_latency_ms:g} ms: 1.5 x the spec's own model")
    assert sum(line.startswith("  mit_b0 ") for line in lines) == 2  # the spec's 32 px and the 64 px option


def test_the_specs_own_value_joins_custom_valid_options(data, tmp_path) -> None:
    """TAO's settings route: valid_options without the spec's own value was refused ("not among the
    searched options"); TAO trains no baseline and takes them. The value joins them, as the
    structural flags add it, and a note says so; with option_weights (one per option) it stays refused."""
    from automl.params import SpaceWarning
    from automl.runner import _plan
    from automl.skill import find_skill
    from automl.space import SpaceError

    ranges = {"dataset.segment.batch_size": {"valid_options": [2, 8]}}
    opts = search_options(tmp_path / "v", data / "spec.yaml", overrides=SMALL, max_trials=3, override_disabled=True,
                          include=("dataset.segment.batch_size",), param_ranges=ranges)
    with pytest.warns(SpaceWarning, match=r"dataset.segment.batch_size: the spec's 4 joins custom_param_ranges "
                                          r"valid_options \[2, 8\]: the first trial trains your spec as it is"):
        _, space, baseline, _ = _plan(opts, find_skill("segformer"))
    assert space["dataset.segment.batch_size"].choices == (4, 2, 8) and baseline["dataset.segment.batch_size"] == 4
    weighted = {"dataset.segment.batch_size": {"valid_options": [2, 8], "option_weights": [1, 1]}}
    with pytest.raises(SpaceError, match="value 4 is not among the searched options"):
        _plan(dataclasses.replace(opts, search=dataclasses.replace(opts.search, param_ranges=weighted)), find_skill("segformer"))


def test_trials_over_the_limit_do_not_use_up_the_trial_count(data, tmp_path) -> None:
    """Ray's trial count of a budgeted search leaves room for the trials over a latency limit, which
    train nothing (the deploy benchmark's search once ended with a third of its budget unspent)."""
    from automl.algorithms import build_search
    from automl.budget import infeasible_cap
    from automl.runner import _plan
    from automl.skill import find_skill

    counts = {}
    for name, limit in (("free", {}), ("limited", {"max_latency_ms": 5.0})):
        opts = search_options(tmp_path / name, data / "spec.yaml", overrides=SMALL, budget=3,
                              structure={"dataset.segment.img_size": [64]}, max_concurrent=2, **limit)
        opts, space, baseline, budget = _plan(opts, find_skill("segformer"))
        counts[name] = build_search(opts, space, baseline, budget).num_samples
    assert counts["limited"] == counts["free"] + infeasible_cap(budget) == counts["free"] + 9


def test_a_small_space_is_not_trained_twice(data, tmp_path) -> None:
    """Two input sizes and a budget of six trainings: TPE repeats itself in a space this small, and
    a repeat would train the same configuration with the same seed again. Each configuration trains
    once; the search then ends with the budget it did not need left unspent. (Latency is not measured:
    it is no part of this, and it costs an ONNX export per configuration.)"""
    import automl

    opts = search_options(tmp_path / "r", data / "spec.yaml", overrides=SMALL, budget=6, only=["dataset.segment.img_size"],
                          structure={"dataset.segment.img_size": [32, 64]}, latency=False, num_cpus=2, max_concurrent=1,
                          promote=False)  # one trial process to start, not two
    lines: list[str] = []
    state = automl.run(opts, echo=lines.append).state
    searched = [t for t in state.trials.values() if not t.recheck_of]
    assert sorted(t.params["dataset.segment.img_size"] for t in searched) == [32, 64]
    assert state.status == "FINISHED" and state.epochs_trained() < state.budget_epochs()
    # the summary, the report and MLflow say why budget is left, as for a trial count
    assert state.ended.startswith("the space is exhausted") and "2 configurations already tried" in state.ended
    assert state.ended.endswith("; the search ended with budget left") and "ended" not in state.budget
    summary = next(line for line in lines if line.startswith("automl: ") and " trials (" in line).splitlines()[0]
    assert summary.endswith("; " + state.ended), summary
    assert state.ended in (Path(state.results_dir) / "report" / "report.md").read_text()
    import mlflow

    parent = mlflow.MlflowClient(state.mlflow_tracking_uri).get_run(state.mlflow_parent_run_id)
    assert parent.data.tags["automl.ended"] == state.ended
    # a ledger written before the reason had one place reads it there
    path = Path(state.results_dir) / "automl_state.json"
    data = json.loads(path.read_text())
    data["budget"]["ended"], data["ended"] = "the space is exhausted: old", None
    path.write_text(json.dumps(data))
    assert automl.SearchState.load(state.results_dir).ended == "the space is exhausted: old; the search ended with budget left"


def test_the_dry_run_of_a_small_space_shows_only_distinct_trials_and_says_it_is_small(data, tmp_path) -> None:
    """The preview listed the sampler's repeats (trial_002 and trial_003 with the baseline's values) that
    the search never trains, and said nothing of a space smaller than the trial count."""
    import automl

    opts = search_options(tmp_path / "n", data / "spec.yaml", overrides=SMALL, max_trials=5, max_epochs=1,
                          only=["dataset.segment.img_size"], structure={"dataset.segment.img_size": [32, 64]},
                          latency=False, num_cpus=2, export=False, quantize=False, trt=False)
    lines: list[str] = []
    automl.run(opts, echo=lines.append, dry_run=True)
    text = "\n".join(lines)
    assert "trial_001: dataset.segment.img_size=64" in text and "trial_002" not in text, text
    assert ("note: the space holds 2 configurations (the baseline's among them) and the search asks for 5: it ends once "
            "each has trained (no configuration trains twice)") in text, text


def test_a_small_space_is_not_trained_twice_under_a_trial_count(data, tmp_path) -> None:
    """The same under --max-trials (TAO's automl_max_recommendations) instead of an epoch budget: two
    configurations train once each, and the search ends before its five trials, saying why."""
    import automl

    opts = search_options(tmp_path / "n", data / "spec.yaml", overrides=SMALL, max_trials=5, max_epochs=1,
                          only=["dataset.segment.img_size"], structure={"dataset.segment.img_size": [32, 64]},
                          latency=False, num_cpus=2, max_concurrent=1, promote=False)
    lines: list[str] = []
    state = automl.run(opts, echo=lines.append).state
    assert state.budget is None and state.status == "FINISHED"
    assert sorted(t.params["dataset.segment.img_size"] for t in state.trials.values()) == [32, 64], lines
    assert any("the space is exhausted" in line and "ended before its trial count" in line for line in lines), lines
    # ... and said where a user looks later: the state (automl status, the summary), the report and MLflow
    assert state.ended.startswith("the space is exhausted") and "2 configurations already tried" in state.ended
    summary = next(line for line in lines if line.startswith("automl: 2 trials (")).splitlines()[0]
    assert summary.endswith("; " + state.ended), summary
    assert state.ended in (Path(state.results_dir) / "report" / "report.md").read_text()
    import mlflow

    parent = mlflow.MlflowClient(state.mlflow_tracking_uri).get_run(state.mlflow_parent_run_id)
    assert parent.data.tags["automl.ended"] == state.ended
