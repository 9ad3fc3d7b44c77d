"""TensorRT profile, precision and calibrator logic, with a fake of the few tensorrt names used.

TensorRT cannot be installed on the CPU machines; the fake stands in for it only. The
``gpu`` test builds and runs a real engine where TensorRT and a GPU exist.
"""

from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest

from deploy_helpers import SIZE
from segformer.deploy.onnx_signature import calibrate_at_static_batch
from segformer.deploy.trt import (
    BatchProfile,
    CalibrationFeeder,
    make_entropy_calibrator,
    parse_layers_precision,
    plan_precision,
    resolve_batch_profile,
)
from segformer.errors import MissingDependencyError, SegformerError


@pytest.mark.parametrize(
    "onnx_batch, kwargs, expected",
    [
        ("batch", dict(batch_size=-1, min_batch_size=1, opt_batch_size=4, max_batch_size=8), BatchProfile(1, 4, 8)),
        ("batch", dict(batch_size=2), BatchProfile(2, 2, 2)),
        (4, dict(batch_size=-1, min_batch_size=4, opt_batch_size=4, max_batch_size=4), BatchProfile(4, 4, 4)),
        (4, dict(batch_size=4, min_batch_size=1, opt_batch_size=1, max_batch_size=1), BatchProfile(4, 4, 4)),
    ],
)
def test_batch_profile(onnx_batch, kwargs, expected):
    assert resolve_batch_profile(onnx_batch, **kwargs) == expected


