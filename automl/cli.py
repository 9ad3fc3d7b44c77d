"""`automl`: run, resume, status and ui for SegFormer AutoML searches.

    automl run --skill segformer --policy auto -e spec.yaml [key=value ...]
    automl resume RESULTS_DIR
    automl status RESULTS_DIR [--watch SECONDS] [--all] [--json]
    automl ui RESULTS_DIR [--port 5000]

`--help` answers without importing torch, Ray or MLflow: every heavy import is inside a command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from automl.layout import Layout
from automl.options import ALGORITHMS
from segformer.errors import SegformerError
from automl.signals import EXIT_INTERRUPTED, flush_streams, interrupt_on_sigterm, stop_descendants


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl", description="AutoML for SegFormer (TAO-compatible specs and skills).")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="search hyperparameters (or train once when the policy says so)")
    run.add_argument("-e", "--experiment-spec", dest="spec", help="spec YAML (default: the skill's train template)")
    run.add_argument("overrides", nargs="*", help="key=value spec overrides applied to every trial")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--skill", default=None, help="our skill by name (default: segformer)")
    where.add_argument("--skill-dir", help="a skill folder in NVIDIA's layout (schemas/, references/)")
    run.add_argument("--policy", default="auto", choices=("auto", "on", "off"), help="automl_policy for this run")
    run.add_argument("--settings", help="AutoML settings file (YAML/JSON; TAO keys accepted); flags win")
    run.add_argument("--algorithm", help=" | ".join(ALGORITHMS))
    run.add_argument("--budget", type=float, help="epochs for the whole search, re-checks included, in trainings of the "
                                                   "spec (train.num_epochs); default 10. --max-trials replaces it")
    run.add_argument("--recheck", action=argparse.BooleanOptionalAction, default=None,
                     help="re-train the leader and the baseline with another seed before promoting (default: on with a budget)")
    run.add_argument("--max-trials", type=int, help="trials in all, the baseline included (no epoch budget then)")
    run.add_argument("--max-epochs", type=int, help="a trial's epoch budget (default: the spec's train.num_epochs), "
                                                   "in units of epoch_multiplier epochs (settings file; default 1)")
    run.add_argument("--time-budget", type=float, dest="time_budget_s", help="seconds for the whole search")
    run.add_argument("--max-concurrent", type=int, help="trials at the same time")
    run.add_argument("--cpus-per-trial", type=float,
                     help="CPUs per trial (default: 1, or a share of the cores the budget leaves idle, on CPUs only)")
    run.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU")
    run.add_argument("--only", help="comma-separated spec keys to search instead of the schema's defaults "
                                     "(TAO automl_hyperparameters)")
    deploy = run.add_argument_group("deploy-aware search (README: 'Deploy-aware search')")
    deploy.add_argument("--backbones", help="comma-separated model.backbone.type options to search (e.g. mit_b0,mit_b1)")
    deploy.add_argument("--img-sizes", help="comma-separated dataset.segment.img_size options (the export follows it)")
    deploy.add_argument("--embed-dims", help="comma-separated decoder embed_dim options")
    deploy.add_argument("--precisions", help="comma-separated deploy precisions: fp32, int8 (fp16 with --latency-runtime tensorrt)")
    deploy.add_argument("--pretrained", action="append", metavar="BACKBONE=PATH",
                        help="local pretrained weights of a searched backbone (repeat per backbone)")
    deploy.add_argument("--max-latency-ms", type=float, help="hard latency limit on the deployment runtime")
    deploy.add_argument("--max-latency-ratio", type=float,
                        help="the limit as a share of your spec's own model's latency (0.5: twice as fast)")
    deploy.add_argument("--latency-runtime", choices=("onnxruntime", "torch", "tensorrt"),
                        help="where latency is measured (default onnxruntime on the CPU; tensorrt: on the GPU, needs TensorRT)")
    deploy.add_argument("--latency-batch", type=int, help="batch size latency is measured at (default 1)")
    deploy.add_argument("--latency-threads", type=int, help="threads latency is measured with (default: every core)")
    deploy.add_argument("--objectives", help="val_miou:max,latency_ms:min (or the cost alone): promote from the Pareto front "
                                             "(its knee, the most accurate under --max-latency-ms, or the best weighted "
                                             "score with NVIDIA's weights from --settings); pareto.json and a plot")
    deploy.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                        help="measure every trial's latency (default: with a structure search or --max-latency-ms)")
    run.add_argument("--metric", help="metric reported by the train action (default val_miou)")
    run.add_argument("--mode", choices=("max", "min"))
    run.add_argument("--seed", type=int)
    run.add_argument("--max-failed-trials", type=int, help="stop the search after this many failed trials")
    run.add_argument("--address", help="Ray cluster address, HOST:PORT of its head (default: start a local Ray); "
                                    "a cluster with token authentication takes the token from RAY_AUTH_TOKEN, "
                                    "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
    run.add_argument("--num-cpus", type=int, help="local Ray: CPUs to use (default: all)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///RESULTS_DIR/mlflow.db)")
    run.add_argument("--results-dir", help="search folder (default: a results_dir=PATH override, else the spec's "
                                           "results_dir, else ./automl_results)")
    run.add_argument("--dry-run", action="store_true", help="print the space and the first trials, train nothing")
    run.add_argument("--live", action="store_true", help="also print a line per trial event")
    run.add_argument("--no-progress", action="store_true",
                     help="no live table on a terminal, no status block every 30 s elsewhere")
    run.add_argument("--no-promote", action="store_true", help="do not evaluate/export/quantize the best trial")
    for step in ("evaluate", "export", "quantize", "trt"):
        run.add_argument(f"--skip-{step}", action="store_true", help=f"promotion: skip {step}")
    run.add_argument("--register-model", help="MLflow registered model name (default: segformer)")
    run.add_argument("--alias", help="registry alias of the promoted version (default: champion)")

    resume = sub.add_parser("resume", help="continue an interrupted search")
    resume.add_argument("results_dir")
    resume.add_argument("--address", help="Ray cluster address (default: as the search was started; its token "
                                       "as for run)")
    resume.add_argument("--live", action="store_true", help="also print a line per trial event")
    resume.add_argument("--no-progress", action="store_true", help="no live table, no status block every 30 s")

    status = sub.add_parser("status", help="the trial table of a search (running or done)")
    status.add_argument("results_dir")
    status.add_argument("--watch", type=float, help="refresh every N seconds while the search runs")
    status.add_argument("--all", action="store_true", dest="everything",
                        help="every trial (a search of more than 40 shows the running ones and the best)")
    status.add_argument("--json", action="store_true",
                        help="the search as TAO's AutoML runner returns it (best, progress, baseline, final_evaluation, "
                             "history, pareto_front; results.json)")

    report = sub.add_parser("report", help="write the report of a search that did not end (killed, interrupted) now")
    report.add_argument("results_dir")

    ui = sub.add_parser("ui", help="open the MLflow UI of a search on 127.0.0.1")
    ui.add_argument("results_dir")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; keep it local)")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from automl.runner import run
    from automl.settings import load_settings, options_from_settings

    cli = {k: getattr(args, k) for k in ("algorithm", "budget", "recheck", "max_trials", "max_epochs", "time_budget_s", "max_concurrent",
                                         "cpus_per_trial", "gpus_per_trial", "metric", "mode", "seed", "address",
                                         "num_cpus", "tracking_uri", "max_failed_trials")}
    cli["register_model"], cli["alias"] = args.register_model, args.alias
    if args.only:
        cli["only"] = [key.strip() for key in args.only.split(",") if key.strip()]
    cli.update(_deploy_flags(args))
    for flag, option in (("no_promote", "promote"), ("skip_evaluate", "evaluate"), ("skip_export", "export"),
                         ("skip_quantize", "quantize"), ("skip_trt", "trt")):
        if getattr(args, flag):
            cli[option] = False
    results_dir, overrides = search_folder(args.results_dir, args.spec, args.overrides)
    flags = {option: "--" + option.replace("_", "-") for option in cli} | {"time_budget_s": "--time-budget"}
    opts = options_from_settings(
        load_settings(args.settings) if args.settings else None, cli, flags, results_dir=results_dir, spec=args.spec,
        overrides=overrides, skill=None if args.skill_dir else (args.skill or "segformer"),
        skill_dir=args.skill_dir, policy=args.policy,
    )
    if args.budget is not None and not opts.search.budgeted:
        why = ("PBT trains its population (automl_population_size in --settings), each member its epochs" if opts.search.algorithm == "pbt" else
               f"max_trials={opts.search.max_trials} (--max-trials, or automl_max_recommendations in --settings) sets "
               f"the trial count instead")
        print(f"automl: --budget {args.budget:g} is not used: {why}")
    if opts.search.algorithm == "pbt" and opts.search.max_trials:
        print(f"automl: max_trials={opts.search.max_trials} (--max-trials, or automl_max_recommendations in --settings) is "
              f"not used: PBT trains its population of {opts.search.population_size} (automl_population_size in --settings)")
    outcome = run(opts, dry_run=args.dry_run, live=args.live, progress=not args.no_progress)
    if outcome.mode == "search" and (outcome.best is None or outcome.stopped_by_failures):
        return 1  # nothing trained, or the failure limit ended the search (results so far are kept)
    return 0


def search_folder(flag: str | None, spec: str | None, overrides: list[str] | tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Where the search writes, as a TAO user expects it: --results-dir, else a `results_dir=PATH`
    override (the way every `segformer` action is pointed elsewhere), else the spec's own top-level
    results_dir, else ./automl_results. A `results_dir=` override is taken out of the trials'
    overrides: each trial writes under the search folder, and ${results_dir} in the spec must
    resolve to the trial's folder, not to the one the user named. Says where on stdout when the
    folder did not come from the flag."""
    from segformer.config.loader import _parse_value, read_spec

    named = [o for o in overrides if str(o).partition("=")[0].strip() == "results_dir"]
    rest = tuple(o for o in overrides if o not in named)
    if flag:
        if named and str(_parse_value(named[-1].partition("=")[2]) or "") not in ("", flag):
            print(f"automl: {named[-1]} is overridden by --results-dir {flag}")
        return flag, rest
    if named:
        value = _parse_value(named[-1].partition("=")[2])
        if value not in (None, ""):
            print(f"automl: search folder {value} (from {named[-1]})")
            return str(value), rest
    if spec and Path(spec).is_file():
        try:
            value = read_spec(spec).get("results_dir")
        except Exception:  # noqa: BLE001 - an unreadable spec is reported by the run, with its own message
            value = None
        if isinstance(value, str) and value.strip() and "${" not in value:
            print(f"automl: search folder {value} (the spec's results_dir; --results-dir chooses another)")
            return value, rest
    return "automl_results", rest


