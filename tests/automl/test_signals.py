"""SIGTERM and Ctrl-C during a search: the main thread takes them, and where it cannot (blocked in C
code, as in a call to a GCS the signal stopped), the watchdog saves the state and ends the process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import ctypes, os, signal, sys, time
    from automl.signals import interrupt_on_sigterm

    def stuck():
        print("saved by the watchdog", flush=True)

    blocked = sys.argv[1] == "blocked"
    try:
        with interrupt_on_sigterm(stuck=stuck, grace=1.0):
            if blocked:  # the main thread in C code that no signal interrupts (the kernel hands the
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # signal to another thread)
            print("ready", flush=True)
            if blocked:
                ctypes.CDLL(None).sleep(60)
            else:
                time.sleep(60)
        print("block ended", flush=True)
    except KeyboardInterrupt:
        print("main thread took it", flush=True)
        sys.exit(3)
""")


def _run(mode: str) -> tuple[int, str, float]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out, time.monotonic() - sent


def test_a_main_thread_blocked_in_c_code_leaves_the_signal_to_the_watchdog():
    code, out, took = _run("blocked")
    assert code == 130, out
    assert "saved by the watchdog" in out and "did not reach the main thread" in out, out
    assert "main thread took it" not in out and took < 20, (out, took)


def test_a_main_thread_that_takes_the_signal_handles_it_alone():
    code, out, _ = _run("free")
    assert code == 3, out
    assert "main thread took it" in out and "saved by the watchdog" not in out, out


def test_the_block_restores_the_handlers_and_the_wakeup_fd():
    from automl.signals import interrupt_on_sigterm

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interrupt_on_sigterm(stuck=lambda: None):
        assert signal.getsignal(signal.SIGTERM) not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert signal.set_wakeup_fd(-1) == -1  # none left behind