@pytest.mark.parametrize(
    "onnx_batch, kwargs, message",
    [
        ("batch", dict(min_batch_size=4, opt_batch_size=2, max_batch_size=8), "min_batch_size <= opt_batch_size"),
        ("batch", dict(batch_size=0), "must be -1"),
        (1, dict(batch_size=8), "static batch of 1"),
        (1, dict(min_batch_size=1, opt_batch_size=1, max_batch_size=8), "set all three to 1"),
    ],
)
def test_batch_profile_errors(onnx_batch, kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_batch_profile(onnx_batch, **kwargs)


def test_precision_plans():
    assert plan_precision("fp32", onnx_has_qdq=False, has_calibration_source=False).flags == ()
    assert plan_precision("fp16", onnx_has_qdq=False, has_calibration_source=False).flags == ("FP16",)
    qdq = plan_precision("int8", onnx_has_qdq=True, has_calibration_source=False)
    assert qdq.flags == ("FP16", "INT8") and not qdq.needs_calibrator
    calibrated = plan_precision("int8", onnx_has_qdq=False, has_calibration_source=True)
    assert calibrated.needs_calibrator
    with pytest.raises(ValueError, match="cal_image_dir"):
        plan_precision("int8", onnx_has_qdq=False, has_calibration_source=False)
    with pytest.raises(ValueError, match="data_type"):
        plan_precision("bf8", onnx_has_qdq=False, has_calibration_source=False)


def test_layers_precision_parsing():
    assert parse_layers_precision(["/decode_head/*:fp32", "a:b:fp16"]) == [("/decode_head/*", "fp32"), ("a:b", "fp16")]
    with pytest.raises(ValueError, match="layers_precision"):
        parse_layers_precision(["conv1"])


def test_calibration_feeder_batches_and_cache(tmp_path):
    cache = tmp_path / "cal.bin"
    batches = [np.zeros((2, 3, 8, 8), np.float32)] * 3 + [np.zeros((1, 3, 8, 8), np.float32)]
    copied = []
    feeder = CalibrationFeeder(batches, batch_size=2, max_batches=2, cache_file=cache,
                               to_device=lambda b: (copied.append(b.shape) or b, 1234))
    assert feeder.read_calibration_cache() is None
    assert feeder.get_batch(["input"]) == [1234] and feeder.get_batch(["input"]) == [1234]
    assert feeder.get_batch(["input"]) is None  # cal_batches reached
    feeder.write_calibration_cache(b"scales")
    assert cache.read_bytes() == b"scales" and feeder.read_calibration_cache() == b"scales"
    short = CalibrationFeeder(batches[3:], batch_size=2, max_batches=5, cache_file=None, to_device=lambda b: (b, 1))
    assert short.get_batch(["input"]) is None  # a short batch is dropped, not fed


@pytest.mark.parametrize(
    "static_batch, asked, expected",
    [
        (None, (4, 10), (4, 10)),  # a dynamic batch takes the spec's calibration batches
        (4, (4, 10), (4, 10)),
        (1, (4, 10), (1, 40)),  # the same 40 images, one at a time
        (3, (4, 10), (3, 14)),  # rounded up to whole batches
        (2, (4, -1), (2, -1)),  # the whole folder stays the whole folder
    ],
)
def test_a_static_batch_model_is_calibrated_in_its_batch(static_batch, asked, expected):
    """gen_trt_engine (and quantize) on an ONNX exported with export.batch_size: TensorRT can only
    calibrate at the network's static batch, so cal_batch_size gives way to it, and says so."""
    batch, batches, note = calibrate_at_static_batch("m.onnx", static_batch, *asked)
    assert (batch, batches) == expected
    assert (note is None) == (expected == asked)
    if note:
        assert note.startswith("m.onnx takes batches of") and f"export.batch_size={static_batch}" in note
        if asked[1] > 0:  # a count the folder may not hold (16 images read '32 images'): an upper bound
            assert note.endswith(f"on the same images (up to {asked[0] * asked[1]}, as many as the folder holds)"), note


def test_entropy_calibrator_subclasses_tensorrt_base():
    class FakeBase:  # stands in for tensorrt.IInt8EntropyCalibrator2
        def __init__(self):
            self.base_initialised = True

    fake_trt = types.SimpleNamespace(IInt8EntropyCalibrator2=FakeBase)
    feeder = CalibrationFeeder([np.ones((1, 3, 4, 4), np.float32)], batch_size=1, max_batches=1,
                               cache_file=None, to_device=lambda b: (b, 99))
    calibrator = make_entropy_calibrator(fake_trt, feeder)
    assert isinstance(calibrator, FakeBase) and calibrator.base_initialised
    assert calibrator.get_batch_size() == 1
    assert calibrator.get_batch(["input"]) == [99] and calibrator.get_batch(["input"]) is None
    assert calibrator.read_calibration_cache() is None


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_gen_trt_engine_without_tensorrt_says_what_to_install(make_deploy_cfg, tmp_path):
    from segformer.actions import gen_trt_engine

    cfg = make_deploy_cfg(tmp_path, f"gen_trt_engine.onnx_file={tmp_path / 'missing.onnx'}")
    with pytest.raises(MissingDependencyError) as info:
        gen_trt_engine.run(cfg, quiet=True)
    message = str(info.value)
    assert "\n" not in message and "segformer-automl[tensorrt]" in message
    # the model it would build from is missing too: said in the same line (it was found only after the install)
    assert message.endswith(f"; also, gen_trt_engine.onnx_file points to {tmp_path / 'missing.onnx'}, which does not exist")


def test_onnx_runtimes_cpu_int8_model_is_told_apart_from_one_tensorrt_builds(exported, make_deploy_cfg, tmp_path,
                                                                             monkeypatch):
    """TensorRT takes int8 with zero point 0 only; ONNX Runtime's quantizer wrote uint8 activations with
    zero points (fast on the CPU), and gen_trt_engine at int8 took that model: its parser would stop
    ("TRT only supports symmetric quantization"). backend_kwargs {symmetric: true} writes the model
    TensorRT builds; the CPU model is refused in one line, before TensorRT is even needed."""
    import onnx
    from onnx import numpy_helper

    from segformer.actions import gen_trt_engine
    from segformer.deploy.quantize.ort_static import quantize_onnx_static
    from segformer.deploy.trt import tensorrt_refuses

    _, result = exported
    batches = [np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE), dtype=np.float32) for _ in range(2)]
    cpu = quantize_onnx_static(result.onnx_file, tmp_path / "cpu.onnx", batches).output
    trt = quantize_onnx_static(result.onnx_file, tmp_path / "trt.onnx", batches, symmetric=True).output
    assert tensorrt_refuses(result.onnx_file) is None  # a float model: TensorRT calibrates it
    assert "Q/DQ nodes have uint8 and non-zero zero points" in tensorrt_refuses(cpu)
    assert tensorrt_refuses(trt) is None
    model = onnx.load(str(trt))
    zeros = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    points = [zeros[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)
    # the biases stay float for TensorRT (its parser has refused ONNX Runtime's int32 bias Q/DQ)
    assert not any(t.data_type == onnx.TensorProto.INT32 for t in model.graph.initializer)
    # zero points in an external data file beside the model are read from there, wherever the command runs
    for name, source in (("cpu_external.onnx", cpu), ("trt_external.onnx", trt)):
        onnx.save(onnx.load(str(source)), str(tmp_path / name), save_as_external_data=True, size_threshold=0,
                  location=f"{name}.data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert tensorrt_refuses(tmp_path / "cpu_external.onnx") and tensorrt_refuses(tmp_path / "trt_external.onnx") is None

    cfg = make_deploy_cfg(tmp_path, f"gen_trt_engine.onnx_file={cpu}", "gen_trt_engine.tensorrt.data_type=int8")
    with pytest.raises((MissingDependencyError, SegformerError)) as info:
        gen_trt_engine.run(cfg, quiet=True)
    message = str(info.value)
    assert f"gen_trt_engine.onnx_file {cpu} cannot be built by TensorRT" in message and "symmetric: true" in message


def test_validate_finds_what_a_tensorrt_build_would_refuse(exported, deploy_dataset, tmp_path, capsys):
    """`segformer validate --action gen_trt_engine` said OK to an int8 build of a float model with no
    calibration images, and to a min/opt/max profile that a static-batch model cannot run: both were
    found only inside a TensorRT build (so, on a machine without TensorRT, never)."""
    import onnx

    from segformer.config.validate import main as validate

    _, result = exported
    static = onnx.load(str(result.onnx_file))
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # as export.batch_size=2 writes it
    onnx.save(static, str(tmp_path / "batch2.onnx"))
    spec = str(deploy_dataset / "spec.yaml")

    def problems(*overrides: str) -> str:
        capsys.readouterr()
        code = validate(["-e", spec, "--action", "gen_trt_engine", f"results_dir={tmp_path / 'r'}",
                         f"dataset.segment.root_dir={deploy_dataset}", *overrides])
        out = capsys.readouterr().out
        assert (code == 0) == out.rstrip().endswith(": OK"), out
        return "" if code == 0 else out

    assert problems(f"gen_trt_engine.onnx_file={result.onnx_file}") == ""
    assert problems(f"gen_trt_engine.onnx_file={result.onnx_file}", "gen_trt_engine.tensorrt.data_type=int8") == ""
    assert "data_type int8 on a float ONNX model needs calibration" in problems(
        f"gen_trt_engine.onnx_file={result.onnx_file}", "gen_trt_engine.tensorrt.data_type=int8",
        "dataset.segment.quant_calibration_dataset.images_dir=null")
    assert "the ONNX model has a static batch of 2 but tensorrt min/opt/max_batch_size are (1, 1, 1)" in problems(
        f"gen_trt_engine.onnx_file={tmp_path / 'batch2.onnx'}")
    # a model of another kind (two inputs): one line, not read_onnx_signature's ValueError
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])], "add",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, 8, 8]) for n in "ab"],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "two_inputs.onnx"))
    assert f"gen_trt_engine.onnx_file {tmp_path / 'two_inputs.onnx'}: " in problems(
        f"gen_trt_engine.onnx_file={tmp_path / 'two_inputs.onnx'}")
    assert problems(f"gen_trt_engine.onnx_file={tmp_path / 'batch2.onnx'}", "gen_trt_engine.tensorrt.min_batch_size=2",
                    "gen_trt_engine.tensorrt.opt_batch_size=2", "gen_trt_engine.tensorrt.max_batch_size=2") == ""


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
@pytest.mark.parametrize("data_type", ["fp32", "fp16"])
def test_build_and_run_engine(exported, tmp_path, data_type):
    import torch

    from segformer.deploy.runtime import OnnxPredictor, TrtPredictor
    from segformer.deploy.trt import build_engine

    _, result = exported
    engine, profile, _ = build_engine(result.onnx_file, tmp_path / "m.engine", data_type=data_type,
                                      min_batch_size=1, opt_batch_size=2, max_batch_size=4)
    trt_predictor, ort_predictor = TrtPredictor(engine), OnnxPredictor(result.onnx_file, providers=["CPUExecutionProvider"])
    images = torch.randn(5, 3, 64, 64)  # more than max batch: split in chunks
    tolerance = 1e-2 if data_type == "fp32" else 1e-1
    assert (trt_predictor(images) - ort_predictor(images)).abs().max() < tolerance


