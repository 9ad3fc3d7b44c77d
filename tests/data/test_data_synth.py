"""`segformer data synth`: TAO layout, a spec that loads, determinism, speed, light imports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from segformer.data.synth import generate, main
from segformer.errors import DataError

from datahelpers import namespace


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "spec.yaml":
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_spec(tmp_path):
    start = time.perf_counter()
    root = generate(tmp_path / "synth", num_classes=4, size=64, train=32, val=8, test=8, seed=0)
    assert time.perf_counter() - start < 2.0
    for split, count in (("train", 32), ("val", 8), ("test", 8)):
        images = sorted(p.stem for p in (root / "images" / split).glob("*.jpg"))
        masks = sorted(p.stem for p in (root / "masks" / split).glob("*.png"))
        assert len(images) == count and images == masks
    image = Image.open(next((root / "images/train").glob("*.jpg")))
    mask = Image.open(next((root / "masks/train").glob("*.png")))
    assert image.size == mask.size == (64, 64) and image.mode == "RGB" and mask.mode == "RGB"

    spec = yaml.safe_load((root / "spec.yaml").read_text())
    segment = spec["dataset"]["segment"]
    assert segment["root_dir"] == str(root) and segment["num_classes"] == 4 and segment["img_size"] == 64
    assert segment["label_transform"] == "None" and spec["model"]["backbone"]["type"] == "mit_b0"
    assert "results_dir" not in spec  # given on the command line
    assert [e["label_id"] for e in segment["palette"]] == [0, 1, 2, 3, 255]


def test_spec_keys_exist_in_the_tao_template(tmp_path):
    template_path = Path(__file__).parents[1] / "fixtures/tao_reference/tao-skill-segformer/references"
    template = yaml.safe_load((template_path / "spec_template_train.yaml").read_text())
    template.update({k: {} for k in ("evaluate", "inference", "export")})  # sections of other actions
    engine = yaml.safe_load((template_path / "spec_template_deploy_gen_trt_engine.yaml").read_text())
    template["gen_trt_engine"] = engine["gen_trt_engine"]  # the deploy skill's (the train template has none)

    def check(node, reference, path=""):
        for key, value in node.items():
            if path in (".evaluate", ".inference", ".export"):
                continue
            assert key in reference, f"{path}.{key} is not a TAO spec key"
            if isinstance(value, dict) and key != "palette":
                check(value, reference[key], f"{path}.{key}")

    check(yaml.safe_load((generate(tmp_path / "s", seed=1) / "spec.yaml").read_text()), template)


def test_dataset_is_learnable_and_passes_the_checks(tmp_path):
    from segformer.data.datamodule import build_datamodule

    root = generate(tmp_path / "synth", num_classes=5, size=48, train=12, val=4, test=4, seed=3)
    segment = namespace(yaml.safe_load((root / "spec.yaml").read_text())["dataset"]["segment"])
    dm = build_datamodule(segment, seed=0)
    dm.setup("fit")
    report = dm.reports["train"]
    assert report.class_pixels.shape == (5,) and (report.class_pixels > 0).all()  # every class present
    assert 0 < report.ignored_pixels < 0.1 * 12 * 48 * 48
    # classes differ by colour: mean colour per class is far apart (a pixel classifier can learn it)
    batch = next(iter(dm.val_dataloader()))
    means = [batch["image"].permute(0, 2, 3, 1)[batch["mask"] == c].mean(0) for c in range(5)]
    distances = [float((a - b).norm()) for i, a in enumerate(means) for b in means[i + 1:]]
    assert min(distances) > 0.3


def test_same_seed_same_bytes_and_cli(tmp_path, capsys):
    a = generate(tmp_path / "a", train=4, val=2, test=2, seed=7)
    assert main(["synth", "--out", str(tmp_path / "b"), "--train", "4", "--val", "2", "--test", "2",
                 "--seed", "7"]) == 0
    assert "spec.yaml" in capsys.readouterr().out
    assert digest(a) == digest(tmp_path / "b")
    assert digest(generate(tmp_path / "c", train=4, val=2, test=2, seed=8)) != digest(a)
    # re-running into an earlier output replaces it; a foreign non-empty folder is refused
    generate(a, train=2, val=1, test=1, seed=7)
    assert len(list((a / "images/train").iterdir())) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other/keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        generate(tmp_path / "other")
    with pytest.raises(DataError, match="num-classes"):
        generate(tmp_path / "d", num_classes=1)


def test_synth_module_does_not_import_torch():
    code = "import sys, segformer.data.synth; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hard_set_has_thin_structures_a_rare_class_and_no_colour_cue(tmp_path):
    """`--hard`: the demo's data, where hyperparameters matter. Thin lines (class 2), a rare class
    (3), and classes that share one grey: colour alone cannot tell them apart."""
    import numpy as np

    root = generate(tmp_path / "hard", num_classes=4, size=64, train=24, val=2, test=2, seed=3, hard=True, epochs=12)
    assert digest(root) == digest(generate(tmp_path / "again", num_classes=4, size=64, train=24, val=2, test=2, seed=3,
                                           hard=True, epochs=12))
    assert yaml.safe_load((root / "spec.yaml").read_text())["train"]["num_epochs"] == 12
    colours = {(0, 0, 0): 0, (230, 25, 75): 1, (60, 180, 75): 2, (0, 130, 200): 3}
    counts = np.zeros(4)
    hue_spread = []
    for mask_path in sorted((root / "masks" / "train").glob("*.png")):
        mask = np.asarray(Image.open(mask_path).convert("RGB"))
        image = np.asarray(Image.open(root / "images" / "train" / f"{mask_path.stem}.jpg"), dtype=np.float32)
        labels = np.full(mask.shape[:2], -1)
        for rgb, cls in colours.items():
            labels[(mask == rgb).all(-1)] = cls
        counts += np.bincount(labels[labels >= 0], minlength=4)
        hue_spread.append(float(np.abs(image[..., 0] - image[..., 2]).mean()))
        if (labels == 2).any():  # thin: most line pixels have a background pixel within one step
            line = labels == 2
            padded = np.pad(line, 1)
            inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
            assert (line & ~inner).sum() > 0.6 * line.sum()
    share = counts / counts.sum()
    assert share[0] > 0.5 and 0 < share[3] < 0.03 and 0 < share[2] < 0.08  # imbalance: a rare class and a thin one
    assert max(hue_spread) < 40  # grey with a faint tint: no colour per class


def test_synth_epochs_must_be_positive(tmp_path):
    with pytest.raises(DataError, match="--epochs must be >= 1"):
        generate(tmp_path / "x", epochs=0)


def test_synth_size_is_one_its_spec_trains_at(tmp_path):
    """--size 20 wrote a dataset whose spec (img_size 20) every action then refused (img_size >= 32)."""
    with pytest.raises(DataError, match=r"--size must be >= 32 pixels \(its spec's dataset.segment.img_size\), got 20"):
        generate(tmp_path / "x", size=20)
    assert not (tmp_path / "x").exists()


def test_a_url_out_is_refused_not_made_a_local_folder(tmp_path, monkeypatch, capsys):
    """--out s3://bkt/synth wrote into ./s3:/bkt/synth."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as ended:
        main(["synth", "--out", "s3://bkt/synth"])
    assert ended.value.code == 2 and "--out s3://bkt/synth is a URL" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
