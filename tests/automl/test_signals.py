"""SIGTERM and Ctrl-C during a search: the main thread takes them, and where it cannot (blocked in C
code, as in a call to a GCS the signal stopped) or takes one and then does not end the block, the
watchdog saves the state and ends the process."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import ctypes, signal, sys, time
    from automl.signals import interrupt_on_sigterm

    def stuck():
        print("saved by the watchdog", flush=True)

    def blocked_in_c():  # C code that no signal interrupts (the kernel hands it to another thread)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        ctypes.CDLL(None).sleep(60)

    mode = sys.argv[1]
    try:
        with interrupt_on_sigterm(stuck=stuck, grace=1.0 if mode == "blocked" else 30.0, deadline=2.0):
            if mode == "blocked":
                print("ready", flush=True)
                blocked_in_c()
            try:
                print("ready", flush=True)
                time.sleep(60)
            except KeyboardInterrupt:
                print("main thread took it", flush=True)
                if mode == "stuck_after":
                    blocked_in_c()
                raise
        print("block ended", flush=True)
    except KeyboardInterrupt:
        sys.exit(3)
""")


def _run(mode: str) -> tuple[int, str, float]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the script did not start"
        assert proc.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_main_thread_blocked_in_c_code_leaves_the_signal_to_the_watchdog():
    code, out, took = _run("blocked")
    assert code == 130, out
    assert "saved by the watchdog" in out and "did not reach the main thread within 1 s" in out, out
    assert "main thread took it" not in out and took < 30, (out, took)


def test_a_main_thread_that_takes_the_signal_handles_it_alone():
    code, out, _ = _run("free")
    assert code == 3, out
    assert "main thread took it" in out and "saved by the watchdog" not in out, out


def test_a_main_thread_stuck_after_taking_the_signal_is_ended_at_the_deadline():
    code, out, took = _run("stuck_after")
    assert code == 130, out
    assert "main thread took it" in out and "did not stop within 2 s of the signal" in out, out
    assert "saved by the watchdog" in out and took < 30, (out, took)


def test_the_block_restores_the_handlers_and_the_wakeup_fd_and_ends_its_thread():
    from automl.signals import interrupt_on_sigterm

    outer_r, outer_w = os.pipe()
    os.set_blocking(outer_w, False)
    previous_fd = signal.set_wakeup_fd(outer_w)
    try:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with interrupt_on_sigterm(stuck=lambda: None):
            assert signal.getsignal(signal.SIGTERM) not in before
            assert any(t.name == "automl-signal-watchdog" for t in threading.enumerate())
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        assert signal.set_wakeup_fd(outer_w) == outer_w  # the outer one put back
        assert not any(t.name == "automl-signal-watchdog" for t in threading.enumerate())
    finally:
        signal.set_wakeup_fd(previous_fd)
        os.close(outer_r)
        os.close(outer_w)
