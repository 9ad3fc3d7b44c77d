"""Run every benchmark in benchmarks/ and rewrite benchmarks/RESULTS.md (`make bench`).

    python -m benchmarks.run_all [--small] [--only NAME,...] [--skip NAME,...]

Each benchmark writes its own section of RESULTS.md; this runner adds the machine description at
the top and a line per benchmark with its status and duration. A failing benchmark is reported
and the others still run (exit status 1 at the end). Full sizes take about an hour on 2 CPU cores
(search_efficiency is most of it); --small is a few minutes per benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from benchmarks.common import format_machine, machine_info, save_json, write_section

# name -> module with main(argv) -> int (model_speed and deploy_speed keep their script form too).
BENCHMARKS = {
    "model_speed": "benchmarks.model_speed.run",
    "deploy_speed": "benchmarks.deploy_speed.run",
    "search_overhead": "benchmarks.search_overhead",
    "search_efficiency": "benchmarks.search_efficiency",
    "search_scaling": "benchmarks.search_scaling",
    "search_scale": "benchmarks.search_scale",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="every benchmark in its small size")
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(BENCHMARKS))
    parser.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n and n not in args.skip.split(",")]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")

    status: dict[str, str] = {}
    for name in names:
        flags = (["--small"] if args.small else []) + (["--no-write"] if args.no_write else [])
        print(f"=== {name} {' '.join(flags)}", flush=True)
        started = time.perf_counter()
        try:
            code = importlib.import_module(BENCHMARKS[name]).main(flags)
            status[name] = "ok" if code == 0 else f"exit {code}"
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            status[name] = "failed (see the log)"
        status[name] += f", {time.perf_counter() - started:.0f} s"
        print(f"=== {name}: {status[name]}", flush=True)

    info = machine_info()
    save_json("machine.json", info)
    lines = ["## Machine", "", f"Last `python -m benchmarks.run_all{' --small' if args.small else ''}`: "
             f"{time.strftime('%Y-%m-%d %H:%M')}.", "", format_machine(info), "",
             "| benchmark | status |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in status.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("Machine", text)
    return 0 if all(s.startswith("ok") for s in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