def test_tensorrt_refuses_counts_each_q_dq_node_it_refuses_once(tmp_path):
    """A node refused for a uint8 zero point and one refused for a non-zero int8 one are two nodes: the
    count was the larger of the two kinds' counts."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from segformer.deploy.trt import tensorrt_refuses

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zu"], ["qu"]), helper.make_node("DequantizeLinear", ["qu", "s", "zu"], ["yu"]),
             helper.make_node("QuantizeLinear", ["x", "s", "zi"], ["qi"]), helper.make_node("DequantizeLinear", ["qi", "s", "zi"], ["yi"]),
             helper.make_node("QuantizeLinear", ["x", "s", "z0"], ["q0"]), helper.make_node("DequantizeLinear", ["q0", "s", "z0"], ["y0"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1]) for y in ("yu", "yi", "y0")],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.array(0, np.uint8), "zu"),  # uint8, zero 0
                               numpy_helper.from_array(np.array(5, np.int8), "zi"),  # int8, not zero
                               numpy_helper.from_array(np.array(0, np.int8), "z0")])  # what TensorRT takes
    onnx.save(helper.make_model(graph), str(tmp_path / "mixed.onnx"))
    assert tensorrt_refuses(tmp_path / "mixed.onnx").startswith("4 of its 6 Q/DQ nodes have uint8 and non-zero zero points")
