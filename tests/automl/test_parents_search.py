"""A search's folders as parent models (`segformer.parents`), and ``best/experiment.yaml`` as a spec
the deploy actions run as written.

The search folder is laid out the way the driver leaves it, without Ray's scheduling: a real
2-epoch train action in ``trial_000/``, Ray's copy of its best epoch's checkpoint in
``ray/search/trial_000/checkpoint_*/``, the trial folder pruned as the search prunes it, the ledger
``automl_state.json``, and ``best/`` from the real promotion chain (evaluate, export, ONNX Runtime
quantize) on a tiny synthetic dataset (32 px, 3 classes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from searchhelpers import TINY, search_options

OVERRIDES = (*TINY, "dataset.segment.workers=0", "train.num_epochs=2", "train.checkpoint_interval=1",
             "evaluate.batch_size=4", "export.input_height=32", "export.input_width=32")


@pytest.fixture(scope="module")
def search_dir(built_once) -> Path:
    """The search folder, shared by the xdist workers: the tests read it, and copy it to change it."""
    return built_once("parents_search", _build_search) / "search"


def _build_search(root: Path) -> None:
    from automl.callbacks import prune_trial_dir
    from automl.layout import CHECKPOINT_FILE, Layout, trial_name
    from automl.options import PromotionConfig
    from automl.promote import promote
    from automl.state import FINISHED, SearchState, TrialRecord
    from automl.trial import base_config
    from segformer.actions import train
    from segformer.data.synth import generate
    from segformer.engine.checkpoint_files import checkpoint_name

    dataset = generate(root / "synth" / "data", num_classes=3, size=32, train=8, val=4, test=4)
    spec = dataset / "spec.yaml"
    layout = Layout.of(root / "search")
    name = trial_name(0)
    trial_dir = layout.trial_dir(name)
    result = train.run(base_config(str(spec), [*OVERRIDES, f"train.results_dir={trial_dir / 'train'}"], trial_dir),
                       quiet=True)
    best = max(result.history, key=lambda r: r["val_miou"])
    ray_copy = layout.ray_experiment / name / "checkpoint_000001"
    ray_copy.mkdir(parents=True)
    os.link(result.results_dir / checkpoint_name(best["epoch"], best["step"]), ray_copy / CHECKPOINT_FILE)
    prune_trial_dir(trial_dir)

    state = SearchState(results_dir=str(layout.root), skill="segformer", algorithm="bayesian", metric="val_miou",
                        mode="max", settings=search_options(layout.root, spec, OVERRIDES).to_dict(), spec=str(spec),
                        overrides=list(OVERRIDES))
    record = TrialRecord(trial_id="t0", name=name, params={}, status=FINISHED, best_value=best["val_miou"],
                         best_epoch=best["epoch"] + 1, results_dir=str(trial_dir), checkpoint=str(ray_copy))
    state.trials[record.trial_id] = record
    state.save()
    report = promote(state, record, None, PromotionConfig(trt=False), echo=lambda _: None)
    assert all(report["steps"][s]["status"] == "done" for s in ("evaluate", "export", "quantize")), report


def _cfg(search_dir: Path, out: Path, *overrides: str):
    from segformer.config import load_config

    state = json.loads((search_dir / "automl_state.json").read_text())
    return load_config(state["spec"], [f"results_dir={out}", *OVERRIDES, *overrides])


def _write_ledger(search: Path, state: dict) -> None:
    """A new automl_state.json in ``search``: never through a hard link into the fixture's own."""
    (search / "automl_state.json").unlink(missing_ok=True)
    (search / "automl_state.json").write_text(json.dumps(state))


def test_names_match_what_automl_writes():
    """segformer never imports automl: its copies of automl's names must stay equal to automl's."""
    from automl import layout, promote
    from segformer import parents

    assert parents.SEARCH_STATE_FILE == layout.STATE_FILE and parents.BEST_DIR == layout.BEST_DIR
    assert parents.RAY_TRIALS_DIR == f"{layout.RAY_DIR}/{layout.EXPERIMENT_NAME}"
    assert parents.RAY_CHECKPOINT_FILE == layout.CHECKPOINT_FILE
    assert parents.PROMOTED_CHECKPOINT == promote.MODEL_FILE and promote.ONNX_FILE == "export/segformer.onnx"
    assert parents.TRIAL_NAME.fullmatch(layout.trial_name(12)) and layout.trial_number("trial_012") == 12


