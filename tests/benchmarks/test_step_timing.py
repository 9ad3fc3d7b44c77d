"""segformer.engine.timing.StepTiming on a toy Lightning model: what it records (no timing asserts)."""

from __future__ import annotations

import json

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from segformer.engine.timing import StepTiming, read_timing


class Toy(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_miou", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(path, epochs: int) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[StepTiming(path)], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=1)
    trainer.fit(Toy(), train_dataloaders=data, val_dataloaders=data)


def test_step_timing_records_steps_epochs_and_runs(tmp_path):
    path = tmp_path / "train" / "timing.json"
    _fit(path, epochs=2)
    runs = read_timing(path)
    assert len(runs) == 1
    run = runs[0]
    assert run["created_at"] <= run["fit_start_at"] <= run["first_batch_at"] <= run["fit_end_at"]
    assert [e["epoch"] for e in run["epochs"]] == [0, 1]
    for epoch in run["epochs"]:
        assert epoch["train_steps"] == 2 and epoch["val_steps"] == 2  # sanity-check batches are not counted
        assert epoch["train_step_s"] >= 0 and epoch["val_step_s"] >= 0 and epoch["val_miou"] == 0.5
        assert epoch["epoch_start_at"] <= epoch["val_start_at"] <= epoch["val_end_at"] <= epoch["epoch_end_at"]
    assert run["train_step_s"] == round(sum(e["train_step_s"] for e in run["epochs"]), 6)
    _fit(path, epochs=1)  # a second run in the same folder (resume) is appended
    assert len(json.loads(path.read_text())["runs"]) == 2
    assert not list(path.parent.glob(".*.tmp"))


def test_unwritable_folder_does_not_end_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fit(blocker / "timing.json", epochs=1)  # logs a warning, trains on
    assert read_timing(blocker / "timing.json") == []
