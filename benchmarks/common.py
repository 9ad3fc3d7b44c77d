"""Shared pieces of the benchmarks: the machine description, RESULTS.md sections, running a search.

Pure helpers (``machine_info``, ``format_machine``, ``replace_section``, ``median``) import nothing
heavy, so the smoke test and ``--help`` stay fast. ``run_search`` runs ``automl run`` in a
subprocess exactly as a user would and returns the wall time with the search's ledger and the
per-trial ``timing.json`` files (written by ``segformer.engine.timing.StepTiming``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_DIR = ROOT / "benchmarks" / "results"  # plots and raw JSON of the last runs
LIBRARIES = ("torch", "lightning", "ray", "optuna", "mlflow", "onnxruntime")

# Order of the sections in RESULTS.md (run_all writes them in this order; unknown ones go last).
SECTION_ORDER = ("Machine", "Model speed", "Deploy speed", "Search overhead", "Search efficiency", "Search scaling",
                 "Search bookkeeping at scale", "GPU check", "Demo wall time", "Search quality", "Search against the spec, seed for seed")


# ------------------------------------------------------------------------------------------------
# machine
# ------------------------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _gpus() -> list[str]:
    """GPU names from nvidia-smi (no torch import); [] without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPUs, load and library versions (versions from package metadata)."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "")
    meminfo = _read("/proc/meminfo")
    mem_kib = next((int(l.split()[1]) for l in meminfo.splitlines() if l.startswith("MemTotal")), 0)
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": model or platform.processor() or "unknown CPU",
        "cores": os.cpu_count() or 0,
        "memory_gib": round(mem_kib / 2**20, 1),
        "gpus": _gpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load],
        "versions": versions,
    }


def format_machine(info: dict[str, Any]) -> str:
    """One paragraph for RESULTS.md."""
    gpus = ", ".join(info.get("gpus") or []) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    load = "/".join(f"{x:g}" for x in info.get("load_average", []))
    return (f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']:g} GiB RAM, GPU: {gpus}; "
            f"Python {info['python']}; {versions}. Load average when written: {load}.")


def machine_line() -> str:
    return format_machine(machine_info())


# ------------------------------------------------------------------------------------------------
# RESULTS.md
# ------------------------------------------------------------------------------------------------
def _section_rank(title: str) -> float:
    """Where a section goes in RESULTS.md: its place in SECTION_ORDER, a labelled one ("Title: label")
    just after its title, any other at the end."""
    for i, name in enumerate(SECTION_ORDER):
        if title == name:
            return i
        if title.startswith(name + ": "):
            return i + 0.5
    return len(SECTION_ORDER)


