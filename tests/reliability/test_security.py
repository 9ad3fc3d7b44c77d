"""Security rules, checked on the code base and on the running tools.

- checkpoints load with ``torch.load(..., weights_only=True)`` only;
- YAML is read with ``yaml.safe_load`` only;
- no shell: no ``shell=True``, ``os.system`` or ``os.popen``;
- services bind to 127.0.0.1 by default;
- dataset file names cannot make inference write outside ``results_dir/inference``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from relhelpers import REPO, TINY, run_inprocess

PACKAGES = ("segformer", "automl")


def _sources() -> list[Path]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    assert len(files) > 20
    return files


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def test_every_torch_load_is_weights_only():
    offenders, seen = [], 0
    for path in _sources():
        for call in _calls(path):
            if _dotted(call.func) in ("torch.load", "load") and _dotted(call.func) == "torch.load":
                seen += 1
                flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert seen >= 1
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


def test_yaml_is_safe_loaded_only():
    offenders = []
    for path in _sources():
        for call in _calls(path):
            name = _dotted(call.func)
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno} {name}")
        text = path.read_text()
        for bad in ("yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"):
            if bad in text:
                offenders.append(f"{path.relative_to(REPO)} uses {bad}")
    assert offenders == [], offenders


def test_no_shell_commands():
    offenders = []
    for path in _sources():
        for call in _calls(path):
            name = _dotted(call.func)
            if name in ("os.system", "os.popen", "os.execl", "os.execlp", "os.spawnl", "commands.getoutput"):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno} {name}")
            for keyword in call.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno} shell={ast.unparse(keyword.value)}")
    assert offenders == [], offenders


def test_services_bind_to_localhost_by_default():
    from automl.cli import _parser, ui_command

    args = _parser().parse_args(["ui", "somewhere"])
    assert args.host == "127.0.0.1"
    command = ui_command("somewhere", args.port, args.host)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    for path in _sources():
        assert "0.0.0.0" not in path.read_text(), f"{path.relative_to(REPO)} mentions 0.0.0.0"
    driver = (REPO / "automl" / "ray_session.py").read_text()
    assert "include_dashboard=False" in driver  # no Ray dashboard listening on a port


def test_dataset_file_names_cannot_escape_inference_results(dataset, checkpoint, tmp_path, capsys):
    """Odd stems stay inside results_dir/inference; a link out of the dataset is refused."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    source = data / "images/test/test_00000.jpg"
    odd = ["..jpg", "a..b.jpg", "-rf.jpg", " spaced name .jpg", "x%2F..%2F..%2Fescape.jpg", "ünï.jpg"]
    for name in odd:
        shutil.copy(source, data / "images/test" / name)
    results = tmp_path / "results"
    common = ["-e", str(data / "spec.yaml"), f"results_dir={results}", f"dataset.segment.root_dir={data}", *TINY,
              f"inference.checkpoint={checkpoint}"]
    outcome = run_inprocess(["inference", *common], capsys)
    assert outcome.code == 0, outcome.stderr[-2000:]
    inside = (results / "inference").resolve()
    written = [p for p in tmp_path.rglob("*.png") if "data" not in p.relative_to(tmp_path).parts[:1]]
    assert written and all(inside in p.resolve().parents for p in written), written
    stems = {p.stem for p in (results / "inference/vis_tao").iterdir()}
    assert {"a..b", "-rf", " spaced name ", "x%2F..%2F..%2Fescape", "ünï"} <= stems  # '..jpg' is hidden: skipped

    # a symlink pointing out of the dataset root is refused before anything is written
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(source, outside)
    (data / "images/test/link.jpg").symlink_to(outside)
    shutil.rmtree(results)
    outcome = run_inprocess(["inference", *common], capsys)
    assert outcome.code == 1 and "outside the dataset root" in outcome.stderr and "Traceback" not in outcome.stderr
    assert not (results / "inference").exists() or not list((results / "inference").rglob("*.png"))
