"""Shared test set-up: no network, headless plotting, GPU tests that skip with the reason, and a
free port for the servers tests start (MLflow, Ray, PostgreSQL, an S3 server, DDP)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable

import pytest

# Nothing may reach a model hub at run time; plots render without a display.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Ray starts its trial workers at nice 15. Beside processes busy at nice 0 on two cores (the other
# test worker training) they get next to no CPU: a resumed PBT search of a minute took five here,
# the likely reason CI's ran into its four-minute timeout (2026-12-02). The test workers share the
# machine on equal terms; the product keeps Ray's default.
os.environ.setdefault("RAY_worker_niceness", "0")
# One thread per process: the two test workers (and the commands they start) share the machine's
# cores, each training, exporting or scoring tiny models, where torch's default of a thread per core,
# spinning while it waits, oversubscribed them. The deploy and action tests took 17% less CPU time
# and wall time with it (2026-12-06, 2 cores: 147-148 against 178-202 CPU-s). Ray's trial workers have
# one already (Ray sets theirs from the CPUs a trial holds); the product keeps torch's default.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cuda_reason() -> str | None:
    """None when a CUDA device is usable, else why not."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU; none is visible on this machine (run with -m gpu on a GPU machine)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _cuda_reason()
    if reason is None:
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    """Lightning's package adds a handler writing to sys.stderr to its "lightning" logger when first
    imported. A test that imported it in-process under capsys bound that handler to capsys's stream,
    closed when the test ended; every later record through it printed "--- Logging error ---" and a
    traceback into the next in-process command's stderr (test_bad_input, then a policy-off run, in one
    worker: reproducible). Such handlers are pointed back at the session's stderr."""
    yield
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # (setStream would flush the closed one first)


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function that returns a TCP port on 127.0.0.1 nothing listens on at the moment."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def built_once(tmp_path_factory, request) -> Callable[[str, Callable[[Path], None]], Path]:
    """``built_once(name, build)``: a folder that ``build(folder)`` fills, built once per test run.

    For module fixtures that build something slow (a search folder) which the tests never change
    (they copy it to change it). ``--dist worksteal`` hands the tail of a module to the idle worker,
    which then built the module's fixtures a second time (test_parents_search's search folder: twice
    in each of two runs, 10-17 s each, 2026-12-06). Here the first worker builds under a lock in the
    folder both workers share, and the other uses it, or waits for it when it asks while the build
    runs (pytest-xdist's own recipe for session data). A build that failed leaves no marker and is
    tried again. Without xdist, a folder of this run's own."""
    from filelock import FileLock

    built: dict[str, Path] = {}
    shared = getattr(request.config, "workerinput", None) is not None  # an xdist worker

    def get(name: str, build: Callable[[Path], None]) -> Path:
        if name in built:
            return built[name]
        if not shared:
            folder = tmp_path_factory.mktemp(name)
            build(folder)
        else:
            folder = tmp_path_factory.getbasetemp().parent / name  # shared by this run's workers
            done = folder.with_name(name + ".built")
            with FileLock(str(folder) + ".lock"):
                if not done.is_file():
                    shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way
                    folder.mkdir(exist_ok=True)
                    build(folder)
                    done.touch()
        built[name] = folder
        return folder

    return get