def replace_section(text: str, title: str, body: str) -> str:
    """`text` with the section `## title` replaced by `body` (which starts with that header).

    A missing section is inserted at its place in SECTION_ORDER; "<a title there>: label" goes after
    that title's section (and its earlier labels); other sections are untouched.
    """
    body = body.rstrip() + "\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: body, text, count=1).rstrip() + "\n"
    headers = [(m.start(), m.group(1)) for m in re.finditer(r"^## (.+)$", text, re.M)]
    mine = _section_rank(title)
    for start, name in headers:
        if _section_rank(name) > mine:
            return (text[:start] + body + text[start:]).rstrip() + "\n"
    return text.rstrip() + "\n\n" + body.rstrip() + "\n"


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or add) one section of RESULTS.md atomically."""
    from segformer.fileio import atomic_write_text

    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    atomic_write_text(path, replace_section(current, title, body))
    print(f"updated {path} ({title})")


def publish(json_name: str, data: Any, title: str, text: str, write: bool = True) -> None:
    """A benchmark's last step: its raw data to benchmarks/results/`json_name`, its section printed
    and (unless `write` is off: --no-write) written to RESULTS.md."""
    save_json(json_name, data)
    print(text)
    if write:
        write_section(title, text)


def save_json(name: str, data: Any) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    from segformer.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, default=str))
    return path


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    import statistics

    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# ------------------------------------------------------------------------------------------------
# searches
# ------------------------------------------------------------------------------------------------
def synth_data(out: Path, size: int, train: int, val: int, seed: int = 0, test: int | None = None, hard: bool = False,
               epochs: int | None = None) -> Path:
    """The synthetic dataset (TAO layout + spec.yaml), generated once per folder; `hard`, `test` and
    `epochs` as `segformer data synth` takes them (`make demo`: --hard, 64 px, 128/32/32, 10 epochs)."""
    if (out / "spec.yaml").is_file():
        return out
    from segformer.data.synth import generate

    more = {"epochs": epochs} if epochs is not None else {}
    return Path(generate(out, num_classes=4, size=size, train=train, val=val, test=min(val, 4) if test is None else test,
                         seed=seed, hard=hard, **more))


@dataclass
class SearchRun:
    """One finished `automl run`: its wall time, ledger and per-trial timing files."""

    results_dir: Path
    wall_s: float  # process start -> exit, measured by the caller
    started_at: float  # time.time() just before the process started
    ended_at: float
    returncode: int
    state: dict[str, Any]
    timings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # trial name -> timing.json runs
    log: str = ""

    @property
    def trials(self) -> list[dict[str, Any]]:
        return sorted(self.state.get("trials", {}).values(), key=lambda t: t.get("name", ""))


def run_search(results_dir: Path, spec: Path, args: Sequence[str], overrides: Sequence[str] = (),
               env: dict[str, str] | None = None, timeout_s: float = 3600, source: Path = ROOT) -> SearchRun:
    """`automl run` in a subprocess (as a user runs it), then read what it recorded.

    `source`: the checkout whose `automl` and `segformer` run (another commit's worktree for a
    before/after comparison in the same session); this one by default. The search's Ray folder
    (checkpoints, experiment state) is deleted once the search has been read.

    RAY_ADDRESS=local: without it `ray.init()` joins any cluster another process started with
    `ray start` on this machine (see the overhead section); `--address` still wins when given.
    """
    import shutil

    shutil.rmtree(results_dir, ignore_errors=True)
    results_dir.parent.mkdir(parents=True, exist_ok=True)
    # `python -c` with the source first on sys.path: an editable install of this checkout would
    # otherwise win over PYTHONPATH for another worktree.
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(source)!r}); import runpy; "
           "sys.argv[0] = 'automl'; runpy.run_module('automl.cli', run_name='__main__')", "run", "--skill", "segformer", "--policy", "auto", "-e", str(spec),
           "--results-dir", str(results_dir), *args, *overrides]
    # SEGFORMER_STEP_TIMING: the train action writes timing.json (segformer.engine.timing) for benchmarks only.
    full_env = {**os.environ, "PYTHONPATH": str(source), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
                "SEGFORMER_STEP_TIMING": "1"}
    if "--address" not in args:
        full_env.setdefault("RAY_ADDRESS", "local")
    full_env.update(env or {})
    log_path = results_dir.parent / f"{results_dir.name}.log"
    started = time.time()
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=str(results_dir.parent), env=full_env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout_s)
    wall = time.perf_counter() - t0
    ended = time.time()
    text = log_path.read_text(errors="replace")
    layout, state, timings = _read_search(results_dir, missing_ok=True)
    if proc.returncode != 0:
        print(f"warning: automl run exited {proc.returncode}; log {log_path}:\n{text[-2000:]}", file=sys.stderr)
    # Ray's copies of the trials' checkpoints (45 MB per improving epoch at demo size) are read by
    # nothing here: kept, one `make bench` filled tens of GB of disk.
    shutil.rmtree(layout.ray_storage, ignore_errors=True)
    return SearchRun(results_dir, wall, started, ended, proc.returncode, state, timings, text)


def _read_search(results_dir: Path, missing_ok: bool) -> tuple[Any, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """A search folder's layout, its ledger ({} when missing and `missing_ok`) and each trial's timing runs."""
    from automl.layout import Layout
    from segformer.engine.timing import TIMING_NAME, read_timing

    from dataclasses import asdict

    from automl.state import SearchState

    layout = Layout.of(results_dir)
    # The ledger with its journal (a search killed mid-way has its last trial events only there).
    state = {} if missing_ok and not layout.state_file.is_file() else asdict(SearchState.load(results_dir))
    timings = {t["name"]: read_timing(layout.trial_dir(t["name"]) / "train" / TIMING_NAME)
               for t in state.get("trials", {}).values()}
    return layout, state, timings


def load_search(results_dir: Path, wall_s: float = 0.0) -> SearchRun:
    """A finished search folder read back (for re-analysis without running it again)."""
    _, state, timings = _read_search(results_dir, missing_ok=False)
    starts = [t["started_at"] for t in state.get("trials", {}).values() if t.get("started_at")]
    # Without a measured wall time: the ledger's own span (state created -> last update; no imports).
    wall = wall_s or float(state.get("updated_at", 0.0)) - float(state.get("created_at", 0.0))
    return SearchRun(results_dir, wall, min(starts, default=0.0), state.get("updated_at", 0.0), 0, state, timings)


def epoch_events(run: SearchRun) -> list[dict[str, Any]]:
    """Every reported epoch of a search as {trial, epoch, value, at}, in completion order.

    The completion time is the validation end in the trial's timing.json (absolute clock); an
    epoch without one is placed by the ledger's trial start/end times (evenly spread).
    """
    events = []
    for trial in run.trials:
        name = trial.get("name", "")
        stamps = {}
        for timing_run in run.timings.get(name, []):
            for epoch in timing_run.get("epochs", []):
                if epoch.get("val_end_at") is not None:
                    stamps[int(epoch["epoch"]) + 1] = float(epoch["val_end_at"])  # ledger epochs are 1-based
        history = trial.get("history", [])
        start, end = trial.get("started_at"), trial.get("ended_at")
        for i, record in enumerate(history):
            epoch = int(record.get("epoch", i + 1))
            value = record.get(run.state.get("metric", "val_miou"))
            at = stamps.get(epoch)
            if at is None:  # no timing stamp: spread the trial's epochs evenly over its Ray run time
                at = (start + (end - start) * (i + 1) / len(history)) if start and end else float("inf")
            events.append({"trial": name, "epoch": epoch, "value": value, "at": at,
                           "baseline": bool(trial.get("is_baseline"))})
    events.sort(key=lambda e: e["at"])
    return events
