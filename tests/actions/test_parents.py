"""Model path fields take a results folder (TAO's parent model): the action picks the file in it and
prints which (`segformer.parents`). Real train results from the shared 2-epoch run; the folders of
the other producers are laid out with their file names."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from segformer.engine.checkpoint_files import LATEST_NAME, checkpoint_name
from segformer.errors import SegformerError
from segformer.parents import resolve_folder, resolve_parents


def _best_by_status(train_dir: Path) -> tuple[Path, dict]:
    """The checkpoint of the epoch with the highest val_miou, read independently of the rule's code."""
    records = [json.loads(line) for line in (train_dir / "status.json").read_text().splitlines()]
    best = max(records, key=lambda r: r["val_miou"])
    return train_dir / checkpoint_name(best["epoch"], best["step"]), best


def _linked_copy(source: Path, target: Path) -> Path:
    """A copy of a train results folder whose checkpoints are hard links (cheap, same content)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def test_train_results_folder_as_evaluate_checkpoint_uses_the_best_checkpoint(trained, make_cfg, tiny_dataset,
                                                                             tmp_path, capsys):
    from segformer.actions import evaluate

    cfg, result = trained
    train_dir = result.results_dir
    expected, record = _best_by_status(train_dir)
    assert expected.is_file()
    out = evaluate.run(make_cfg(tiny_dataset, tmp_path, f"evaluate.checkpoint={train_dir}"), quiet=False)
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("evaluate.checkpoint:"))
    assert line.startswith(f"evaluate.checkpoint: {train_dir} is a train results folder; using {expected} "
                           f"(the best checkpoint by val_miou in status.json: epoch {record['epoch']}, "), line
    assert json.loads(out.results_file.read_text())["model"] == str(expected)


def test_results_folder_as_export_checkpoint(trained, make_cfg, tiny_dataset, tmp_path, capsys):
    """The spec's results_dir (TAO's job folder, holding train/) given as export.checkpoint."""
    from segformer.actions import export

    cfg, result = trained
    results_dir = Path(cfg.results_dir)
    expected, _ = _best_by_status(result.results_dir)
    out = export.run(make_cfg(tiny_dataset, tmp_path, f"export.checkpoint={results_dir}", "export.on_cpu=true",
                              "export.input_height=32", "export.input_width=32"))
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("export.checkpoint:"))
    assert line.startswith(f"export.checkpoint: {results_dir} is a results folder; using {expected} (the best "), line
    assert line.endswith("; from its train/)"), line
    assert out.onnx_file.is_file()


def test_best_epoch_pruned_takes_the_best_kept_and_says_so(trained, make_cfg, tiny_dataset, tmp_path):
    cfg, result = trained
    train_dir = _linked_copy(result.results_dir, tmp_path / "train")
    best, record = _best_by_status(train_dir)
    records = [json.loads(line) for line in (train_dir / "status.json").read_text().splitlines()]
    other = next(r for r in records if r["epoch"] != record["epoch"])
    kept = train_dir / checkpoint_name(other["epoch"], other["step"])
    for path in train_dir.glob("*.pth"):  # only the other epoch's checkpoint stays
        if path != kept:
            path.unlink()
    resolved = resolve_parents(make_cfg(tiny_dataset, tmp_path, f"evaluate.checkpoint={train_dir}"), "evaluate",
                               quiet=True)
    assert resolved.evaluate.checkpoint == str(kept)


def test_resume_takes_the_latest_and_pretrained_the_best(trained, make_cfg, tiny_dataset, tmp_path, capsys):
    cfg, result = trained
    train_dir = result.results_dir
    best, _ = _best_by_status(train_dir)
    resolved = resolve_parents(make_cfg(tiny_dataset, tmp_path, f"train.resume_training_checkpoint_path={train_dir}",
                                        f"train.pretrained_model_path={train_dir}"), "train")
    assert resolved.train.resume_training_checkpoint_path == str(train_dir / LATEST_NAME)
    assert resolved.train.pretrained_model_path == str(best)
    printed = capsys.readouterr().out
    assert f"using {train_dir / LATEST_NAME} (the latest checkpoint)" in printed


def _write_qdq_model(path: Path, zero_point: int) -> None:
    """A one-value Q/DQ model: zero point 0 as int8 (what TensorRT builds), else uint8 (ONNX Runtime's CPU model)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    zero = np.array(zero_point, np.uint8 if zero_point else np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(zero, "z")])
    onnx.save(helper.make_model(graph), str(path))


def test_deploy_fields_pick_by_what_they_take(make_cfg, tiny_dataset, tmp_path):
    """The fp32 model for export consumers, the quantized one where the field is about one, the engine
    for trt_engine; names as export, quantize and gen_trt_engine write them."""
    results = tmp_path / "results"
    for name in ("export/segformer.onnx", "quantize/quantized_model_onnxruntime.onnx", "quantize/float_model.onnx",
                 "gen_trt_engine/segformer.engine"):
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_bytes(b"stand-in")

    def resolved(action: str, *overrides: str):
        return resolve_parents(make_cfg(tiny_dataset, tmp_path, *overrides), action, quiet=True)

    onnx, quantized = results / "export/segformer.onnx", results / "quantize/quantized_model_onnxruntime.onnx"
    assert resolved("gen_trt_engine", f"gen_trt_engine.onnx_file={results}").gen_trt_engine.onnx_file == str(onnx)
    # int8: the quantized model where TensorRT builds it (zero point 0), else the float one, calibrated
    for zero_point, takes in ((0, quantized), (128, onnx)):
        _write_qdq_model(quantized, zero_point)
        int8 = resolved("gen_trt_engine", f"gen_trt_engine.onnx_file={results}", "gen_trt_engine.tensorrt.data_type=int8")
        assert int8.gen_trt_engine.onnx_file == str(takes), zero_point
    with pytest.raises(SegformerError, match=r"quantized_model_onnxruntime.onnx, which TensorRT cannot build \(.*uint8"):
        resolved("gen_trt_engine", f"gen_trt_engine.onnx_file={quantized.parent}", "gen_trt_engine.tensorrt.data_type=int8")
    assert resolved("quantize", f"quantize.model_path={results}", "quantize.backend=onnxruntime",
                    "quantize.mode=static_ptq").quantize.model_path == str(onnx)
    assert resolved("evaluate", f"evaluate.checkpoint={results}").evaluate.checkpoint == str(onnx)
    assert resolved("evaluate", f"evaluate.checkpoint={results}",
                    "evaluate.is_quantized=true").evaluate.checkpoint == str(quantized)
    engine = resolved("inference", f"inference.trt_engine={results / 'gen_trt_engine'}").inference.trt_engine
    assert engine == str(results / "gen_trt_engine/segformer.engine")


def test_an_export_older_than_the_training_is_said_to_be(trained, tmp_path):
    """Quantize (ONNX backends) on a results folder takes export/'s ONNX model: after a resume trained on,
    that model was an earlier one, quantized in silence (evaluate took the newer checkpoint)."""
    _, result = trained
    results = tmp_path / "results"
    _linked_copy(result.results_dir, results / "train")
    onnx = results / "export" / "segformer.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"stand-in")
    expected, _ = _best_by_status(results / "train")
    os.utime(onnx, (expected.stat().st_mtime - 60, expected.stat().st_mtime - 60))  # exported before the training ended
    choice = resolve_folder(results, "quantize.model_path", ("onnx", "best"))
    assert choice.path == onnx and choice.why.endswith(
        f"; NOTE: it is older than {expected}, so it may hold an earlier model: export again to use the newer one")
    os.utime(onnx, (expected.stat().st_mtime + 60, expected.stat().st_mtime + 60))  # exported after it: no note
    assert "NOTE" not in resolve_folder(results, "quantize.model_path", ("onnx", "best")).why


def test_quantize_model_path_follows_the_backend_that_runs(make_cfg, tiny_dataset, tmp_path, monkeypatch):
    """torchao quantizes a PyTorch checkpoint; where it cannot be imported quantize runs onnxruntime,
    which takes the fp32 ONNX model: an export folder, a results folder and best/ give theirs."""
    import types

    results, best = tmp_path / "results", tmp_path / "best"
    for name in (results / "export/segformer.onnx", best / "model.pth", best / "export/segformer.onnx"):
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_bytes(b"stand-in")

    def model_path(folder: Path) -> str:
        cfg = make_cfg(tiny_dataset, tmp_path, f"quantize.model_path={folder}", "quantize.backend=torchao")
        return resolve_parents(cfg, "quantize", quiet=True).quantize.model_path

    monkeypatch.setitem(sys.modules, "torchao", None)  # Python's own way of failing `import torchao`
    assert model_path(results / "export") == model_path(results) == str(results / "export/segformer.onnx")
    assert model_path(best) == str(best / "export/segformer.onnx")

    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))  # importable: torchao runs
    assert model_path(best) == str(best / "model.pth")
    with pytest.raises(SegformerError, match=r"quantize\.model_path: .* nothing quantize\.model_path takes: looked for "
                                             r"a PyTorch checkpoint .*it holds an fp32 ONNX model"):
        model_path(results)


