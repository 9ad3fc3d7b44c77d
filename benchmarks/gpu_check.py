"""The one-shot GPU check: everything this project can only verify on a CUDA GPU, in one run.

    bash benchmarks/gpu_check.sh          # on a machine with a GPU; about 5 minutes on one H200

Each part runs on its own and records what happened (a part that fails never stops the others):

1. `pytest -m gpu`: AMP training through the train action, DDP when there are two GPUs, the CUDA
   out-of-memory advice (in the train action and, where Ray is installed, in a search).
2. AMP training throughput of SegFormer-B0 at 512x512 (forward, loss on full-resolution logits,
   backward, AdamW step): fp32 against bf16 autocast, images per second and peak memory.
3. Model speed on the GPU: eval forward at 512x512, eager against torch.compile (bf16), with the
   compile time.
4. A fractional-GPU search (`--gpus-per-trial 0.25`, four trials sharing the GPU) where Ray,
   Optuna and MLflow are installed; otherwise it says so.
5. Trainings sharing the GPU, without Ray: 1, 2 and 4 `segformer train` processes at once on the
   same GPU (B0, 512x512 synthetic images, 4 data workers each), each one's steady epoch time from
   its status.json. Whether a search should put more than one trial on a GPU (`--gpus-per-trial
   0.5`) by default: a search's trials are small models, and one may leave most of an H200 idle.

It writes the "GPU check" section of benchmarks/RESULTS.md, benchmarks/results/gpu_check.json and
the pytest log, and copies all three to $OUT when that is set (the lent-machine tool brings $OUT back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import RESULTS, RESULTS_DIR, machine_line, save_json, write_section  # noqa: E402


def _part(name: str, fn: Callable[[], dict[str, Any]], out: dict[str, Any], save: Callable[[], None] | None = None) -> None:
    """Run one part; its failure is recorded, never raised. `save` runs after it: what ran comes
    back even when a later part is cut by the machine's time limit."""
    started = time.time()
    print(f"gpu_check: {name} ...", flush=True)
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - the check reports every part, whatever breaks
        result = {"status": "error", "error": f"{type(err).__name__}: {err}"[:1000]}
    result["seconds"] = round(time.time() - started, 1)
    out[name] = result
    print(f"gpu_check: {name}: {json.dumps(result)[:600]}", flush=True)
    if save is not None:
        save()


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"status": "ok", "python": sys.version.split()[0], "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
    for module in ("lightning", "timm", "torchvision", "onnx", "onnxruntime", "ray", "optuna", "mlflow", "pytest", "tensorrt"):
        info[module] = importlib.util.find_spec(module) is not None
    return info