def _deploy_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The deploy-aware search's flags as options (`automl.options.SearchConfig`)."""
    from automl.options import SearchError

    out: dict[str, Any] = {"max_latency_ms": args.max_latency_ms, "max_latency_ratio": args.max_latency_ratio, "latency_runtime": args.latency_runtime,
                           "latency_batch": args.latency_batch, "latency_threads": args.latency_threads,
                           "latency": args.latency, "objectives": args.objectives}
    structure: dict[str, list[Any]] = {}
    for flag, key, kind in (("backbones", "model.backbone.type", str), ("img_sizes", "dataset.segment.img_size", int),
                            ("embed_dims", "model.decode_head.decoder_params.embed_dim", int),
                            ("precisions", "deploy.precision", str)):
        text = getattr(args, flag)
        if text:
            try:
                structure[key] = [kind(v.strip()) for v in text.split(",") if v.strip()]
            except ValueError:
                raise SearchError(f"--{flag.replace('_', '-')} {text!r}: give comma-separated integers, e.g. 256,512") from None
    if structure:
        out["structure"] = structure
    if args.pretrained:
        pairs = [item.partition("=") for item in args.pretrained]
        bad = [item for item, (k, eq, v) in zip(args.pretrained, pairs) if not (k and eq and v)]
        if bad:
            raise SearchError(f"--pretrained {bad[0]!r}: write BACKBONE=PATH, e.g. --pretrained mit_b1=/models/mit_b1.pth")
        out["pretrained_backbones"] = {k.strip(): v.strip() for k, _, v in pairs}
    return out


