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