def pytest_gpu(log: Path, timeout: int) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        return {"status": "skipped", "reason": "pytest is not installed (bring its wheels: see gpu_check.sh)"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:  # its output comes as bytes, text=True or not
        text, code = f"{_text(err.stdout)}{_text(err.stderr)}\n(timed out after {timeout} s)", -1
    log.write_text(text, encoding="utf-8")
    return pytest_result(text, code)


def pytest_result(text: str, code: int) -> dict[str, Any]:
    """The part's record from pytest's output and exit code."""
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    errors = _collection_errors(text)
    uncollected = [f"{module} (needs {name})" for module, name in errors.items() if name in SEARCH_PACKAGES]
    # A module that imports the search packages at its top cannot be collected where they are missing
    # (a lent GPU machine): not a failure of a GPU test, when that is every error and no test failed.
    fine = code == 0 or (bool(errors) and len(uncollected) == len(errors) and " failed" not in tail[0])
    return {"status": "ok" if fine else "failed", "exit_code": code, "summary": tail[0][:300],
            "not_collected": uncollected,
            "skips": [line[:200] for line in text.splitlines() if line.startswith("SKIPPED")][:10]}


SEARCH_PACKAGES = ("ray", "optuna", "mlflow")  # too big for a lent machine's 64 MiB (gpu_check.sh)


def _collection_errors(text: str) -> dict[str, str | None]:
    """Each module pytest could not collect -> the top-level package it missed (None: another error)."""
    import re

    errors: dict[str, str | None] = {}
    for block in re.split(r"^_+ ERROR collecting ", text, flags=re.M)[1:]:
        module = block.split(" ", 1)[0]
        missing = re.search(r"ModuleNotFoundError: No module named '(\w+)", block)
        errors[module] = missing.group(1) if missing else None
    return errors


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _model(num_classes: int = 19):
    from segformer.model import SegFormer, create_backbone

    return SegFormer(create_backbone("mit_b0"), num_classes=num_classes, embed_dim=256)


def _device(smoke: bool) -> Any:
    """The GPU; the CPU only for a smoke run of the code (--quick), never for numbers."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else (torch.device("cpu") if smoke else None)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], None], device: Any, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def amp_training(batch: int, size: int, steps: int, smoke: bool = False) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    device = _device(smoke)
    if device is None:
        return {"status": "skipped", "reason": "no CUDA GPU"}
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 19, (batch, size, size), device=device)
    rows: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = _model().to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def step() -> None:
            with autocast:
                logits = F.interpolate(model(images), size=(size, size), mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = _timed(step, device, warmup=2 if smoke else 5, steps=steps)
        rows[precision] = {"step_ms": round(seconds * 1000, 2), "images_per_s": round(batch / seconds, 1),
                           "peak_memory_gib": _peak_gib(device)}
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows["bf16_speedup"] = round(rows["fp32"]["step_ms"] / rows["bf16"]["step_ms"], 2)
    return {"status": "ok", "device": device.type, "batch": batch, "size": size, "steps": steps, **rows}


def model_speed(batch: int, size: int, steps: int, smoke: bool = False) -> dict[str, Any]:
    import torch

    device = _device(smoke)
    if device is None:
        return {"status": "skipped", "reason": "no CUDA GPU"}
    images = torch.randn(batch, 3, size, size, device=device)
    model = _model().to(device).eval()
    out: dict[str, Any] = {"status": "ok", "device": device.type, "batch": batch, "size": size, "steps": steps}

    def forward(net: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                net(images)
        return run

    out["eager_ms"] = round(_timed(forward(model), device, warmup=2 if smoke else 5, steps=steps) * 1000, 2)
    started = time.perf_counter()
    compiled = torch.compile(model)
    forward(compiled)()  # compiles
    _sync(device)
    out["compile_s"] = round(time.perf_counter() - started, 1)
    out["compiled_ms"] = round(_timed(forward(compiled), device, warmup=1 if smoke else 3, steps=steps) * 1000, 2)
    out["compile_speedup"] = round(out["eager_ms"] / out["compiled_ms"], 2)
    out["images_per_s_compiled"] = round(batch / (out["compiled_ms"] / 1000), 1)
    return out


def fractional_search(timeout: int) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU"}
    missing = [m for m in ("ray", "optuna", "mlflow") if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "skipped", "reason": f"{', '.join(missing)} not installed on this machine"}
    from segformer.data.synth import generate

    work = Path(tempfile.mkdtemp(prefix="gpu_check_search_"))
    try:
        return _search(work, generate, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _search(work: Path, generate: Callable[..., Path], timeout: int) -> dict[str, Any]:
    root = generate(work / "data", num_classes=3, size=64, train=16, val=8, test=4)
    results = work / "search"
    cmd = [sys.executable, "-m", "automl.cli", "run", "--skill", "segformer", "-e", str(root / "spec.yaml"),
           "--results-dir", str(results), "--algorithm", "random", "--max-trials", "4", "--max-epochs", "2",
           "--gpus-per-trial", "0.25", "--max-concurrent", "4", "--no-promote", "--no-progress"]
    started = time.time()
    # its own session: a timeout stops the driver and the Ray it started, never the check
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output = _text(proc.communicate()[0])
        return {"status": "failed", "exit_code": -1, "tail": f"timed out after {timeout} s: {output[-600:]}"}
    wall = time.time() - started
    if proc.returncode != 0:
        return {"status": "failed", "exit_code": proc.returncode, "tail": output[-800:]}
    state = json.loads((results / "automl_state.json").read_text())
    trials = list(state["trials"].values())
    spans = sorted((t["started_at"], t["ended_at"]) for t in trials if t.get("started_at") and t.get("ended_at"))
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans) if spans else 0
    return {"status": "ok", "trials": len(trials), "finished": sum(t["status"] == "FINISHED" for t in trials),
            "max_trials_at_once": overlap, "wall_s": round(wall, 1)}


def shared_gpu(counts: tuple[int, ...] = (1, 2, 4), size: int = 512, train: int = 128, epochs: int = 4,
               workers: int = 4, timeout: int = 300, smoke: bool = False) -> dict[str, Any]:
    """`counts` trainings at once on one GPU (separate `segformer train` processes, as Ray runs
    fractional-GPU trials), each timed by its own epochs after the first (status.json's seconds):
    throughput = trainings at once / median epoch time, against one training alone."""
    import torch

    if not torch.cuda.is_available() and not smoke:
        return {"status": "skipped", "reason": "no CUDA GPU"}
    from segformer.data.synth import generate

    work = Path(tempfile.mkdtemp(prefix="gpu_check_shared_"))
    try:
        spec = generate(work / "data", num_classes=4, size=size, train=train, val=16, test=4, epochs=epochs) / "spec.yaml"
        rows: dict[str, Any] = {}
        for n in counts:
            runs = [work / f"x{n}_{i}" for i in range(n)]
            started = time.time()
            procs = [subprocess.Popen([sys.executable, "-m", "segformer.cli", "train", "-e", str(spec), f"results_dir={run}",
                                       f"train.seed={i}", f"dataset.segment.workers={workers}"], cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)}) for i, run in enumerate(runs)]
            errors = []
            for proc in procs:
                try:
                    _, err = proc.communicate(timeout=max(1.0, timeout - (time.time() - started)))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    err = f"timed out after {timeout} s"
                    proc.wait()
                if proc.returncode:
                    errors.append(_text(err)[-300:])
            if errors:
                return {"status": "failed", "at_once": n, "tail": errors[0], **rows}
            epoch_s = [json.loads(line)["seconds"] for run in runs
                       for line in (run / "train" / "status.json").read_text().splitlines()[1:] if line.strip()]
            median = sorted(epoch_s)[len(epoch_s) // 2]
            rows[str(n)] = {"epoch_s": round(median, 3), "wall_s": round(time.time() - started, 1),
                            "epochs_per_s": round(n / median, 2)}
        alone = rows[str(counts[0])]["epochs_per_s"]
        for row in rows.values():
            row["throughput_vs_one"] = round(row["epochs_per_s"] / alone, 2)
        return {"status": "ok", "device": "cuda" if torch.cuda.is_available() else "cpu", "size": size, "train": train,
                "epochs": epochs, "workers": workers, "at_once": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Each part's line in RESULTS.md: its name in the data, its label, and how an "ok" part reads.
_LINES: list[tuple[str, str, Callable[[dict[str, Any]], str] | None]] = [
    ("pytest -m gpu", "`pytest -m gpu`", lambda t: (
        f"`pytest -m gpu`: {t['summary']}" + (f"; not collected here: {', '.join(t['not_collected'])}"
                                               if t.get("not_collected") else ""))),
    ("AMP training", "AMP training", lambda a: (
        f"AMP training, B0 {a['size']}x{a['size']}, batch {a['batch']}: fp32 {a['fp32']['images_per_s']} img/s "
        f"({a['fp32']['peak_memory_gib']} GiB), bf16 {a['bf16']['images_per_s']} img/s ({a['bf16']['peak_memory_gib']} GiB): "
        f"**{a['bf16_speedup']}x**")),
    ("model speed", "Model speed", lambda m: (
        f"Eval forward, B0 {m['size']}x{m['size']}, batch {m['batch']}, bf16: eager {m['eager_ms']} ms, torch.compile "
        f"{m['compiled_ms']} ms (**{m['compile_speedup']}x**, compiled in {m['compile_s']} s; "
        f"{m['images_per_s_compiled']} img/s)")),
    ("fractional-GPU search", "Fractional-GPU search", lambda f: (
        f"Fractional-GPU search (0.25 GPU per trial): {f['finished']}/{f['trials']} trials finished, up to "
        f"{f['max_trials_at_once']} at once, {f['wall_s']} s")),
    ("trainings sharing the GPU", "Trainings sharing the GPU", lambda g: (
        f"Trainings sharing the GPU (B0 {g['size']}x{g['size']}, {g['train']} images, {g['workers']} data workers each; "
        "epochs per second in all, against one training alone): "
        + ", ".join(f"{n} at once {r['epochs_per_s']} (**{r['throughput_vs_one']}x**, {r['epoch_s']} s per epoch)"
                    for n, r in g["at_once"].items()))),
]


def section(data: dict[str, Any]) -> str:
    env = data.get("environment", {})
    lines = ["## GPU check", "",
             f"`bash benchmarks/gpu_check.sh` on {env.get('gpu', 'no GPU')} "
             f"({env.get('gpu_memory_gib', '?')} GiB, torch {env.get('torch')}, CUDA {env.get('cuda')}); "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Machine: {machine_line()}", ""]
    for name, label, ok in _LINES:
        part = data.get(name, {})
        if part.get("status") == "ok" and ok is not None:
            lines.append(f"- {ok(part)}")
        else:
            why = part.get("summary") or part.get("reason") or part.get("error") or part.get("tail", "")[-300:]
            lines.append(f"- {label}: {part.get('status', 'not run')}: {why}")
    lines += ["", "Raw numbers: `benchmarks/results/gpu_check.json`; the pytest log: `benchmarks/results/gpu_check_pytest.log`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of the code: tiny batch and steps, on the CPU where there is no GPU")
    parser.add_argument("--pytest-timeout", type=int, default=240)
    parser.add_argument("--skip-pytest", action="store_true", help="leave out `pytest -m gpu`")
    parser.add_argument("--no-write", action="store_true", help="leave benchmarks/RESULTS.md as it is")
    args = parser.parse_args(argv)
    batch, steps = (2, 3) if args.quick else (16, 30)
    size = 128 if args.quick else 512
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log = RESULTS_DIR / "gpu_check_pytest.log"
    data: dict[str, Any] = {}

    def save() -> None:
        path = save_json("gpu_check.json", data)
        if not args.no_write:
            write_section("GPU check", section(data))
        out = os.environ.get("OUT")
        if out:
            for file in (path, log, RESULTS):
                if file.is_file():
                    shutil.copy(file, Path(out) / file.name)

    _part("environment", environment, data, save)
    if not args.skip_pytest:
        _part("pytest -m gpu", lambda: pytest_gpu(log, args.pytest_timeout), data, save)
    _part("AMP training", lambda: amp_training(batch, size, steps, smoke=args.quick), data, save)
    _part("model speed", lambda: model_speed(batch, size, steps, smoke=args.quick), data, save)
    _part("fractional-GPU search", lambda: fractional_search(300), data, save)
    quick = dict(counts=(1, 2), size=64, train=8, epochs=2, workers=0) if args.quick else {}
    _part("trainings sharing the GPU", lambda: shared_gpu(**quick, smoke=args.quick), data, save)
    failed = [name for name, part in data.items() if part.get("status") in ("error", "failed")]
    print(f"gpu_check: done; {'failed: ' + ', '.join(failed) if failed else 'no part failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