def ui_command(results_dir: str | Path, port: int, host: str = "127.0.0.1", store: str | None = None) -> list[str]:
    """The `mlflow ui` command for a search's store (its embedded one unless ``store``; one worker:
    ready in ~6 s, ~0.5 GB)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store or Layout.of(results_dir).default_tracking_uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def ui_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _view_lines(results: Path, root: str) -> list[str]:
    """The search's own views in the UI (`automl.mlflow_view`): its trials best first, and the charts."""
    from automl.mlflow_view import view_key, view_path
    from automl.state import SearchState

    try:
        state = SearchState.load(results)
    except Exception:  # noqa: BLE001 - no ledger (or an unreadable one): the UI still opens
        return []
    if not (state.mlflow_parent_run_id and state.mlflow_experiment_id):
        return []
    key = view_key(state.mlflow_parent_run_id)
    return [f"  trials, best first: {root}{view_path(state.mlflow_experiment_id, key)}",
            f"  {state.metric} against the parameters: {root}{view_path(state.mlflow_experiment_id, key, charts=True)}"]


def _port_in_use(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on ('' when it can)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _cmd_report(args: argparse.Namespace) -> int:
    """`automl report DIR`: the report a search writes when it ends, of one that did not (a killed
    driver, a Ctrl-C, a search cut by its machine), from its ledger; refused while a driver runs it."""
    from automl.report import write_report
    from automl.state import SearchState, driver_running, observed

    if driver_running(args.results_dir):
        print(f"automl report: a driver is running the search in {args.results_dir}; it writes the report when it "
              f"ends (automl status {shlex.quote(str(args.results_dir))} shows the trials now)", file=sys.stderr)
        return 2
    path = write_report(observed(SearchState.load(args.results_dir)))
    print(f"automl: report of the search as it stands: {path} ({path.with_suffix('.html').name} beside it)")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from automl.state import SearchState

    layout = Layout.of(args.results_dir)
    results = layout.root
    store = None
    if not layout.db_file.is_file():  # not the folder's own store: the one it was tracked in (--tracking-uri)
        try:
            store = SearchState.load(results).mlflow_tracking_uri
        except Exception:  # noqa: BLE001 - no ledger (or an unreadable one): nothing to open
            store = None
    if store and "://" in store and not store.startswith(("sqlite:", "file:")):
        print(f"automl ui: {results} was tracked on {store}: open that server", file=sys.stderr)
        return 2
    local = Path(store[len("sqlite:///"):] if store.startswith("sqlite:///") else store.removeprefix("file:")) \
        if store else layout.db_file
    if not local.exists():
        print(f"automl ui: no MLflow store in {results} (expected {local}); "
              f"for a search tracked on a server, open that server instead", file=sys.stderr)
        return 2
    busy = _port_in_use(args.host, args.port)
    if busy:  # the server would fail after the links below were printed, and they would open the other one
        print(f"automl ui: cannot listen on {args.host}:{args.port} ({busy}); choose another port with --port",
              file=sys.stderr)
        return 2
    print(f"automl ui: MLflow UI for {results} on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    for line in _view_lines(results, f"http://{args.host}:{args.port}/"):
        print(line, flush=True)
    # The server runs in its own process group; stopping `automl ui` (Ctrl-C or SIGTERM) stops the
    # whole group, so no server process outlives the command.
    server = subprocess.Popen(ui_command(results, args.port, args.host, store), env=ui_env(), start_new_session=True)
    try:
        with interrupt_on_sigterm():
            return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """key=value overrides may also follow the flags (`run -e s.yaml a=1 --max-trials 3 b=2`), as
    every segformer action takes them."""
    from segformer.cli import parse_with_overrides

    return parse_with_overrides(_parser(), argv)


EXIT_BROKEN_PIPE = 141  # the shell's code for a writer whose reader closed the pipe (128 + SIGPIPE)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "resume":
            from automl.runner import resume

            outcome = resume(args.results_dir, live=args.live, address=args.address, progress=not args.no_progress)
            return 0 if outcome.best is not None else 1
        if args.command == "status" and args.json:
            import json

            from automl.results import starting_results, tao_results
            from automl.state import SearchState, observed, starting

            results = (starting_results() if starting(args.results_dir)
                       else tao_results(observed(SearchState.load(args.results_dir))))
            print(json.dumps(results, indent=1, default=str))
            return 0
        if args.command == "status":
            from automl.console import print_status

            return print_status(args.results_dir, watch=args.watch, everything=args.everything)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "ui":
            return _cmd_ui(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as err:  # our errors: SearchError, SettingsError, SkillError, ConfigError
        print(f"automl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except SegformerError as err:  # the data the spec points at (DataError), found before any trial
        print(f"automl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`automl status | head`): not a folder problem
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return EXIT_BROKEN_PIPE
    except OSError as err:  # the disk, not the input: a full disk, a folder that became unwritable
        import errno

        where = f" ({err.filename})" if err.filename else ""
        advice = ("free disk space or give --results-dir on a disk with room; `automl resume` continues the search"
                  if err.errno == errno.ENOSPC else "check the folder and its permissions")
        print(f"automl {args.command}: error: {err.strerror or err}{where}; {advice}", file=sys.stderr)
        return 1
    return 2


def entry() -> None:
    """Console-script entry point.

    A search cut by Ctrl-C or SIGTERM has saved its state when `main` returns. The process then ends
    without Python's exit handlers: a SIGTERM to the whole process group has stopped Ray's own
    processes too, and Ray's exit handler would wait for them without a limit. What this process
    started and is still running (a SIGTERM to the driver alone reaches none of it) is stopped first.
    """
    from segformer.errors import plain_warnings

    plain_warnings("automl")
    code = main()
    if code == EXIT_INTERRUPTED:
        flush_streams()
        stop_descendants()  # the local Ray it started, which no exit handler will stop now
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
