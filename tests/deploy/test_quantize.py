"""Quantization backends and artifacts, and ONNX Runtime evaluation parity with PyTorch."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploy_helpers import NUM_CLASSES, SIZE
from segformer.deploy.quantize.patterns import parse_layer_rules, select_names


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _correlation(cfg, float_onnx, int8_onnx) -> float:
    """Correlation of the two ONNX models' logits on the dataset's validation images (the int8 model
    is calibrated on dataset images: compare on such images)."""
    from segformer.data import iter_calibration_batches
    from segformer.deploy.runtime import OnnxPredictor

    aug = cfg.dataset.segment.augmentation
    images = next(iter_calibration_batches(f"{cfg.dataset.segment.root_dir}/images/val", SIZE, aug.mean, aug.std, 4))
    ref = OnnxPredictor(float_onnx, providers=["CPUExecutionProvider"])(images).numpy().ravel()
    got = OnnxPredictor(int8_onnx, providers=["CPUExecutionProvider"])(images).numpy().ravel()
    return float(np.corrcoef(ref, got)[0, 1])


def test_layer_rules_and_skip_names():
    candidates = [("backbone.a.q", "Linear"), ("backbone.a.sr", "Conv2d"), ("decode_head.fuse", "Conv2d")]
    assert select_names(candidates, [], ["decode_head*"]) == ["backbone.a.q", "backbone.a.sr"]
    assert select_names(candidates, [], ["Conv2d"]) == ["backbone.a.q"]  # class names match too
    rules = parse_layer_rules([{"module_name": "backbone.*", "weights": {"dtype": "int8"}}])
    assert select_names(candidates, rules, []) == ["backbone.a.q", "backbone.a.sr"]
    with pytest.raises(ValueError, match="fp8"):
        parse_layer_rules([{"module_name": "*", "weights": {"dtype": "fp8_e4m3fn"}}])


def test_onnxruntime_qdq_action(exported, make_deploy_cfg, tmp_path):
    from segformer.actions import quantize

    _, result = exported
    cfg = make_deploy_cfg(tmp_path, "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                          f"quantize.model_path={result.onnx_file}", "quantize.skip_names=[/decode_head/*]")
    out = quantize.run(cfg, quiet=True)
    assert not [p.name for p in out.artifact.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    model = onnx.load(str(out.artifact))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    from segformer.engine.predictor import _quantized_onnx

    assert _quantized_onnx(out.artifact) and not _quantized_onnx(Path(result.onnx_file))
    assert "Gelu" in ops and "Erf" not in ops  # the Mix-FFN's GELU fused before quantizing (fuse_erf_gelu)
    # skip_names honoured: no quantized weight feeds a decode_head node
    assert not any(n.name.startswith("/decode_head/") and n.op_type == "DequantizeLinear" for n in model.graph.node
                   if "weight" in "".join(n.input))
    assert _correlation(cfg, result.onnx_file, out.artifact) > 0.95
    report = json.loads(out.report_file.read_text())
    assert report["float_miou"] is not None and report["quantized_miou"] is not None
    assert report["quantized_bytes"] < report["float_bytes"]


def test_an_onnx_of_fixed_batch_size_is_calibrated_in_its_batch_size(make_deploy_cfg, checkpoint, tmp_path, capsys):
    """An ONNX exported with export.batch_size=1 takes batches of one image only; calibration fed it
    batches of 4 and ONNX Runtime ended in a traceback. It now calibrates on the same images one at
    a time, says so, and drops a last partial batch for a fixed batch size above 1."""
    from segformer.actions import export, quantize

    for size in (1, 3):
        fixed = export.run(make_deploy_cfg(tmp_path / f"export{size}", f"export.checkpoint={checkpoint}",
                                           f"export.batch_size={size}"), quiet=True)
        cfg = make_deploy_cfg(tmp_path / f"q{size}", "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                              f"quantize.model_path={fixed.onnx_file}",
                              "quantize.backend_kwargs={calibration_batch_size: 4, calibration_batches: 2}",
                              *(["dataset.segment.quant_calibration_dataset.images_dir=null"] if size == 1 else []))
        out = quantize.run(cfg)
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out.artifact)).graph.node}
        err = capsys.readouterr().err
        assert f"takes batches of {size} image" in err and f"calibrating in batches of {size}" in err, err
        # with no calibration folder in the spec: said before calibrating (a warning inside the quantizer was lost)
        assert ("quant_calibration_dataset.images_dir is not set: calibrating on the train split" in err) == (size == 1)
        calibrated = json.loads(out.report_file.read_text())["calibration_images"]
        assert Path(calibrated) == Path(cfg.dataset.segment.root_dir) / "images" / "train"


def test_onnx_runtimes_quantizer_leaves_the_logging_setup_alone(exported, tmp_path, capsys):
    """ONNX Runtime's quantizer logs through the root logger, which made Python configure it: every
    later warning of the process printed as "WARNING:segformer...:" (seen in a deploy-aware search,
    which quantizes to time int8). The root logger stays without a handler, as the CLIs leave it,
    and a warning of ours while calibrating (read from the images inside the quantizer) is printed,
    as without the quantizer: it was dropped."""
    import logging

    from segformer.deploy.onnx_export import export_onnx
    from segformer.deploy.quantize.ort_static import quantize_onnx_static
    from segformer.model import build_segformer

    cfg, _ = exported
    # as the search times int8: a fresh model (its zero biases shared by several nodes, which ONNX
    # Runtime's quantizer copies and logs), batch 1
    torch.manual_seed(0)
    model = build_segformer(cfg.model, 3, load_pretrained=False).eval()
    onnx_file = export_onnx(model, tmp_path / "model.onnx", input_channel=3, input_height=32, input_width=32, batch_size=1)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a command-line process (pytest adds its own capture handlers)
    try:
        def batches():
            logging.getLogger("segformer.data").warning("calibration image x.png is odd")
            for _ in range(2):
                yield np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)

        capsys.readouterr()
        quantize_onnx_static(onnx_file, tmp_path / "int8.onnx", batches())
        assert root.handlers == []
        err = capsys.readouterr().err
        assert "calibration image x.png is odd" in err
        assert "INFO" not in err and "WARNING:" not in err, err  # nothing of ONNX Runtime's root records
    finally:
        root.handlers[:] = saved


def test_fuse_gelu_on_an_export_keeps_its_outputs(exported, tmp_path):
    """The exporter writes GELU at opset 17 as Div, Erf, Add, Mul, Mul; fuse_erf_gelu makes each one
    standard Gelu node (opset 20) and the model computes the same."""
    from segformer.deploy.quantize.ort_static import fuse_erf_gelu
    from segformer.deploy.runtime import OnnxPredictor

    _, result = exported
    model = onnx.load(str(result.onnx_file))
    erfs = sum(n.op_type == "Erf" for n in model.graph.node)
    assert erfs > 0 and model.opset_import[0].version < 20
    assert fuse_erf_gelu(model) == erfs
    assert sum(n.op_type == "Gelu" for n in model.graph.node) == erfs
    assert not {"Erf", "Div"} & {n.op_type for n in model.graph.node}
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 20
    fused = tmp_path / "fused.onnx"
    onnx.save(model, str(fused))
    images = torch.randn(2, 3, SIZE, SIZE)
    ref = OnnxPredictor(result.onnx_file, providers=["CPUExecutionProvider"])(images).numpy()
    got = OnnxPredictor(fused, providers=["CPUExecutionProvider"])(images).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert fuse_erf_gelu(model) == 0  # nothing left to fuse


def test_branch_adds_are_the_decode_heads_sums(exported):
    """The Adds that sum the decode head's Conv branches are candidates (MiT-B0 512px on an Intel Xeon:
    int8 1.34x -> 1.55x the speed of fp32 at batch 1, with the ReLU), the backbone's residual Adds never are."""
    from segformer.deploy.quantize.ort_static import onnx_quant_candidates

    _, result = exported
    model = onnx.load(str(result.onnx_file))
    chosen = onnx_quant_candidates(model, branch_adds=True)[0]
    adds = [name for name, kind in chosen if kind == "Add"]
    resized = sum(n.op_type == "Resize" for n in model.graph.node)  # the branches of stages 2..4
    assert len(adds) == resized and all(name.startswith("/decode_head/") for name in adds), adds
    assert [kind for _, kind in chosen if kind == "Relu"] == ["Relu"]  # the one after the sum, folded into it
    assert not [kind for _, kind in onnx_quant_candidates(model)[0] if kind in ("Add", "Relu")]  # off by default (modelopt.onnx)


