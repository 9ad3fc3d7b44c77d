"""segformer.fileio: atomic writes, and atomic_output for libraries that write to a path themselves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segformer.fileio import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_writes_replace_whole_files(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": float("nan"), "y": [1, 2]})
    assert json.loads(target.read_text()) == {"x": None, "y": [1, 2]}
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _leftovers(target.parent) == []


def test_atomic_output_moves_an_onnx_graph_with_its_external_data(tmp_path):
    """An ONNX file names its weights file; written under the temporary path with the target's name,
    both arrive next to each other and the graph still finds its weights."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    target = tmp_path / "out" / "model.onnx"
    with atomic_output(target) as tmp:
        assert tmp.name == "model.onnx" and tmp.parent.parent == target.parent
        (tmp.parent / "scratch").mkdir()  # subfolders are scratch space
        (tmp.parent / "scratch" / "intermediate.onnx").write_bytes(b"x")
        onnx.save(model, str(tmp), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
        assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(session.run(["y"], {"x": x})[0], x @ weight)


def test_atomic_output_moves_nothing_on_error_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="exporter failed"):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            (tmp.parent / "model.onnx.data").write_text("weights")
            raise RuntimeError("exporter failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_atomic_output_refuses_when_nothing_was_written(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(target) as tmp:
            (tmp.parent / "other.txt").write_text("not the output")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_a_folder_in_the_way_before_the_work(tmp_path):
    """A folder at the target would make os.replace fail only after the library's work (an ONNX
    export's seconds): refused first, with the path, and nothing is left behind."""
    target = tmp_path / "model.onnx"
    target.mkdir()
    ran = []
    with pytest.raises(IsADirectoryError) as caught:
        with atomic_output(target):
            ran.append(True)
    assert caught.value.filename == str(target) and not ran
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and not any(target.iterdir())


def test_atomic_output_clears_what_a_killed_writer_left(tmp_path):
    """A writer killed inside atomic_output (SIGKILL: no cleanup) leaves its private folder; the next
    write of that file removes it, and never the folder of a writer still alive."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "segformer.onnx"
    code = (f"import time\nfrom segformer.fileio import atomic_output\nwith atomic_output({str(target)!r}) as tmp:\n"
            f"    tmp.write_bytes(b'half')\n    print('inside', flush=True)\n    time.sleep(60)\n")
    writers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for writer in writers:
            assert writer.stdout.readline().strip() == "inside"
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait(timeout=30)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert len(left) == 2 and all(name.startswith(".segformer.onnx.") for name in left), left
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"whole")
        after = sorted(p.name for p in tmp_path.iterdir())
        alive = f".segformer.onnx.{writers[1].pid}."
        assert target.read_bytes() == b"whole"
        assert [n for n in after if n != target.name] == [n for n in left if n.startswith(alive)], after
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
