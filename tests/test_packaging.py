"""The wheel carries everything the installed tools read at run time.

Builds a wheel from the checkout, installs it (without dependencies) into a fresh virtual
environment, and runs the console scripts from a folder outside the checkout. The dependencies
(torch and friends, several GB) are borrowed from the test interpreter's environment through a
path entry, so what is exercised is exactly the wheel's own content.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = out.glob("segformer_automl-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; returns its bin folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", purelib, str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    # Scripts: pip --target does not write console scripts, so create the two entry points as
    # pip would, running this venv's interpreter.
    for name, target in (("segformer", "segformer.cli"), ("automl", "automl.cli")):
        script = env_dir / "bin" / name
        script.write_text(f"#!{py}\nimport sys\nfrom {target} import main\nsys.exit(main())\n")
        script.chmod(0o755)
    # Dependencies from the test environment, appended after the venv's own site-packages.
    deps = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "_borrowed_deps.pth").write_text(deps + "\n")
    return env_dir / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_contains_generated_skill_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for action in ("train", "evaluate", "inference", "export", "quantize", "gen_trt_engine"):
        assert f"segformer_skill/schemas/segformer/{action}.schema.json" in names
        assert f"segformer_skill/templates/segformer/spec_template_{action}.yaml" in names
    assert "segformer_skill/schemas/segformer/manifest.json" in names
    assert "segformer_skill/templates/segformer/skill_info.yaml" in names


def test_installed_cli_runs_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = _run(installed, "python", "-c", "import segformer, automl; print(segformer.__file__, automl.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout, f"imported from the checkout: {where.stdout}"

    for tool in ("segformer", "automl"):
        proc = _run(installed, tool, "--help", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "usage" in proc.stdout.lower()

    # The packaged schemas are found and readable by the installed package.
    code = (
        "import json, importlib.resources as r\n"
        "p = r.files('segformer_skill.schemas.segformer') / 'train.schema.json'\n"
        "d = json.loads(p.read_text())\n"
        "print(json.dumps(sorted(d['automl_default_parameters'])))\n"
    )
    proc = _run(installed, "python", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train.optim.lr" in json.loads(proc.stdout)

    # automl finds our skill in the installed package (no checkout around).
    code = "from automl.skill import find_skill, resolve_policy; s = find_skill('segformer'); print(s.root); print(resolve_policy(s, 'auto').mode)"
    proc = _run(installed, "python", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root, mode = proc.stdout.split()
    assert str(installed.parent) in root and mode == "search", proc.stdout

    # A spec template from the wheel validates with the installed tool.
    template = tmp_path / "spec.yaml"
    code = (
        "import importlib.resources as r, sys\n"
        "sys.stdout.write((r.files('segformer_skill.templates.segformer') / 'spec_template_train.yaml').read_text())\n"
    )
    template.write_text(_run(installed, "python", "-c", code, cwd=tmp_path).stdout)
    proc = _run(installed, "segformer", "validate", "-e", str(template), "dataset.segment.root_dir=/data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