def test_skipping_a_branch_keeps_the_sums_it_reaches_in_float(exported):
    """A skip list naming one decode-head branch's Conv leaves out every sum that reads it, directly
    or through an earlier sum (and the Relu after them); the other branches are summed in int8."""
    from segformer.deploy.quantize.ort_static import onnx_quant_candidates

    _, result = exported
    candidates, aliases = onnx_quant_candidates(onnx.load(str(result.onnx_file)), branch_adds=True)
    names = [name for name, _ in candidates]
    sums = [name for name, kind in candidates if kind in ("Add", "Relu")]
    branches = [name for name, kind in candidates if kind == "Conv" and name.startswith("/decode_head/")
                and names.index(name) < names.index(sums[-1])]
    assert len(branches) == len(sums) and len(sums) >= 3, (branches, sums)  # one Conv per stage, Adds and the Relu

    def left_out(skip):
        return [name for name in names if name not in select_names(candidates, [], skip, aliases=aliases)]

    assert left_out([branches[0]]) == [branches[0], *sums]  # the first sum reads it, and every later sum reads that one
    assert left_out([branches[-1]]) == [branches[-1], *sums[-2:]]  # the last branch: its sum and the Relu
    assert left_out(["backbone.stages.0.*"]) and not set(left_out(["backbone.stages.0.*"])) & set(sums)


