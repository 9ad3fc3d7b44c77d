"""CUDA out of memory during training becomes one clear message advising a smaller batch or image."""

from __future__ import annotations

import pytest

from relhelpers import TINY, assert_clean_failure, run_inprocess


@pytest.mark.gpu
def test_cuda_out_of_memory_advises_smaller_batch(dataset, tmp_path, capsys):
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    # mit_b5 at 2048 px with a batch the GPU cannot hold (activations alone exceed the memory)
    batch = max(64, int(total / 2**30))
    results = tmp_path / "results"
    outcome = run_inprocess(["train", "-e", str(dataset / "spec.yaml"), f"results_dir={results}", *TINY,
                             "model.backbone.type=mit_b5", "dataset.segment.img_size=2048",
                             f"dataset.segment.batch_size={batch}", "train.num_gpus=1", "train.amp=false",
                             "model.decode_head.in_channels=[64,128,320,512]"], capsys)
    assert_clean_failure(outcome, 1, ["out of memory", "dataset.segment.batch_size", "dataset.segment.img_size"],
                         results)


@pytest.mark.gpu
def test_cuda_out_of_memory_in_a_search_fails_that_trial_and_the_search_goes_on(dataset, tmp_path):
    """A grid over batch size: the spec's own small batch trains, a batch the GPU cannot hold at
    2048 px runs out of memory. That trial is FAILED with the advice in its error; the other
    finishes; the search itself ends normally."""
    import json
    import os
    import subprocess
    import sys

    import torch

    from relhelpers import REPO

    for module in ("ray", "optuna", "mlflow"):  # a GPU machine with torch alone (the lent one) runs the rest
        pytest.importorskip(module, reason=f"the search needs {module}")

    huge = max(64, int(torch.cuda.get_device_properties(0).total_memory / 2**30))
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "automl_algorithm: grid\n"
        "automl_hyperparameters: [dataset.segment.batch_size]\n"
        "override_automl_disabled_params: true\n"
        f"custom_param_ranges:\n  dataset.segment.batch_size: {{valid_options: [2, {huge}]}}\n"
    )
    results = tmp_path / "search"
    cmd = [sys.executable, "-m", "automl.cli", "run", "--skill", "segformer", "-e", str(dataset / "spec.yaml"),
           "--results-dir", str(results), "--settings", str(settings), "--max-epochs", "1", "--no-promote",
           "--gpus-per-trial", "1", "--max-failed-trials", "5",
           "model.backbone.type=mit_b5", "model.decode_head.in_channels=[64,128,320,512]",
           "dataset.segment.img_size=2048", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
           "train.amp=false"]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    trials = json.loads((results / "automl_state.json").read_text())["trials"].values()
    by_batch = {t["params"]["dataset.segment.batch_size"]: t for t in trials}
    assert by_batch[2]["status"] == "FINISHED", by_batch[2]
    oom = by_batch[huge]
    assert oom["status"] == "FAILED", oom
    assert "out of memory" in oom["error"] and "dataset.segment.batch_size" in oom["error"], oom["error"][-1000:]
