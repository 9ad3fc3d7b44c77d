"""Train action: results layout, safe checkpoints, exact resume, clear data errors, GPU modes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segformer.actions import train
from segformer.engine.checkpoint_files import LATEST_NAME
from segformer.engine.timing import STEP_TIMING_ENV, TIMING_NAME, read_timing
from segformer.errors import DataError, SegformerError
from segformer.model import load_model_weights


def test_results_layout_and_status(trained):
    """A plain run (SEGFORMER_STEP_TIMING unset) writes TAO's layout and no benchmark timing.json."""
    cfg, result = trained
    out = result.results_dir
    assert out == Path(cfg.results_dir) / "train"
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert names == ["experiment.yaml", "model_epoch_000_step_00002.pth", "model_epoch_001_step_00004.pth",
                     LATEST_NAME, "status.json"]
    lines = [json.loads(line) for line in (out / "status.json").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]
    for record in lines:
        assert {"epoch", "val_miou", "val_loss", "train_loss", "lr", "seconds", "val_macc"} <= set(record)
        assert 0.0 <= record["val_miou"] <= 1.0
        # TAO's status logger's fields too, which TAO's tools read (kpi, status, message; max_epoch: the last index)
        assert record["kpi"]["val_miou"] == record["val_miou"] and record["graphical"]["train_loss"] == record["train_loss"]
        assert record["verbosity"] == "INFO" and record["max_epoch"] == 1
        assert record["date"].count("/") == 2 and record["time"].count(":") == 2
    # each epoch RUNNING, and the last says the training ended (tools poll a status file for SUCCESS);
    # still one line per epoch
    assert [(r["status"], r["message"]) for r in lines] == [("RUNNING", "Training loop in progress"),
                                                            ("SUCCESS", "Training finished successfully")]
    assert lines[-1]["eta"] == "0:00:00"
    assert result.history == tuple(lines)
    assert result.best_miou == max(r["val_miou"] for r in lines)
    assert result.last_checkpoint == out / LATEST_NAME
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def test_off_a_terminal_training_prints_a_line_per_epoch(tiny_dataset, tmp_path, make_cfg, capsys):
    """stdout is not a terminal (a log file, CI): no bar's carriage returns, one line per epoch with
    the values status.json records, and the time left while epochs remain."""
    result = train.run(make_cfg(tiny_dataset, tmp_path))
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b[" not in out
    lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert [line.split(":")[0] for line in lines] == ["Epoch 0/1", "Epoch 1/1"], out
    for line, record in zip(lines, result.history):
        assert f"val_miou {record['val_miou']:.3g}," in line and f"train_loss {record['train_loss']:.3g}," in line
    assert lines[0].endswith("left)") and not lines[1].endswith("left)")


def test_checkpoints_load_safely_with_meta(trained):
    _, result = trained
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    meta = checkpoint["segformer_meta"]
    assert meta["backbone"] == "mit_b0" and meta["num_classes"] == 3 and meta["img_size"] == 32
    assert checkpoint["hyper_parameters"]["optimizer"]["name"] == "adamw"
    state, loaded_meta = load_model_weights(result.last_checkpoint)
    assert loaded_meta == meta and not any(k.startswith("model.") for k in state)


def test_resume_is_exact(trained, tmp_path, make_cfg):
    """2 epochs straight == resume from the straight run's epoch-0 checkpoint + 1 epoch."""
    cfg, straight = trained
    first = straight.results_dir / "model_epoch_000_step_00002.pth"
    resumed_cfg = make_cfg(Path(cfg.dataset.segment.root_dir), tmp_path, f"train.resume_training_checkpoint_path={first}")
    resumed = train.run(resumed_cfg, quiet=True)
    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    # the resumed run's status.json continues the history of the run it resumed
    assert [r["epoch"] for r in resumed.history] == [0, 1]
    assert resumed.history[1]["val_miou"] == pytest.approx(straight.history[1]["val_miou"])


def test_resume_with_loader_workers_is_exact(tiny_dataset, tmp_path, make_cfg):
    """With DataLoader workers (TAO's templates use several) a resumed run trained differently: Lightning
    started the persistent workers to count the steps, before the resume restored the epoch, so they
    fetched the resumed epoch's first batches in epoch 0's order and augmentations; and starting them
    drew from the global RNG that stochastic depth draws from."""
    over = ["train.num_epochs=3", "dataset.segment.workers=2"]
    straight = train.run(make_cfg(tiny_dataset, tmp_path / "a", *over), quiet=True)
    first = next(straight.results_dir.glob("model_epoch_000_*.pth"))
    resumed = train.run(make_cfg(tiny_dataset, tmp_path / "b", *over, f"train.resume_training_checkpoint_path={first}"),
                        quiet=True)
    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert a["global_step"] == b["global_step"]
    assert all(torch.equal(value, b["state_dict"][key]) for key, value in a["state_dict"].items())


def test_resuming_with_more_epochs_follows_the_spec_schedule(tiny_dataset, tmp_path, make_cfg):
    """The checkpoint's schedule ended at its own last step (lr 0 under the linear policy); a run
    resumed with a larger train.num_epochs trained its added epochs at lr 0. It now follows this
    spec's schedule from the restored step, and says so."""
    import lightning as L

    first = train.run(make_cfg(tiny_dataset, tmp_path / "a", "train.num_epochs=1"), quiet=True)
    checkpoint = torch.load(first.last_checkpoint, weights_only=True)
    steps, lr = checkpoint["global_step"], checkpoint["hyper_parameters"]["optimizer"]["lr"]

    class Lrs(L.Callback):
        seen: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    lrs = Lrs()
    resume = f"train.resume_training_checkpoint_path={first.results_dir / LATEST_NAME}"
    with pytest.warns(UserWarning, match=rf"resuming at optimizer step {steps} \(train.num_epochs=2\): this "
                                         rf"spec's values replace the checkpoint's: the learning-rate schedule over "
                                         rf"{2 * steps} steps \(the checkpoint's {steps}\), x0\.5 of the lr from "
                                         rf"here, not x0$"):
        resumed = train.run(make_cfg(tiny_dataset, tmp_path / "b", "train.num_epochs=2", resume),
                            callbacks=[lrs], quiet=True)
    assert len(lrs.seen) == steps and lrs.seen[0] == pytest.approx(lr * 0.5)
    assert all(later < earlier for earlier, later in zip(lrs.seen, lrs.seen[1:]))
    saved = torch.load(resumed.last_checkpoint, weights_only=True)["lr_schedulers"][0]["lr_lambdas"][0]
    assert saved["total_steps"] == 2 * steps


def test_resuming_with_other_optimizer_values_takes_the_specs(trained, tmp_path, make_cfg):
    """The restored optimizer held the checkpoint's lr, weight decay and momentum: a resume with a
    lower lr (a common way to go on training) silently kept the old one. The spec's values now
    replace them (weight decay only where the optimizer decays: not norms, biases, position
    embeddings), and the warning lists them."""
    import lightning as L

    cfg, straight = trained
    first = straight.results_dir / "model_epoch_000_step_00002.pth"
    old = torch.load(first, weights_only=True)["hyper_parameters"]["optimizer"]
    lr, wd, momentum = old["lr"] / 4, 0.05, 0.8

    class Groups(L.Callback):
        seen: list[list[dict]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append([{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizers[0].param_groups])

    groups = Groups()
    with pytest.warns(UserWarning, match=rf"this spec's values replace the checkpoint's: train.optim.lr {lr:g} \(the "
                                         rf"checkpoint's {old['lr']:g}\); train.optim.weight_decay 0.05 \(the checkpoint's "
                                         rf"{old['weight_decay']:g}\); train.optim.momentum 0.8 \(the checkpoint's 0.9\)$"):
        train.run(make_cfg(Path(cfg.dataset.segment.root_dir), tmp_path, f"train.resume_training_checkpoint_path={first}",
                           f"train.optim.lr={lr}", f"train.optim.weight_decay={wd}", f"train.optim.momentum={momentum}"),
                  callbacks=[groups], quiet=True)
    decay, no_decay = groups.seen[0]
    assert decay["lr"] == pytest.approx(lr * 0.5) and decay["initial_lr"] == pytest.approx(lr)  # step 2 of 4, linear
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    assert decay["betas"][0] == no_decay["betas"][0] == momentum


def _break_missing_folder(root: Path) -> str:
    import shutil

    shutil.rmtree(root / "masks" / "val")
    return "does not exist"


def _break_unmatched(root: Path) -> str:
    (root / "masks" / "train" / "train_00001.png").rename(root / "masks" / "train" / "other.png")
    return "without a mask"


def _break_unknown_colour(root: Path) -> str:
    path = root / "masks" / "train" / "train_00002.png"
    mask = np.array(Image.open(path).convert("RGB"))
    mask[3, 4] = (1, 2, 3)
    Image.fromarray(mask).save(path)
    return r"rgb \(1, 2, 3\) at row 3, col 4"


def _break_corrupt_image(root: Path) -> str:
    (root / "images" / "train" / "train_00003.jpg").write_bytes(b"not a jpeg")
    return "cannot read image"


def _break_mask_size(root: Path) -> str:
    path = root / "masks" / "val" / "val_00000.png"
    Image.open(path).resize((16, 16), Image.NEAREST).save(path)
    return "must have exactly its image's size"


@pytest.mark.parametrize("breaker", [_break_missing_folder, _break_unmatched, _break_unknown_colour,
                                     _break_corrupt_image, _break_mask_size])
def test_bad_data_is_one_clear_error_and_writes_nothing(dataset_copy, tmp_path, breaker, make_cfg):
    expected = breaker(dataset_copy)
    cfg = make_cfg(dataset_copy, tmp_path / "results")
    with pytest.raises(DataError, match=expected):
        train.run(cfg, quiet=True)
    assert not (tmp_path / "results").exists()


def test_wrong_num_classes_is_a_clear_error(dataset_copy, tmp_path, make_cfg):
    cfg = make_cfg(dataset_copy, tmp_path / "results", "dataset.segment.num_classes=5")
    with pytest.raises(SegformerError, match="num_classes is 5"):
        train.run(cfg, quiet=True)
    assert not (tmp_path / "results").exists()


def test_failure_before_first_checkpoint_leaves_no_files(tiny_dataset, tmp_path, make_cfg):
    import lightning as L

    class Boom(L.Callback):
        def on_train_batch_end(self, *args, **kwargs):
            raise RuntimeError("boom")

    cfg = make_cfg(tiny_dataset, tmp_path / "results")
    with pytest.raises(RuntimeError, match="boom"):
        train.run(cfg, callbacks=[Boom()], quiet=True)
    assert not list((tmp_path / "results").rglob("*.pth"))
    assert not (tmp_path / "results" / "train" / "experiment.yaml").exists()


def test_missing_resume_checkpoint(tiny_dataset, tmp_path, make_cfg):
    cfg = make_cfg(tiny_dataset, tmp_path, "train.resume_training_checkpoint_path=/nonexistent/x.pth")
    with pytest.raises(SegformerError, match="does not exist"):
        train.run(cfg, quiet=True)


def test_missing_backbone_weights(tiny_dataset, tmp_path, make_cfg, trained):
    cfg = make_cfg(tiny_dataset, tmp_path, "model.backbone.pretrained_backbone_path=/nonexistent/mit_b0.pth")
    with pytest.raises(SegformerError, match="model.backbone.pretrained_backbone_path points to /nonexistent/mit_b0.pth"):
        train.run(cfg, quiet=True)
    # resuming too: the spec names a file that is not there (the resume takes its weights from the checkpoint)
    resume = f"train.resume_training_checkpoint_path={trained[1].last_checkpoint}"
    cfg = make_cfg(tiny_dataset, tmp_path / "r", "model.backbone.pretrained_backbone_path=/nonexistent/mit_b0.pth", resume)
    with pytest.raises(SegformerError, match="model.backbone.pretrained_backbone_path points to /nonexistent/mit_b0.pth"):
        train.run(cfg, quiet=True)


def test_weights_of_another_model_are_refused_in_one_line(tiny_dataset, tmp_path, make_cfg, trained):
    """Weights of another model went on with a warning ("0 tensors loaded; 176 missing") and trained from
    scratch; a checkpoint of another model to resume ended in Lightning's 30 KB list of keys. Each is
    one line naming the key and what to change, and nothing is written."""
    from segformer.model import create_backbone

    ckpt = trained[1].last_checkpoint  # mit_b0, 3 classes, a decoder of embed_dim 32
    cases = [
        ((f"train.resume_training_checkpoint_path={ckpt}", "model.decode_head.decoder_params.embed_dim=64"),
         r"^train.resume_training_checkpoint_path: .* has a decoder of embed_dim 32 but .*embed_dim is 64; set "),
        ((f"train.resume_training_checkpoint_path={ckpt}", "model.backbone.type=mit_b1"),
         r"^train.resume_training_checkpoint_path: .* holds a 'mit_b0' model but model.backbone.type is 'mit_b1'"),
        ((f"model.backbone.pretrained_backbone_path={ckpt}", "model.backbone.type=mit_b1"),
         r"^model.backbone.pretrained_backbone_path: .* holds a 'mit_b0' model but model.backbone.type is 'mit_b1'"),
        ((f"train.pretrained_model_path={ckpt}", "model.backbone.type=mit_b1"),
         r"^train.pretrained_model_path: .* holds a 'mit_b0' model but model.backbone.type is 'mit_b1'"),
    ]
    torch.save(create_backbone("mit_b1").state_dict(), tmp_path / "b1.pth")  # no description: its shapes tell
    cases.append(((f"model.backbone.pretrained_backbone_path={tmp_path / 'b1.pth'}",),
                  r"^model.backbone.pretrained_backbone_path: .*b1.pth fits only \d+ of the \d+ tensors of the model "
                  r"\(mit_b0\): it is weights of another model, or in a layout this tool does not read"))
    for i, (overrides, message) in enumerate(cases):
        results = tmp_path / f"r{i}"
        with pytest.raises(SegformerError, match=message) as refused:
            train.run(make_cfg(tiny_dataset, results, *overrides), quiet=True)
        said = str(refused.value).replace(str(tmp_path), "").replace(str(ckpt), "")
        assert "\n" not in said and len(said) < 400, said
        assert not list(results.rglob("*.pth")) and not list(results.rglob("status.json"))
    # a resume takes its weights from the checkpoint: the backbone's file is not loaded, nor refused
    resumed = train.run(make_cfg(tiny_dataset, tmp_path / "resumed", f"train.resume_training_checkpoint_path={ckpt}",
                                 f"model.backbone.pretrained_backbone_path={tmp_path / 'b1.pth'}", "train.num_epochs=3"),
                        quiet=True)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]


def test_resuming_a_finished_training_says_that_nothing_was_trained(tiny_dataset, tmp_path, make_cfg, trained, capsys):
    """Lightning stops at once, in silence, when the checkpoint has trained every epoch asked for."""
    cfg = make_cfg(tiny_dataset, tmp_path, f"train.resume_training_checkpoint_path={trained[1].last_checkpoint}")
    result = train.run(cfg)
    # the checkpoint it resumed, not the latest file of a folder it wrote nothing to
    assert not result.trained and result.last_checkpoint == trained[1].last_checkpoint
    out, err = capsys.readouterr()
    assert (f"segformer train: nothing trained: {trained[1].last_checkpoint} has trained 2 epochs already, and "
            "train.num_epochs asks for 2; raise train.num_epochs above 2 to train on from it") in err
    assert "segformer train: wrote" not in out + err  # it wrote no checkpoint and no status.json
    assert not (tmp_path / "train").exists()  # nor the spec it did not train, nor a folder for it
    # in the checkpoint's own folder, with fewer epochs asked for: the count is the checkpoint's, and
    # the spec beside it still describes it
    import shutil

    copy = shutil.copytree(trained[1].results_dir, tmp_path / "own" / "train")  # the shared run stays untouched
    own = copy / "experiment.yaml"
    before = own.read_bytes()
    cfg = make_cfg(tiny_dataset, tmp_path / "own", f"train.resume_training_checkpoint_path={copy / 'segformer_model_latest.pth'}",
                   "train.num_epochs=1")
    assert not train.run(cfg).trained and own.read_bytes() == before
    assert "has trained 2 epochs already, and train.num_epochs asks for 1" in capsys.readouterr().err


def test_no_lightning_advertisement_or_internal_deprecation(tiny_dataset, tmp_path):
    """Every `segformer train` printed Lightning's tip to install its cloud logger and a deprecation
    inside Lightning (`isinstance(treespec, LeafSpec)`) that the user can do nothing about."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "segformer.cli", "train", "-e", str(tiny_dataset / "spec.yaml"),
                          f"results_dir={tmp_path}", f"dataset.segment.root_dir={tiny_dataset}", "train.num_epochs=1",
                          "model.decode_head.decoder_params.embed_dim=32", "dataset.segment.workers=0"],
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "Epoch 0/0" in text, text[-2000:]  # the run's own lines are there
    import re  # and where the results went

    assert re.search(rf"segformer train: wrote {re.escape(str(tmp_path / 'train'))}: segformer_model_latest.pth, \d+ "
                     r"numbered checkpoints?, status.json, experiment.yaml; best val_miou 0\.\d{4} at epoch 0", text), text[-2000:]
    assert "litlogger" not in text and "LeafSpec" not in text, text[-2000:]


def test_a_new_training_does_not_go_into_a_folder_that_holds_one(tiny_dataset, tmp_path, make_cfg):
    """Trained again into the same results_dir, a run from scratch left the first run's numbered
    checkpoints beside its own; matching the new status.json's epochs, one of them was taken as the
    new run's best (a weaker model). Now it is refused, nothing is touched, and the message says how
    to continue the training that is there."""
    first = train.run(make_cfg(tiny_dataset, tmp_path, "train.num_epochs=1"), quiet=True)
    before = {p.name: p.read_bytes() for p in first.results_dir.iterdir() if p.is_file()}
    with pytest.raises(SegformerError, match=r"already holds a training \(1 epoch in status.json, 1 numbered "
                                             r"checkpoint, segformer_model_latest.pth\)") as refused:
        train.run(make_cfg(tiny_dataset, tmp_path, "train.num_epochs=2", "train.optim.lr=0.001"), quiet=True)
    latest = first.results_dir / LATEST_NAME
    assert f"train.resume_training_checkpoint_path={latest}" in str(refused.value)
    assert {p.name: p.read_bytes() for p in first.results_dir.iterdir() if p.is_file()} == before
    resumed = train.run(make_cfg(tiny_dataset, tmp_path, "train.num_epochs=2",
                                 f"train.resume_training_checkpoint_path={latest}"), quiet=True)
    assert [r["epoch"] for r in resumed.history] == [0, 1]


def test_a_status_file_without_checkpoints_does_not_stop_a_new_training(tiny_dataset, tmp_path, make_cfg):
    """A run killed between writing status.json and its first checkpoint left no weights: a training
    from scratch goes into its folder (an AutoML trial proposed again under its name does)."""
    out = tmp_path / "train"
    out.mkdir()
    (out / "status.json").write_text('{"epoch": 0, "step": 2, "val_miou": 0.1}\n')
    result = train.run(make_cfg(tiny_dataset, tmp_path, "train.num_epochs=1"), quiet=True)
    assert result.results_dir == out and [r["epoch"] for r in result.history] == [0]


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@requires_cuda
def test_amp_on_gpu(tiny_dataset, tmp_path, make_cfg):
    cfg = make_cfg(tiny_dataset, tmp_path, "train.num_epochs=1", "train.amp=true")
    trainer = train.build_trainer(cfg, tmp_path, [], quiet=True)
    assert trainer.precision in ("bf16-mixed", "16-mixed")
    result = train.run(cfg, quiet=True)
    assert result.best_miou is not None and not math.isnan(result.best_miou)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_ddp(tiny_dataset, tmp_path, make_cfg):
    cfg = make_cfg(tiny_dataset, tmp_path, "train.num_epochs=1", "train.num_gpus=2", "train.gpu_ids=[0,1]")
    trainer = train.build_trainer(cfg, tmp_path, [], quiet=True)
    assert trainer.num_devices == 2
    result = train.run(cfg, quiet=True)
    assert (result.results_dir / LATEST_NAME).is_file()


def test_validation_scores_masks_at_score_size(tiny_dataset, tmp_path, make_cfg):
    """dataset.segment.score_size: validation masks at that size, the logits resized to them (an
    input size AutoML searches is scored on one mask size); training and checkpoints unchanged."""
    cfg = make_cfg(tiny_dataset, tmp_path, "train.num_epochs=1", "dataset.segment.score_size=48")
    result = train.run(cfg, quiet=True)
    assert result.best_miou is not None and 0.0 <= result.best_miou <= 1.0 and result.history[-1]["val_miou"] >= 0
    with pytest.raises(ValueError, match="dataset.segment.score_size"):
        make_cfg(tiny_dataset, tmp_path / "bad", "dataset.segment.score_size=-1")


def test_tensorboard_and_mlflow_logging(tiny_dataset, tmp_path, make_cfg):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg(tiny_dataset, tmp_path / "results", "train.num_epochs=1", "train.tensorboard.enabled=true",
                   "train.mlflow.enabled=true", f"train.mlflow.tracking_uri={uri}", "train.mlflow.experiment_name=tiny")
    result = train.run(cfg, quiet=True)
    assert list((result.results_dir / "tensorboard").rglob("events.out.tfevents.*"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert runs and "val_miou" in runs[0].data.metrics
    # artifacts beside the store, where another training sharing it finds them too
    assert runs[0].info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_step_checkpoints_and_frozen_backbone(tiny_dataset, tmp_path, make_cfg):
    cfg = make_cfg(tiny_dataset, tmp_path, "train.checkpoint_interval=3", "train.checkpoint_interval_unit=step",
                   "model.backbone.freeze_backbone=true", "train.optim.optim=sgd", "train.optim.policy=step")
    result = train.run(cfg, quiet=True)
    names = sorted(p.name for p in result.results_dir.glob("*.pth"))
    assert names == ["model_epoch_001_step_00003.pth", LATEST_NAME]
    start = torch.load(result.results_dir / "model_epoch_001_step_00003.pth", weights_only=True)["state_dict"]
    end = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    backbone = [k for k in end if k.startswith("model.backbone.")]
    head = [k for k in end if k.startswith("model.decode_head.") and end[k].is_floating_point()]
    assert all(torch.equal(start[k], end[k]) for k in backbone)
    assert any(not torch.equal(start[k], end[k]) for k in head)


@pytest.mark.parametrize("value", ["", "0"])
def test_step_timing_is_off_unless_asked_for(tiny_dataset, tmp_path, make_cfg, monkeypatch, value):
    """SEGFORMER_STEP_TIMING empty or "0" is the same as unset: no timing.json."""
    monkeypatch.setenv(STEP_TIMING_ENV, value)
    cfg = make_cfg(tiny_dataset, tmp_path, "train.num_epochs=1")
    result = train.run(cfg, quiet=True)
    assert (result.results_dir / "status.json").is_file()
    assert not (result.results_dir / TIMING_NAME).exists()


def test_an_orderly_stop_keeps_what_the_run_wrote(tiny_dataset, tmp_path, make_cfg, monkeypatch):
    """An AutoML scheduler ends a trial with SystemExit(0) from a reporting callback (Ray Tune does
    this inside tune.report). That is not a failure: status.json and, when a benchmark asked for
    step timing, timing.json stay, even before the first checkpoint."""
    import lightning as L

    from segformer.actions import train

    monkeypatch.setenv(STEP_TIMING_ENV, "1")

    class StopAfterFirstValidation(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                raise SystemExit(0)

    cfg = make_cfg(tiny_dataset, tmp_path, "train.num_epochs=3", "train.checkpoint_interval=3")
    with pytest.raises(SystemExit):
        train.run(cfg, callbacks=[StopAfterFirstValidation()], quiet=True)
    out = Path(cfg.results_dir) / "train"
    assert (out / "experiment.yaml").is_file()
    [run] = read_timing(out / TIMING_NAME)  # the validated epoch is on record, without its end
    assert [e["epoch"] for e in run["epochs"]] == [0] and "epoch_end_at" not in run["epochs"][0]
    assert run["epochs"][0]["train_steps"] == 2 and run["epochs"][0]["val_miou"] is not None
    assert not list(out.glob("*.pth"))


def test_resume_from_a_step_checkpoint_on_an_epoch_boundary_keeps_every_epoch(tiny_dataset, tmp_path, make_cfg):
    """A step checkpoint that falls on an epoch's last batch holds the finished epoch (status line,
    validation); resuming from it continues with the next epoch and loses no status line."""
    from segformer.actions import train

    # 8 train images, batch 4: 2 steps per epoch, so step 2 is the last batch of epoch 0.
    first = make_cfg(tiny_dataset, tmp_path / "a", "dataset.segment.batch_size=4", "train.num_epochs=1",
                     "train.checkpoint_interval=2", "train.checkpoint_interval_unit=step")
    train.run(first, quiet=True)
    boundary = Path(first.results_dir) / "train" / "model_epoch_000_step_00002.pth"
    assert boundary.is_file()
    resumed = make_cfg(tiny_dataset, tmp_path / "b", "dataset.segment.batch_size=4", "train.num_epochs=2",
                       "train.checkpoint_interval=2", "train.checkpoint_interval_unit=step",
                       f"train.resume_training_checkpoint_path={boundary}")
    result = train.run(resumed, quiet=True)
    assert [r["epoch"] for r in result.history] == [0, 1]
    assert all(r["val_miou"] is not None for r in result.history)