def test_trial_folder_takes_its_best_epoch_as_the_search_recorded_it(search_dir, tmp_path, capsys):
    from segformer.parents import resolve_parents

    trial = search_dir / "trial_000"
    ray_copy = search_dir / "ray" / "search" / "trial_000" / "checkpoint_000001" / "checkpoint.ckpt"
    cfg = resolve_parents(_cfg(search_dir, tmp_path, f"export.checkpoint={trial}"), "export")
    assert cfg.export.checkpoint == str(ray_copy)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"export.checkpoint: {trial} is an AutoML trial folder; using {ray_copy} (its best "
                           "epoch's checkpoint, as the search recorded it in automl_state.json: val_miou "), line


def test_moved_search_folder_still_finds_the_trials_checkpoint(search_dir, tmp_path):
    """The ledger's absolute path is gone: the same checkpoint under this folder's ray/search/; with no
    recorded checkpoint at all, the trial's own train/ (pruned to its latest)."""
    from segformer.parents import resolve_parents

    moved = tmp_path / "moved"
    shutil.copytree(search_dir, moved, copy_function=os.link,
                    ignore=shutil.ignore_patterns("best", "mlartifacts", "mlflow.db"))
    state = json.loads((moved / "automl_state.json").read_text())
    record = next(iter(state["trials"].values()))
    record["checkpoint"] = str(tmp_path / "gone" / Path(record["checkpoint"]).name)
    _write_ledger(moved, state)
    cfg = resolve_parents(_cfg(search_dir, tmp_path, f"export.checkpoint={moved / 'trial_000'}"), "export", quiet=True)
    assert cfg.export.checkpoint == str(moved / "ray/search/trial_000/checkpoint_000001/checkpoint.ckpt")

    record["checkpoint"] = None
    _write_ledger(moved, state)
    cfg = resolve_parents(_cfg(search_dir, tmp_path, f"export.checkpoint={moved / 'trial_000'}"), "export", quiet=True)
    assert cfg.export.checkpoint == str(moved / "trial_000/train/segformer_model_latest.pth")


def test_renamed_search_folder_never_takes_the_new_search_at_its_old_path(search_dir, tmp_path):
    """A search made at old/, renamed to renamed/, and a new search made at old/: the ledger of
    renamed/ still names old/'s checkpoint folders, which are now the new search's. renamed/trial_000
    is its own checkpoint (under renamed/), and with that gone its own train/, never old/'s; so is the
    promotion's pick (`automl.promote.best_checkpoint`, the same rule)."""
    from automl.promote import best_checkpoint
    from automl.state import SearchState
    from segformer.parents import resolve_parents

    old, renamed = tmp_path / "old", tmp_path / "renamed"
    shutil.copytree(search_dir, old, copy_function=os.link,
                    ignore=shutil.ignore_patterns("best", "mlartifacts", "mlflow.db"))
    state = json.loads((old / "automl_state.json").read_text())
    record = next(iter(state["trials"].values()))
    relative = Path(record["checkpoint"]).relative_to(search_dir)  # ray/search/trial_000/checkpoint_000001
    record["checkpoint"] = str(old / relative)  # as the search wrote it while at old/
    _write_ledger(old, state)
    old.rename(renamed)
    (old / relative).mkdir(parents=True)  # the new search at the old path, with a checkpoint of its own
    (old / relative / "checkpoint.ckpt").write_bytes(b"the new search's weights")
    _write_ledger(old, state)

    def picked() -> str:
        cfg = _cfg(search_dir, tmp_path, f"export.checkpoint={renamed / 'trial_000'}")
        return resolve_parents(cfg, "export", quiet=True).export.checkpoint

    loaded = SearchState.load(renamed)
    own = renamed / relative / "checkpoint.ckpt"
    assert picked() == str(own) and best_checkpoint(loaded, loaded.by_name("trial_000")) == own
    own.unlink()
    latest = renamed / "trial_000/train/segformer_model_latest.pth"
    assert picked() == str(latest) and best_checkpoint(loaded, loaded.by_name("trial_000")) == latest