def test_folder_with_nothing_suitable_is_one_clear_error(make_cfg, tiny_dataset, tmp_path, capsys):
    """Through the command line: one message naming the folder, what was looked for and the fix."""
    from segformer.cli import main

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "notes.txt").write_text("no model here")
    code = main(["evaluate", "-e", str(tiny_dataset / "spec.yaml"), f"results_dir={tmp_path / 'out'}",
                 f"dataset.segment.root_dir={tiny_dataset}", f"evaluate.checkpoint={folder}"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        f"segformer evaluate: error: evaluate.checkpoint: {folder} is a folder with nothing evaluate.checkpoint takes: "
        "looked for a PyTorch checkpoint (model_epoch_*.pth or segformer_model_latest.pth of a train run, or "
        "best/model.pth of a search) in it or in its train/; or an fp32 ONNX model (export's segformer.onnx) in it or "
        "in its export/. Give the file itself (evaluate.checkpoint=/path/to/file) or the results folder of the run "
        "that wrote it"]


def test_quantized_model_only_says_how_to_evaluate_it(make_cfg, tiny_dataset, tmp_path):
    folder = tmp_path / "quantize"
    folder.mkdir()
    (folder / "quantized_model_torchao.pth").write_bytes(b"stand-in")
    with pytest.raises(SegformerError, match=r"it holds a quantized model, .*quantized_model_torchao\.pth: set "
                                             r"evaluate\.is_quantized=true to use it"):
        resolve_parents(make_cfg(tiny_dataset, tmp_path, f"evaluate.checkpoint={folder}"), "evaluate")


def test_two_onnx_models_without_the_default_name_are_ambiguous(make_cfg, tiny_dataset, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("a.onnx", "b.onnx"):
        (folder / name).write_bytes(b"stand-in")
    with pytest.raises(SegformerError, match=r"^gen_trt_engine\.onnx_file: .*export holds 2 fp32 ONNX models "
                                             r"\(a\.onnx, b\.onnx\) and none is named segformer\.onnx: give the file "
                                             r"itself$"):
        resolve_parents(make_cfg(tiny_dataset, tmp_path, f"gen_trt_engine.onnx_file={folder}"), "gen_trt_engine")


def test_file_and_missing_paths_are_left_as_given(trained, make_cfg, tiny_dataset, tmp_path):
    from segformer.actions import evaluate

    cfg, result = trained
    checkpoint = str(result.last_checkpoint)
    kept = make_cfg(tiny_dataset, tmp_path, f"evaluate.checkpoint={checkpoint}")
    assert resolve_parents(kept, "evaluate") is kept
    missing = tmp_path / "nowhere"
    with pytest.raises(SegformerError, match=f"^evaluate.checkpoint points to {missing}, which does not exist$"):
        evaluate.run(make_cfg(tiny_dataset, tmp_path, f"evaluate.checkpoint={missing}"), quiet=True)


def test_latest_checkpoint_written_before_status_json_is_no_epochs(tmp_path):
    """A run killed between status.json's line for its last epoch and that epoch's checkpoint leaves
    the epoch before's weights in segformer_model_latest.pth (a fresh save, not a link): they must not
    be taken for the last epoch's. Written after status.json, they are the last epoch's."""
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    status, latest = train_dir / "status.json", train_dir / LATEST_NAME
    status.write_text("".join(json.dumps({"epoch": e, "step": 4 * (e + 1), "val_miou": m}) + "\n"
                              for e, m in ((0, 0.2), (1, 0.3))))
    latest.write_bytes(b"epoch 0's weights")

    def pick() -> tuple[str, str]:
        choice = resolve_folder(train_dir, "evaluate.checkpoint", ("best",))
        return str(choice.path), choice.why

    written = status.stat().st_mtime_ns
    os.utime(latest, ns=(written - 10**9, written - 10**9))  # saved before status.json: the kill case
    assert pick() == (str(latest), "the latest checkpoint: status.json has no validated epoch with a checkpoint here")
    os.utime(latest, ns=(written + 10**9, written + 10**9))  # saved after it: epoch 1's checkpoint
    assert pick() == (str(latest), "the best checkpoint by val_miou in status.json: epoch 1, 0.3000")
    numbered = train_dir / checkpoint_name(0, 4)  # a link to a numbered file: that epoch's, whenever written
    os.link(latest, numbered)
    os.utime(latest, ns=(written - 10**9, written - 10**9))
    assert pick() == (str(numbered), "the best checkpoint by val_miou in status.json: epoch 0, 0.2000; epoch 1 "
                                     "scored 0.3000 but the run stopped before its checkpoint was written")
    # an epoch between kept checkpoints was not kept by train.checkpoint_interval
    status.write_text("".join(json.dumps({"epoch": e, "step": 4 * (e + 1), "val_miou": m}) + "\n"
                              for e, m in ((0, 0.2), (1, 0.3), (2, 0.25))))
    os.link(numbered, train_dir / checkpoint_name(2, 12))
    assert pick()[1] == ("the best checkpoint by val_miou in status.json: epoch 2, 0.2500; epoch 1 "
                         "scored 0.3000 but its checkpoint is not kept (train.checkpoint_interval)")


def test_a_train_folder_is_read_without_importing_lightning(trained, tmp_path):
    """Reading a train folder's checkpoints (a parent model, a resumed search's trials) needs their
    file names only: it imported Lightning for them, about 6 s of CPU per `automl resume`."""
    import subprocess

    _, result = trained
    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; from pathlib import Path; from segformer.parents import _train_checkpoint; "
            "from automl.layout import Layout; from automl.runner import _own_latest; "
            f"choice = _train_checkpoint(Path({str(result.results_dir)!r})); assert choice is not None; "
            f"assert _own_latest(Layout.of(Path({str(tmp_path)!r})))('trial_000') is None; "
            "assert 'lightning' not in sys.modules, 'lightning imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(repo)})