def test_skipping_every_weighted_node_is_refused_even_with_the_sums_left(exported, tmp_path):
    from segformer.deploy.quantize.ort_static import quantize_onnx_static

    _, result = exported
    with pytest.raises(ValueError, match="exclude every Conv/MatMul/Gemm node"):
        quantize_onnx_static(result.onnx_file, tmp_path / "int8.onnx", iter(()), skip_names=["Conv", "MatMul", "Gemm"])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_entropy_is_refused_by_onnx_runtime_whose_entropy_is_minmax(exported, tmp_path):
    """ONNX Runtime's quantize_static calibrates "entropy" with 128 bins into 128: the full range, so it
    wrote minmax's model byte for byte under another name. It is refused, saying so."""
    from segformer.deploy.quantize.ort_static import quantize_onnx_static
    from segformer.errors import SpecError

    _, result = exported
    with pytest.raises(SpecError, match="not supported by the onnxruntime backend; use minmax .its entropy"):
        quantize_onnx_static(result.onnx_file, tmp_path / "int8.onnx", iter(()), algorithm="entropy")
    assert not (tmp_path / "int8.onnx").exists()


def test_a_model_without_weighted_nodes_is_not_blamed_on_the_spec(tmp_path):
    """With no layers or skip_names set, a model without a Conv/MatMul/Gemm node said the spec's
    layers/skip_names excluded every node; it is the model that has none."""
    from onnx import TensorProto, helper

    from segformer.deploy.quantize.ort_static import quantize_onnx_static
    from segformer.errors import SpecError

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "relu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(Exception, match="the model has no Conv/MatMul/Gemm node to quantize") as err:
        quantize_onnx_static(path, tmp_path / "int8.onnx", iter(()))
    assert not isinstance(err.value, SpecError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx"]


def _erf_graph(scale_op: str, scale: float, half_first: bool, times: str = "x", also_output: str | None = None,
               one_dims: tuple[int, ...] = ()):
    """y = x * 0.5 * (1 + erf(x scaled)) as exporters write GELU, or a near miss: `times` another
    input than x, an intermediate `also_output` read outside, a constant 1 of shape `one_dims`."""
    from onnx import TensorProto, helper

    consts = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
              helper.make_tensor("one", TensorProto.FLOAT, list(one_dims), [1.0])]
    nodes = [helper.make_node(scale_op, ["x", "s"], ["t"]), helper.make_node("Erf", ["t"], ["e"]),
             helper.make_node("Add", ["one", "e"], ["a"])]
    if half_first:
        nodes += [helper.make_node("Mul", ["half", "a"], ["h"]), helper.make_node("Mul", [times, "h"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["a", times], ["h"]), helper.make_node("Mul", ["h", "half"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in sorted({"x", times})]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", *([also_output] if also_output else []))]
    graph = helper.make_graph(nodes, "g", inputs, outputs, consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("scale_op, scale, half_first, near_miss, fused", [
    ("Div", 2 ** 0.5, True, {}, 1), ("Mul", 2 ** -0.5, False, {}, 1),
    # not GELU, or not only GELU: left alone, opset unchanged
    ("Div", 2.0, True, {}, 0),
    ("Div", 2 ** 0.5, True, {"times": "z"}, 0),  # the last product takes another tensor than x
    ("Div", 2 ** 0.5, False, {"also_output": "a"}, 0),  # 1 + erf is read outside the GELU
    ("Div", 2 ** 0.5, True, {"one_dims": (1, 1)}, 0),  # a [1, 1] one raises the output's rank
])
def test_fuse_gelu_patterns(scale_op, scale, half_first, near_miss, fused):
    import onnxruntime as ort

    from segformer.deploy.quantize.ort_static import fuse_erf_gelu

    model = _erf_graph(scale_op, scale, half_first, **near_miss)
    feed = {i.name: np.array([-3.0, -0.5, 0.25, 2.0], dtype=np.float32) * (2 if i.name == "z" else 1) for i in model.graph.input}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    assert fuse_erf_gelu(model) == fused
    assert [n.op_type for n in model.graph.node] == (["Gelu"] if fused else [scale_op, "Erf", "Add", "Mul", "Mul"])
    assert model.opset_import[0].version == (20 if fused else 17)
    assert not fused or not model.graph.initializer  # the fused constants are gone (ONNX Runtime warns of each)
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(after, before):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_onnxruntime_refuses_backend_kwargs_it_does_not_take(exported, make_deploy_cfg, tmp_path):
    """A backend_kwargs key ONNX Runtime's quantizer has no use for (torchao's group_size here) is
    one message naming it and what the backend takes, before anything is written."""
    from segformer.actions import quantize
    from segformer.errors import SegformerError

    _, result = exported
    cfg = make_deploy_cfg(tmp_path, "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                          f"quantize.model_path={result.onnx_file}", "quantize.backend_kwargs={group_size: 64, per_channel: false}")
    with pytest.raises(SegformerError, match=r"quantize.backend_kwargs group_size: backend onnxruntime takes only "
                                             r"per_channel, fuse_gelu, symmetric, calibration_batch_size, calibration_batches; remove the others"):
        quantize.run(cfg, quiet=True)
    assert not (tmp_path / "quantize").exists() and not list(tmp_path.rglob("quantize_report.json"))


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_a_bad_calibration_folder_is_said_before_the_checkpoint_is_exported(checkpoint, make_deploy_cfg, tmp_path,
                                                                            caplog, problem):
    """A .pth model_path is exported before calibration; a missing folder or an image that cannot be
    read among those calibration will use is one error naming it and the key, before the export."""
    from segformer.actions import quantize
    from segformer.errors import DataError

    folder = tmp_path / "calibration"
    if problem == "corrupt":
        folder.mkdir()
        (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cfg = make_deploy_cfg(tmp_path / "r", "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                          f"quantize.model_path={checkpoint}", f"dataset.segment.quant_calibration_dataset.images_dir={folder}")
    caplog.set_level("INFO", logger="segformer")
    with pytest.raises(DataError) as caught:
        quantize.run(cfg, quiet=True)
    message = str(caught.value)
    assert (f"calibration folder {folder} does not exist" if problem == "missing"
            else f"cannot read calibration image {folder / 'a.png'}") in message, message
    assert "(dataset.segment.quant_calibration_dataset.images_dir: point it at a folder" in message
    assert not [r for r in caplog.records if "to ONNX" in r.getMessage()]  # the export never started
    assert not list((tmp_path / "r").rglob("*.onnx"))


def test_onnxruntime_qdq_from_a_checkpoint(checkpoint, make_deploy_cfg, tmp_path):
    """A .pth model_path is exported to float ONNX first, then quantized (what promotion does)."""
    import onnx

    from segformer.actions import quantize

    cfg = make_deploy_cfg(tmp_path, "quantize.backend=onnxruntime", "quantize.mode=static_ptq",
                          f"quantize.model_path={checkpoint}", "quantize.backend_kwargs={fuse_gelu: false}")
    out = quantize.run(cfg, quiet=True)
    model = onnx.load(str(out.artifact))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "Erf" in ops and "Gelu" not in ops  # backend_kwargs fuse_gelu: false keeps the exported GELU
    # The attention stays in float: no Q/DQ around a Softmax (ONNX Runtime would fuse them into its slow
    # QLinearSoftmax) and no quantized product of two activations; every weight MatMul is quantized.
    produced = {o: n for n in model.graph.node for o in n.output}
    weights = {i.name for i in model.graph.initializer}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "Softmax":
            assert node.input[0] not in dequantized, node.name
        if node.op_type == "MatMul":
            b = produced.get(node.input[1])
            from_weight = b is not None and b.op_type == "DequantizeLinear" and b.input[0] in weights
            assert from_weight or node.input[1] not in dequantized, node.name
    assert any(n.op_type == "MatMul" and n.input[1] in dequantized for n in model.graph.node)
    # the decode head's branch sums add dequantized branches (QLinearAdd in ONNX Runtime); the
    # model still computes what the float one does
    sums = [n for n in model.graph.node if n.op_type == "Add" and n.name.startswith("/decode_head/")]
    assert sums and all(set(n.input) <= dequantized for n in sums)
    assert (out.results_dir / "float_model.onnx").is_file()
    assert out.quantized_bytes < out.float_bytes
    assert _correlation(cfg, out.results_dir / "float_model.onnx", out.artifact) > 0.95


def test_ort_evaluation_matches_pytorch(exported, checkpoint, make_deploy_cfg, tmp_path, caplog):
    import logging

    from segformer.actions import evaluate

    _, result = exported
    torch_scores = evaluate.run(make_deploy_cfg(tmp_path / "pt", f"evaluate.checkpoint={checkpoint}"), quiet=True)
    ort_scores = evaluate.run(make_deploy_cfg(tmp_path / "ort", f"evaluate.checkpoint={result.onnx_file}"), quiet=True)
    assert abs(torch_scores.miou - ort_scores.miou) * 100 < 0.1
    # a deploy template filled with export's output: the ONNX model as trt_engine runs on ONNX Runtime (it was
    # a message to install TensorRT), and a size other than the export's is said
    with caplog.at_level(logging.WARNING):
        as_engine = evaluate.run(make_deploy_cfg(tmp_path / "engine", f"evaluate.trt_engine={result.onnx_file}",
                                                 "dataset.segment.img_size=32"), quiet=True)
    assert "is an ONNX model, not a TensorRT engine: running it with ONNX Runtime" in caplog.text
    assert (f"{Path(result.onnx_file).name} takes 64x64 inputs (fixed when it was exported): images are resized to "
            "that for it, not to dataset.segment.img_size 32, and its predictions back") in caplog.text
    assert "scores are at the exported size" not in caplog.text  # they are not: masks are scored at img_size
    assert as_engine.miou >= 0
    # is_quantized with the float ONNX ran the float model without a word (the .pth was refused)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        evaluate.run(make_deploy_cfg(tmp_path / "q", f"evaluate.checkpoint={result.onnx_file}", "evaluate.is_quantized=true"),
                     quiet=True)
    assert "evaluate.is_quantized is true but" in caplog.text and "holds no quantized operator" in caplog.text


@pytest.mark.skipif(not _has("torchao"), reason="torchao is not installed (pip install 'segformer-automl[quant]')")
def test_torchao_artifact_reloads(checkpoint, make_deploy_cfg, tmp_path):
    from segformer.actions import quantize
    from segformer.deploy.runtime import load_quantized_predictor

    cfg = make_deploy_cfg(tmp_path, "quantize.backend=torchao", "quantize.mode=weight_only_ptq",
                          f"quantize.model_path={checkpoint}", "quantize.device=cpu")
    out = quantize.run(cfg, quiet=True)
    assert out.artifact.name == "quantized_model_torchao.pth"
    payload = torch.load(out.artifact, weights_only=False)
    assert "model_state_dict" in payload
    predictor = load_quantized_predictor(out.artifact, cfg.model, NUM_CLASSES, "cpu")
    assert predictor(torch.randn(1, 3, SIZE, SIZE)).shape == (1, NUM_CLASSES, SIZE // 4, SIZE // 4)


@pytest.mark.skipif(not _has("modelopt"), reason="nvidia-modelopt is not installed (pip install 'segformer-automl[quant]')")
def test_modelopt_pytorch_artifact_reloads(checkpoint, make_deploy_cfg, tmp_path):
    from segformer.deploy.quantize.artifacts import load_quantized_model, save_quantized_model
    from segformer.deploy.quantize.torch_backends import quantize_modelopt
    from segformer.engine.predictor import load_torch_model

    cfg = make_deploy_cfg(tmp_path)
    model = load_torch_model(cfg.model, NUM_CLASSES, checkpoint)
    images = torch.randn(2, 3, SIZE, SIZE)
    quantized, names = quantize_modelopt(model, lambda m: m(images), algorithm="minmax", skip_names=["decode_head*"])
    assert names and not any(n.startswith("decode_head") for n in names)
    path = save_quantized_model(tmp_path / "quantized_model_modelopt.pth", quantized, backend="modelopt.pytorch",
                                quantized_modules=names)
    reloaded = load_quantized_model(path, cfg.model, NUM_CLASSES)
    with torch.no_grad():
        assert torch.allclose(reloaded(images), quantized(images), atol=1e-5)


def test_missing_backend_message_names_the_extra(monkeypatch):
    import builtins

    from segformer.deploy.quantize.torch_backends import apply_torchao
    from segformer.errors import MissingDependencyError

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    monkeypatch.setattr("importlib.import_module", lambda name: no_torchao(name))
    with pytest.raises(MissingDependencyError, match=r"segformer-automl\[quant\]"):
        apply_torchao(torch.nn.Linear(2, 2), ["x"])


# TAO's quantize section as its spec templates ship it (`segformer.config.QuantizeConfig` defaults).
TAO_DEFAULT_QUANTIZE = {"backend": "torchao", "mode": "weight_only_ptq", "algorithm": "minmax", "layers": [],
                        "skip_names": [], "backend_kwargs": {}, "device": "cuda"}


def _quantize_without_torchao(deploy_dataset, tmp_path, quantize: dict, *overrides: str):
    """``segformer quantize`` in a subprocess where torchao cannot be imported: (the finished
    process, its results folder).

    torchao is kept out of the subprocess for real whether or not it is installed here: a
    sitecustomize on its PYTHONPATH puts None in sys.modules["torchao"], Python's own way of making
    an import fail (ModuleNotFoundError), before any of our code runs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    shim = tmp_path / "no_torchao"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['torchao'] = None  # import torchao fails\n")
    spec = yaml.safe_load((deploy_dataset / "spec.yaml").read_text())
    spec["quantize"] = quantize
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(repo)]), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "segformer.cli", "quantize", "-e", str(spec_file),
                          f"results_dir={results}", f"dataset.segment.root_dir={deploy_dataset}",
                          "model.decode_head.decoder_params.embed_dim=32", "dataset.segment.workers=0", *overrides],
                         capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return out, results


FALLBACK_LINE = ("segformer quantize: quantize.backend torchao is not installed "
                 "(pip install 'segformer-automl[quant]'); quantizing with onnxruntime instead, in mode static_ptq "
                 "(int8 weights and activations, minmax calibration), not weight_only_ptq")


def test_fallback_drops_torchao_kwargs_and_takes_the_export_folder(deploy_dataset, exported, tmp_path):
    """`segformer quantize` without torchao, a spec written for it (TAO's default section, backend
    torchao): one line says so; its torchao backend_kwargs are dropped (ONNX Runtime would fail on
    them) and the note names them; an export folder as quantize.model_path gives its ONNX model, as
    for the onnxruntime backend that runs (no second export); an int8 ONNX model comes out that ONNX
    Runtime runs. (A checkpoint as model_path, exported first: test_onnxruntime_qdq_from_a_checkpoint.)"""
    import onnxruntime as ort

    _, result = exported
    folder = result.onnx_file.parent
    quantize = {**TAO_DEFAULT_QUANTIZE, "backend_kwargs": {"group_size": 64, "calibration_batches": 1}}
    out, results = _quantize_without_torchao(deploy_dataset, tmp_path, quantize, f"quantize.model_path={folder}")
    note = (f"{FALLBACK_LINE}; dropped quantize.backend_kwargs group_size (onnxruntime takes per_channel, "
            "fuse_gelu, symmetric, calibration_batch_size, calibration_batches)")
    assert out.stderr.count(note) == 1, out.stderr[-3000:]
    assert f"quantize.model_path: {folder} is an export results folder; using {result.onnx_file} " in out.stdout
    report = json.loads((results / "quantize" / "quantize_report.json").read_text())
    assert report["backend"] == "onnxruntime" and f"segformer quantize: {report['note']}" == note
    assert report["float_model"] == str(result.onnx_file) and report["quantized"] > 0
    assert not (results / "quantize" / "float_model.onnx").exists()
    artifact = results / "quantize" / "quantized_model_onnxruntime.onnx"
    assert report["requested_backend"] == "torchao" and report["mode"] == "static_ptq"
    assert report["artifact"] == str(artifact) and report["quantized_bytes"] < report["float_bytes"]
    model = onnx.load(str(artifact))
    onnx.checker.check_model(model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]  # int8 weights, not only fake-quant nodes
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    [logits] = session.run(["output"], {"input": np.random.default_rng(0).standard_normal(
        (2, 3, SIZE, SIZE)).astype(np.float32)})
    assert logits.shape[:2] == (2, NUM_CLASSES) and np.isfinite(logits).all()