def test_search_folder_and_best_give_the_promoted_models(search_dir, tmp_path, capsys):
    from segformer.parents import resolve_parents

    best = search_dir / "best"
    cfg = resolve_parents(_cfg(search_dir, tmp_path, f"evaluate.checkpoint={search_dir}",
                               f"inference.checkpoint={best}"), "evaluate")
    assert cfg.evaluate.checkpoint == str(best / "model.pth")
    assert capsys.readouterr().out.strip() == (
        f"evaluate.checkpoint: {search_dir} is an AutoML search folder; using {best / 'model.pth'} (its promoted "
        "model in best/: the promoted checkpoint: the best trial at its best epoch)")
    cfg = resolve_parents(_cfg(search_dir, tmp_path, f"inference.checkpoint={best}", "inference.is_quantized=true"),
                          "inference", quiet=True)
    assert cfg.inference.checkpoint == str(best / "quantize" / "quantized_model_onnxruntime.onnx")
    # int8 too: the promotion's quantized model is ONNX Runtime's CPU one (uint8), which TensorRT cannot
    # build; the float model, calibrated, is what gen_trt_engine takes
    for data_type, expected in (("fp16", "export/segformer.onnx"), ("int8", "export/segformer.onnx")):
        cfg = resolve_parents(_cfg(search_dir, tmp_path, f"gen_trt_engine.onnx_file={search_dir}",
                                   f"gen_trt_engine.tensorrt.data_type={data_type}"), "gen_trt_engine", quiet=True)
        assert cfg.gen_trt_engine.onnx_file == str(best / expected)


def test_search_folder_as_evaluate_checkpoint_on_the_command_line(search_dir, tmp_path, capsys):
    from segformer.cli import main

    state = json.loads((search_dir / "automl_state.json").read_text())
    code = main(["evaluate", "-e", state["spec"], f"results_dir={tmp_path}", *OVERRIDES,
                 f"evaluate.checkpoint={search_dir}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert f"using {search_dir / 'best' / 'model.pth'}" in captured.out
    results = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert results["model"] == str(search_dir / "best" / "model.pth")


def test_search_folder_without_best_says_so(search_dir, tmp_path):
    from segformer.errors import SegformerError
    from segformer.parents import resolve_parents

    bare = tmp_path / "search"
    bare.mkdir()
    shutil.copy2(search_dir / "automl_state.json", bare)
    with pytest.raises(SegformerError, match=rf"^evaluate\.checkpoint: {bare} is an AutoML search folder without a "
                                             rf"promoted model \({bare / 'best'} does not exist"):
        resolve_parents(_cfg(search_dir, tmp_path, f"evaluate.checkpoint={bare}"), "evaluate")


def test_best_experiment_yaml_runs_evaluate_export_and_quantize_as_written(search_dir, tmp_path, capsys):
    """`segformer <action> -e best/experiment.yaml` with no override: every input it names is in best/."""
    from segformer.cli import main

    written = yaml.safe_load((search_dir / "best" / "experiment.yaml").read_text())
    # paths in best/ are written relative to results_dir, so that the folder can move (below)
    assert written["results_dir"] == str(search_dir / "best")
    # The actions write into best/: they run in a copy of the search (hard links; each write replaces
    # a file, never changes one), whose spec names the copy, as the promotion would have written it.
    search = tmp_path / "search"
    shutil.copytree(search_dir, search, copy_function=os.link)
    best = search / "best"
    spec = best / "experiment.yaml"
    spec.unlink()
    spec.write_text((search_dir / "best" / "experiment.yaml").read_text().replace(str(search_dir), str(search)))
    assert written["export"]["checkpoint"] == written["evaluate"]["checkpoint"] == "${results_dir}/model.pth"
    assert written["quantize"]["model_path"] == written["gen_trt_engine"]["onnx_file"] == "${results_dir}/export/segformer.onnx"
    for action in ("evaluate", "export", "quantize"):
        code = main([action, "-e", str(spec)])
        captured = capsys.readouterr()
        assert code == 0, (action, captured.err[-3000:])
    assert (best / "export" / "segformer.onnx").is_file()
    assert (best / "quantize" / "quantized_model_onnxruntime.onnx").is_file()


def test_a_moved_best_folder_runs_with_one_override(search_dir, tmp_path, capsys):
    """best/ copied elsewhere (another machine, an archive): `results_dir=<new place>` points every
    input and output of best/experiment.yaml there; the original folder is not read."""
    from segformer.cli import main

    # best/ as the promotion left it, at a place of this test's own (the fixture's folder is shared)
    original = tmp_path / "search" / "best"
    shutil.copytree(search_dir / "best", original)
    spec = original / "experiment.yaml"
    spec.write_text(spec.read_text().replace(str(search_dir / "best"), str(original)))
    moved = tmp_path / "elsewhere" / "best"
    shutil.copytree(original, moved)
    original.rename(original.with_name("best.away"))  # the original is not there to read
    code = main(["evaluate", "-e", str(moved / "experiment.yaml"), f"results_dir={moved}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert (moved / "evaluate" / "results.json").is_file()
