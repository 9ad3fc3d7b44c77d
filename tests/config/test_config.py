"""segformer.config: loading, overrides, interpolation, errors, generated schemas and validate."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from segformer.config import (
    ACTIONS,
    BACKBONES,
    ConfigError,
    ConfigWarning,
    ExperimentConfig,
    PaletteEntry,
    action_results_dir,
    apply_overrides,
    build_tao_schema,
    dump_config,
    load_config,
    parse_math_cond,
    read_spec,
    read_tao_schema,
    require,
    spec_problems,
    tao_to_json_schema,
    to_dict,
)
from segformer.config import generate, validate

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "tao_reference"
NVIDIA = FIXTURES / "tao-skill-segformer"
DOC_SPEC = FIXTURES / "tao_doc_example_spec.yaml"

NVIDIA_TEMPLATES = sorted((NVIDIA / "references").glob("spec_template_*.yaml"))
OUR_TEMPLATES = sorted((REPO / "templates" / "segformer").glob("spec_template_*.yaml"))
# Experiment specs; AutoML settings files (top-level automl_* keys, read by automl.settings) are not specs.
EXPERIMENTS = sorted(p for p in (REPO / "experiments").glob("**/*.yaml")
                     if not any(str(k).startswith("automl_") for k in (yaml.safe_load(p.read_text()) or {})))


def _load_quietly(path, overrides=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return load_config(path, overrides)


# ------------------------------------------------------------------------------------ loading
def test_defaults_are_tao_defaults():
    cfg = load_config(None)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.optim.lr == 6e-5 and cfg.train.num_epochs == 10
    assert cfg.model.backbone.type == "fan_small_12_p4_hybrid"
    assert cfg.dataset.segment.palette[1] == PaletteEntry("background", "background", 1, [1, 1, 1])
    assert cfg.dataset.segment.root_dir is None and cfg.results_dir is None
    assert len(BACKBONES) == 22


def test_doc_example_loads_with_interpolation():
    cfg = _load_quietly(DOC_SPEC)
    assert cfg.evaluate.checkpoint == "/results/train/segformer_model_latest.pth"
    assert cfg.export.results_dir == "/results/export"
    assert cfg.export.onnx_file == "/results/export/segformer.onnx"
    assert cfg.dataset.segment.label_transform is None  # the string "None"
    assert cfg.dataset.segment.palette[-1].label_id == 255
    assert cfg.train.optim.lr == 1e-4  # YAML 1.1 reads "0.0001" fine; "1e-4" would be text, coerced too


@pytest.mark.parametrize("path", NVIDIA_TEMPLATES + OUR_TEMPLATES + EXPERIMENTS, ids=lambda p: p.name)
def test_every_template_and_experiment_loads(path):
    cfg = _load_quietly(path)
    assert cfg.model.backbone.type in BACKBONES


def test_nvidia_template_placeholders_become_none_and_wandb_warns():
    with pytest.warns(ConfigWarning, match=r"wandb\.enable = True has no effect"):
        cfg = load_config(NVIDIA / "references" / "spec_template_evaluate.yaml")
    assert cfg.evaluate.checkpoint is None and cfg.dataset.segment.root_dir is None
    assert cfg.evaluate.trt_engine is None and cfg.encryption_key is None
    with pytest.raises(ConfigError, match=r"evaluate\.checkpoint is required.*evaluate\.checkpoint=/path"):
        require(cfg, "evaluate.checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        new = apply_overrides(cfg, ["evaluate.trt_engine=/e.engine"])
    assert require(new, "evaluate.checkpoint", "evaluate.trt_engine") == "/e.engine"


def test_typed_overrides_and_immutability():
    cfg = load_config(None)
    new = apply_overrides(cfg, ["train.optim.lr=3e-4", "model.backbone.freeze_backbone=true",
                                "dataset.segment.augmentation.mean=[0.4,0.4,0.4]", "train.num_epochs=3",
                                "dataset.segment.label_transform=None", "results_dir=/tmp/r"])
    assert new.train.optim.lr == 3e-4 and isinstance(new.train.optim.lr, float)
    assert new.model.backbone.freeze_backbone is True
    assert new.dataset.segment.augmentation.mean == [0.4, 0.4, 0.4]
    assert new.train.num_epochs == 3 and new.dataset.segment.label_transform is None
    assert cfg == load_config(None)  # the input is untouched
    assert apply_overrides(cfg, {"train.optim.lr": 1e-3}).train.optim.lr == 1e-3
    assert apply_overrides(cfg, ["train.num_epochs=2.0"]).train.num_epochs == 2  # a whole float for an integer
    assert apply_overrides(cfg, ["train.optim.lr_steps=[2.0, 3]"]).train.optim.lr_steps == [2, 3]
    assert apply_overrides(cfg, ["export.opset_version=11"]).export.opset_version == 11  # export's own check, not every action's
    # TAO's doc example (quantize: backend: "modelopt", artifact quantized_model_modelopt.pth) names the PyTorch backend
    assert apply_overrides(cfg, ["quantize.backend=modelopt"]).quantize.backend == "modelopt.pytorch"


def test_a_section_override_merges_into_the_spec(tmp_path):
    """`train.optim={lr: 1e-3}` (Hydra's syntax, as TAO takes it) sets lr and keeps the spec's other
    optimizer keys: it reset them to the defaults without a word."""
    spec = tmp_path / "s.yaml"
    spec.write_text("train:\n  optim:\n    policy: step\n    weight_decay: 0.05\n"
                    "dataset:\n  segment:\n    augmentation:\n      random_flip:\n        hflip_probability: 0.7\n")
    optim = load_config(spec, ["train.optim={lr: 0.001}"]).train.optim
    assert (optim.lr, optim.policy, optim.weight_decay) == (0.001, "step", 0.05)
    segment = load_config(spec, ["dataset.segment={augmentation: {random_flip: {vflip_probability: 0.3}}}"]).dataset.segment
    assert (segment.augmentation.random_flip.vflip_probability, segment.augmentation.random_flip.hflip_probability) == (0.3, 0.7)


def test_overrides_reresolve_interpolations():
    cfg = _load_quietly(DOC_SPEC)
    moved = apply_overrides(cfg, ["results_dir=/elsewhere"])
    assert moved.evaluate.checkpoint == "/elsewhere/train/segformer_model_latest.pth"
    assert moved.export.onnx_file == "/elsewhere/export/segformer.onnx"
    assert cfg.evaluate.checkpoint == "/results/train/segformer_model_latest.pth"


def test_overriding_results_dir_after_load_moves_every_interpolated_path(tmp_path):
    """results_dir=... after load re-resolves ${results_dir} exactly as passing it at load does, also
    through a chain of overrides; the record of the source is in no dump and in no comparison."""
    import dataclasses

    spec = tmp_path / "s.yaml"
    spec.write_text("results_dir: /first\nevaluate:\n  checkpoint: ${results_dir}/train/model.pth\n"
                    "export:\n  onnx_file: ${evaluate.checkpoint}.onnx\n")
    cfg = load_config(spec)
    moved = apply_overrides(apply_overrides(cfg, ["train.num_epochs=3"]), ["results_dir=/second"])
    assert moved.evaluate.checkpoint == "/second/train/model.pth"
    assert moved.export.onnx_file == "/second/train/model.pth.onnx"
    assert to_dict(moved) == to_dict(load_config(spec, ["train.num_epochs=3", "results_dir=/second"]))
    assert moved == load_config(spec, ["train.num_epochs=3", "results_dir=/second"])
    assert "spec_source" not in to_dict(moved) and "spec_source" not in repr(moved)
    assert "spec_source" not in dump_config(moved, tmp_path / "out.yaml").read_text()
    # A config changed since it was loaded starts from its own values: the change is kept.
    changed = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, checkpoint="/mine.pth"))
    again = apply_overrides(changed, ["results_dir=/third"])
    assert again.evaluate.checkpoint == "/mine.pth" and again.export.onnx_file == "/first/train/model.pth.onnx"
    # ... and a config built in code has no source to re-resolve
    plain = apply_overrides(ExperimentConfig(), ["results_dir=/fourth"])
    assert plain.results_dir == "/fourth" and plain.evaluate.checkpoint is None


def test_spec_source_is_not_a_spec_key():
    with pytest.raises(ConfigError, match="unknown key 'spec_source'"):
        load_config(None, ["spec_source=x"])
    assert "spec_source" not in build_tao_schema(None)["properties"]


def test_interpolation_of_unset_key_is_an_error(tmp_path):
    """One line for the unset key, however many refer to it, and the rest of the spec still checked:
    five lines about results_dir hid a wrong type (validate listed only them)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("evaluate:\n  checkpoint: ${results_dir}/train/model.pth\ninference:\n  checkpoint: ${results_dir}/m.pth\n"
                    "dataset:\n  segment:\n    batch_size: eight\n")
    with pytest.raises(ConfigError) as refused:
        load_config(spec)
    lines = str(refused.value).splitlines()
    assert lines[0].endswith("(2 problems):"), lines
    assert lines[1] == ("  - results_dir is not set, and 2 keys refer to it (evaluate.checkpoint, inference.checkpoint); set "
                        "results_dir (results_dir=/path) or write the paths out")
    assert "dataset.segment.batch_size must be an integer, got 'eight'" in lines[2]
    spec.write_text("evaluate:\n  checkpoint: ${results_dir}/train/model.pth\n")
    assert load_config(spec, ["results_dir=/r"]).evaluate.checkpoint == "/r/train/model.pth"
    # the stand-in of an unset number is not itself reported as a wrong type
    spec.write_text("train:\n  num_epochs: ???\n  checkpoint_interval: ${train.num_epochs}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(spec)
    assert str(refused.value).splitlines()[1:] == [
        "  - train.num_epochs is not set, and 1 key refers to it (train.checkpoint_interval); set train.num_epochs "
        "(train.num_epochs=...) or write the values out"]


def test_quoted_numbers_and_booleans_read_as_tao_reads_them(tmp_path):
    """TAO (OmegaConf) reads img_size: "64" as 64 and enable: "true" as True; they were refused here."""
    spec = tmp_path / "s.yaml"
    spec.write_text('train:\n  num_epochs: "3"\n  optim:\n    lr: "1e-3"\ndataset:\n  segment:\n    img_size: "64"\n'
                    '    augmentation:\n      random_flip:\n        enable: "false"\nevaluate:\n  gpu_ids: ["0"]\n')
    cfg = load_config(spec)
    assert (cfg.train.num_epochs, cfg.train.optim.lr, cfg.dataset.segment.img_size) == (3, 1e-3, 64)
    assert cfg.dataset.segment.augmentation.random_flip.enable is False and cfg.evaluate.gpu_ids == [0]
    spec.write_text('train:\n  num_epochs: "three"\n')
    with pytest.raises(ConfigError, match=r"train.num_epochs must be an integer, got 'three'"):
        load_config(spec)


def test_round_trip(tmp_path):
    cfg = _load_quietly(DOC_SPEC, ["train.optim.lr_steps=[3,6]", "quantize.backend_kwargs={a: 1}"])
    path = dump_config(cfg, tmp_path / "out" / "experiment.yaml")
    again = _load_quietly(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)
    assert not list(path.parent.glob("*.tmp"))


def test_action_results_dir():
    cfg = load_config(None, ["results_dir=/r", "export.results_dir=/x"])
    assert action_results_dir(cfg, "train") == Path("/r/train")
    assert action_results_dir(cfg, "export") == Path("/x")
    with pytest.raises(ConfigError, match="results_dir is not set"):
        action_results_dir(load_config(None), "train")


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("override, message", [
    ("train.optim.lr=3.0", r"train\.optim\.lr must be in \(0, 1\], got 3\.0"),
    ("train.optim.lr=0", r"train\.optim\.lr must be in \(0, 1\], got 0"),
    ("train.optim.learning_rate=1e-3", r"unknown key 'train\.optim\.learning_rate'; did you mean 'train\.optim\.lr'"),
    ("train.num_epoch=3", r"did you mean 'train\.num_epochs'"),
    # the right name in the wrong section: the key of that name, not the section it was typed in
    ("dataset.segment.mean=[0.5,0.5,0.5]", r"did you mean 'dataset\.segment\.augmentation\.mean'"),
    ("train.lr=1e-3", r"did you mean 'train\.optim\.lr'"),
    ("model.backbone.pretrained_model_path=/w.pth", r"did you mean 'model\.backbone\.pretrained_backbone_path'"),
    ("train.num_epochs=ten", r"train\.num_epochs must be an integer, got 'ten'"),
    ("model.backbone.type=mit_b9", r"model\.backbone\.type must be one of .*got 'mit_b9'; did you mean"),
    ("dataset.segment.label_transform=log", r"label_transform must be one of \['norm', 'None'\]"),
    ("quantize.device=tpu", r"quantize\.device must match"),
    ("no_equals_sign", r"must look like key=value"),
])
def test_error_messages(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, num_gpus, gpu_ids", [
    (["train.num_gpus=2"], 2, [0, 1]),  # NVIDIA's skill sets num_gpus alone (gpu_spec_key: train.num_gpus)
    (["train.gpu_ids=[0,1]"], 2, [0, 1]),
    (["train.num_gpus=2", "train.gpu_ids=[3]"], 2, [0, 1]),
    (["train.num_gpus=1", "train.gpu_ids=[2,3]"], 2, [2, 3]),
])
def test_num_gpus_and_gpu_ids_are_settled_as_tao_settles_them(overrides, num_gpus, gpu_ids):
    """`train.num_gpus=2` alone was refused ("gpu_ids must list num_gpus=2 ids"); TAO's launcher takes
    max(num_gpus, len(gpu_ids)) GPUs, numbered from 0 unless gpu_ids lists that many, and says so."""
    with pytest.warns(ConfigWarning, match=r"train.num_gpus=\d and train.gpu_ids=\[.*\] disagree: using GPUs"):
        cfg = load_config(None, overrides)
    assert (cfg.train.num_gpus, cfg.train.gpu_ids) == (num_gpus, gpu_ids)


def test_a_problem_of_an_override_is_said_to_be_one(tmp_path):
    """"invalid spec spec.yaml: unknown key 'train.optim.learning_rate'" sent the user to a file that does
    not hold it: the key came from the command line."""
    spec = tmp_path / "s.yaml"
    spec.write_text("train:\n  num_epochs: -1\n")
    with pytest.raises(ConfigError) as refused:
        load_config(spec, ["train.optim.learning_rate=1e-3", "train.optim.lr=5"])
    lines = str(refused.value).splitlines()[1:]
    assert lines[0].startswith("  - override train.optim.learning_rate=...: unknown key 'train.optim.learning_rate'")
    assert "  - train.optim.lr must be in (0, 1], got 5 (given as an override)" in lines
    assert any(line.startswith("  - train.num_epochs must be") and "override" not in line for line in lines), lines
    # a section's value sets its own keys: they are tagged, the section's others (from the file) are not
    spec.write_text("train:\n  optim:\n    momentum: 7\n")
    section = ["train.optim={lr: 5, learnin_rate: 3}"]
    with pytest.raises(ConfigError) as refused:
        load_config(spec, section)
    for problems in (str(refused.value).splitlines()[1:], [f"  - {p}" for p in spec_problems(read_spec(spec), None, section)]):
        assert "  - train.optim.lr must be in (0, 1], got 5 (given as an override)" in problems
        assert any(p.startswith("  - unknown key 'train.optim.learnin_rate'") and p.endswith("(given as an override)")
                   for p in problems), problems
        assert any(p.startswith("  - train.optim.momentum must be") and "override" not in p for p in problems), problems
    # overrides on a loaded config (what the AutoML trials do) are told as overrides too
    with pytest.raises(ConfigError) as refused:
        apply_overrides(load_config(None), ["train.optim.lr=5"])
    assert "  - train.optim.lr must be in (0, 1], got 5 (given as an override)" in str(refused.value).splitlines()


def test_all_problems_reported_at_once(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("train:\n  optim:\n    lr: 5\n  num_epochs: -1\n  bogus: 1\nmodel:\n  backbone:\n    type: mitb2\n")
    with pytest.raises(ConfigError) as info:
        load_config(spec, ["dataset.segment.batch_sise=4"])
    text = str(info.value)
    assert "5 problems" in text
    for part in ("train.optim.lr", "train.num_epochs", "train.bogus", "model.backbone.type", "batch_size"):
        assert part in text
    assert "Traceback" not in text and "omegaconf" not in text.lower()


def test_unused_settings_warn_and_are_never_automl():
    with pytest.warns(ConfigWarning, match="train.segment.weights"):
        load_config(None, ["train.segment.weights=[1.0]"])
    with pytest.warns(ConfigWarning, match="export.format"):
        load_config(None, ["export.format=xdl"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        load_config(None)  # our defaults never warn


# ------------------------------------------------------------------------------------ schemas
def test_generated_files_are_in_sync(tmp_path):
    written = generate.generate_all(tmp_path)
    assert {p.name for p in written} >= {f"{a}.schema.json" for a in ACTIONS} | {"manifest.json", "skill_info.yaml"}
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = REPO / rel
        assert committed.is_file(), f"{rel} is not committed; run `segformer schema generate`"
        assert committed.read_text() == path.read_text(), f"{rel} is stale; run `segformer schema generate`"
    assert generate.main(["--check", "--out-dir", str(tmp_path)]) == 0
    assert generate.main(["generate", "--check", "--out-dir", str(tmp_path)]) == 0  # as README writes it


def test_generated_schemas_are_strict_json_and_match_nvidia_shape():
    nvidia = read_tao_schema(NVIDIA / "schemas" / "train.schema.json")
    for action in ACTIONS:
        path = REPO / "schemas" / "segformer" / f"{action}.schema.json"
        ours = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path.name} has {c}"))
        assert set(ours) == set(nvidia)
        assert ours["x_tao_schema"]["schema_action"] == action
    ours = read_tao_schema(REPO / "schemas" / "segformer" / "train.schema.json")
    assert set(ours["properties"]) == set(nvidia["properties"])  # the same sections as NVIDIA's
    assert ours["automl_default_parameters"] == sorted(nvidia["automl_default_parameters"])
    assert ours["popular"] == nvidia["popular"]
    lr = ours["properties"]["train"]["properties"]["optim"]["properties"]["lr"]
    assert lr["log"] is True and 0 < lr["valid_min"] < lr["valid_max"] <= lr["maximum"] and lr["minimum"] == 0
    gen = read_tao_schema(REPO / "schemas" / "segformer" / "gen_trt_engine.schema.json")
    assert {"model", "dataset", "gen_trt_engine"} <= set(gen["properties"])


def test_no_effect_field_is_automl_enabled():
    from segformer.config import iter_fields
    import dataclasses

    def walk(cls, prefix=""):
        for f, spec in iter_fields(cls):
            if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
                yield from walk(f.default_factory, prefix + f.name + ".")
            else:
                yield prefix + f.name, spec

    enabled = {k for k, s in walk(ExperimentConfig) if s.automl}
    assert enabled == set(build_tao_schema("train")["automl_default_parameters"])
    assert not [k for k, s in walk(ExperimentConfig) if s.unused and s.automl]


@pytest.mark.parametrize("name", ["train", "evaluate", "inference", "export", "quantize", "manifest"])
def test_nvidia_schema_files_parse(name):
    data = read_tao_schema(NVIDIA / "schemas" / f"{name}.schema.json" if name != "manifest" else NVIDIA / "schemas" / "manifest.json")
    if name == "manifest":
        assert set(data["actions"]) == {"train", "evaluate", "inference", "export", "quantize"}
        return
    lr = data["properties"]["train"]["properties"]["optim"]["properties"]["lr"]
    assert lr["maximum"] == math.inf
    js = tao_to_json_schema(data)  # NVIDIA's schema validates NVIDIA's template
    import jsonschema
    template = yaml.safe_load((NVIDIA / "references" / f"spec_template_{'train' if name == 'quantize' else name}.yaml").read_text())
    jsonschema.validate(template, js)


@pytest.mark.parametrize("text, parsed", [
    ("> 0", (">", "0")), (">=1e-3", (">=", "1e-3")), ("  < 1 ", ("<", "1")), ("<= -2", ("<=", "-2")),
    ("^ 2", ("^", "2")), ("/ 8", ("/", "8")), ("> depends_on", (">", "depends_on")),
    (None, None), ("", None), (float("nan"), None), ("== 3", None), ("> 1 2", None), ("positive", None),
])
def test_parse_math_cond(text, parsed):
    assert parse_math_cond(text) == parsed


def test_only_numeric_math_cond_comparisons_become_bounds():
    def rules(cond, **extra):
        return {k: v for k, v in tao_to_json_schema({"type": "float", "math_cond": cond, **extra}).items() if k != "type"}

    assert rules("> 0", minimum=0, maximum=1) == {"exclusiveMinimum": 0.0, "maximum": 1}
    assert rules("<= 0.5") == {"maximum": 0.5}
    assert rules("> depends_on") == rules("^ 2") == rules("/ 8") == rules("> inf") == {}


# ----------------------------------------------------------------------------------- validate
def test_validate_reports_every_problem(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("train:\n  optim:\n    lr: 5\n    optim: adamx\n  seed: x\ndataset:\n  segment:\n    num_classes: 1\n")
    assert validate.main(["-e", str(spec), "--action", "train", "train.num_epochs=0"]) == 1
    out = capsys.readouterr().out
    for part in ("train.optim.lr", "train.optim.optim", "train.seed", "num_classes", "train.num_epochs"):
        assert part in out, out


def test_validate_action_requirements_and_clean_spec(tmp_path, capsys):
    template = REPO / "templates" / "segformer" / "spec_template_evaluate.yaml"
    assert validate.main(["-e", str(template), "--action", "evaluate"]) == 1
    out = capsys.readouterr().out
    assert "dataset.segment.root_dir is required by evaluate" in out
    assert "evaluate.checkpoint or evaluate.trt_engine" in out
    # The templates ship results_dir: '' (TAO's launcher fills it); the action would refuse it unset.
    assert "results_dir or evaluate.results_dir is required by evaluate" in out
    model = tmp_path / "m.pth"
    model.write_bytes(b"")
    clean = ["-e", str(template), "--action", "evaluate", "dataset.segment.root_dir=/d", f"evaluate.checkpoint={model}"]
    assert validate.main([*clean, "results_dir="]) == 1
    assert "results_dir or evaluate.results_dir is required by evaluate" in capsys.readouterr().out
    assert validate.main([*clean, f"evaluate.results_dir={tmp_path}"]) == 0
    assert validate.main([*clean, f"results_dir={tmp_path}"]) == 0
    capsys.readouterr()


def test_validate_checks_what_the_action_checks_and_reads_only_its_splits(tmp_path, capsys):
    """`validate --action export` said OK to export.opset_version=13, which export refuses; `--action
    train` refused a dataset without a test split, which train never reads."""
    from segformer.data.synth import generate

    data = generate(tmp_path / "d", num_classes=2, size=32, train=2, val=2, test=2)
    model = tmp_path / "m.pth"
    model.write_bytes(b"")
    spec = ["-e", str(data / "spec.yaml"), f"results_dir={tmp_path / 'r'}"]
    assert validate.main([*spec, "--action", "export", f"export.checkpoint={model}", "export.opset_version=13"]) == 1
    assert "export.opset_version must be 14 or more" in capsys.readouterr().out
    assert validate.main([*spec, "--action", "export", f"export.checkpoint={model}"]) == 0
    capsys.readouterr()
    import shutil

    for kind in ("images", "masks"):
        shutil.rmtree(data / kind / "test")
    assert validate.main([*spec, "--action", "train"]) == 0
    assert "dataset read: 2/2 train/val image/mask pairs" in capsys.readouterr().out
    for action in (["--action", "evaluate", f"evaluate.checkpoint={model}"], []):  # evaluate, and AutoML, read it
        assert validate.main([*spec, *action]) == 1
        assert "dataset.segment.test_split 'test'" in capsys.readouterr().out
    # inference reads the predict split's images (no masks): a zero-byte one passed as OK, then inference failed
    inference = ["--action", "inference", f"inference.checkpoint={model}", "dataset.segment.predict_split=val"]
    assert validate.main([*spec, *inference]) == 0
    assert "dataset read: 2 val images" in capsys.readouterr().out
    next((data / "images" / "val").iterdir()).write_bytes(b"")
    assert validate.main([*spec, *inference]) == 1
    assert "dataset.segment.predict_split 'val': cannot read image" in capsys.readouterr().out


@pytest.mark.parametrize("action, key", [("evaluate", "evaluate.checkpoint"), ("inference", "inference.trt_engine"),
                                         ("export", "export.checkpoint"), ("quantize", "quantize.model_path"),
                                         ("gen_trt_engine", "gen_trt_engine.onnx_file"),
                                         ("train", "train.pretrained_model_path"),
                                         ("train", "train.resume_training_checkpoint_path")])
def test_validate_names_a_model_file_the_action_cannot_find(tmp_path, capsys, action, key):
    """`validate --action evaluate` said OK with evaluate.checkpoint naming no file; the action then
    failed on it. A results folder given instead is resolved as the action resolves it."""
    spec = ["-e", str(DOC_SPEC), "--action", action, "--no-data", f"dataset.segment.root_dir={tmp_path}",
            "model.backbone.pretrained_backbone_path=null", f"results_dir={tmp_path}"]
    assert validate.main([*spec, f"{key}={tmp_path / 'gone.pth'}"]) == 1
    assert f"{key} points to {tmp_path / 'gone.pth'}" in capsys.readouterr().out
    empty = tmp_path / "train_run"
    empty.mkdir()
    assert validate.main([*spec, f"{key}={empty}"]) == 1  # a folder without the file the action takes
    assert str(empty) in capsys.readouterr().out
    # validated away from the machine that runs it: the dataset is not here either, so a note
    assert validate.main([*spec, f"{key}={tmp_path / 'gone.pth'}", "dataset.segment.root_dir=/d"]) == 0
    assert f"note: {key} points to {tmp_path / 'gone.pth'}" in capsys.readouterr().out
    assert validate.main(["-e", str(DOC_SPEC), "--action", "train"]) == 0
    capsys.readouterr()
    nvidia_train = NVIDIA / "references" / "spec_template_train.yaml"
    assert validate.main(["-e", str(nvidia_train), "--action", "train", "root_dir=/d", "results_dir=/r"]) == 1
    assert "did you mean 'dataset.segment.root_dir'" in capsys.readouterr().out
    assert validate.main(["-e", str(nvidia_train), "--action", "train", "dataset.segment.root_dir=/d",
                          "results_dir=/r"]) == 0
    assert "note: wandb.enable = True has no effect" in capsys.readouterr().out


def test_validate_reads_the_dataset_the_spec_points_at(tmp_path, capsys):
    """`validate` said OK for a spec whose masks hold a colour the palette lacks, whose val image had
    no mask and whose palette named more classes than num_classes: training found them, validate now does."""
    import numpy as np
    from PIL import Image

    from segformer.data.synth import generate

    root = generate(tmp_path / "data", num_classes=3, size=32, train=4, val=2, test=2, seed=0)
    spec = [str(root / "spec.yaml"), f"results_dir={tmp_path / 'runs'}"]
    assert validate.main(["-e", *spec]) == 0
    assert f"dataset read: 4/2/2 train/val/test image/mask pairs under {root}" in capsys.readouterr().out
    assert validate.main(["-e", *spec, "dataset.segment.num_classes=4"]) == 1
    assert "num_classes is 4 but the palette defines 3" in capsys.readouterr().out
    mask = root / "masks/train/train_00001.png"
    pixels = np.array(Image.open(mask).convert("RGB"))
    pixels[0, 0] = (1, 2, 3)
    Image.fromarray(pixels).save(mask)
    (root / "masks/val/val_00000.png").unlink()
    assert validate.main(["-e", *spec, "--action", "train"]) == 1
    out = capsys.readouterr().out
    assert "train_00001.png" in out and "rgb (1, 2, 3)" in out and "val_00000" in out, out
    assert validate.main(["-e", *spec, "--no-data"]) == 0  # the spec alone is fine
    capsys.readouterr()
    assert validate.main(["-e", *spec, f"dataset.segment.root_dir={tmp_path / 'elsewhere'}"]) == 0
    assert "the dataset was not read" in capsys.readouterr().out  # validated on a machine without the data


# ------------------------------------------------------------------------------------ palette
MERGED = [{"seg_class": "car", "mapping_class": "vehicle", "label_id": 0, "rgb": [0, 0, 142]},
          {"seg_class": "road", "label_id": 1, "rgb": [128, 64, 128]},
          {"seg_class": "truck", "mapping_class": "vehicle", "label_id": 2, "rgb": [0, 0, 70]}]


def _palette_overrides(palette, transform, num_classes=2):
    return {"dataset.segment.palette": palette, "dataset.segment.label_transform": transform,
            "dataset.segment.num_classes": num_classes}


@pytest.mark.parametrize("palette, transform", [
    ([{"seg_class": "a", "label_id": 0, "rgb": [7]}, {"seg_class": "b", "label_id": 1, "rgb": [9]}], None),
    ([{"seg_class": "a", "label_id": 0, "rgb": [0.5, 0.5, 0.5]}, {"seg_class": "b", "label_id": 1, "rgb": [1, 1, 1]}], "norm"),
    ([{"seg_class": "a", "label_id": 0, "rgb": [1000]}, {"seg_class": "b", "label_id": 1, "rgb": [0]}], None),  # 16-bit grey
    (MERGED, None),  # label_id 2 > num_classes - 1: merged into "vehicle" (id 0)
])
def test_palettes_the_data_layer_supports_load(palette, transform):
    from segformer.data import MaskDecoder

    cfg = load_config(None, _palette_overrides(palette, transform))
    seg = cfg.dataset.segment
    decoder = MaskDecoder(seg.palette, seg.label_transform, seg.num_classes)  # the data layer agrees
    assert decoder.num_classes == 2


def test_merged_palette_num_classes_is_checked_by_the_mask_decoder():
    from segformer.data import MaskDecoder
    from segformer.errors import DataError

    cfg = load_config(None, _palette_overrides(MERGED, None, num_classes=3))  # config leaves it to the data layer
    seg = cfg.dataset.segment
    with pytest.raises(DataError, match="dataset.segment.num_classes is 3 but the palette defines 2"):
        MaskDecoder(seg.palette, seg.label_transform, seg.num_classes)


@pytest.mark.parametrize("entry, transform, message", [
    ({"seg_class": "a", "label_id": -1, "rgb": [0, 0, 0]}, None, r"palette\[0\].label_id must be in \[0, 255\]"),
    ({"seg_class": "a", "label_id": 256, "rgb": [0, 0, 0]}, None, r"palette\[0\].label_id must be in \[0, 255\]"),
    ({"seg_class": "a", "label_id": 0, "rgb": [0, 0]}, None, r"palette\[0\].rgb must have 3 values .* or 1"),
    ({"seg_class": "a", "label_id": 0, "rgb": [0.5, 0.5, 0.5]}, None, r"palette\[0\].rgb must be integers in 0..255"),
    ({"seg_class": "a", "label_id": 0, "rgb": [0, 0, 300]}, None, r"palette\[0\].rgb must be integers in 0..255"),
    ({"seg_class": "a", "label_id": 0, "rgb": [255, 255, 255]}, "norm", r"palette\[0\].rgb must be in 0..1 with label_transform norm"),
])
def test_invalid_palettes_are_rejected(entry, transform, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, _palette_overrides([entry, {"seg_class": "b", "label_id": 1, "rgb": [1]}], transform))


# ------------------------------------------------------------------------------------ bounds
def test_schema_minimum_maximum_are_validity_bounds_and_valid_min_max_the_search_range():
    optim = read_tao_schema(REPO / "schemas" / "segformer" / "train.schema.json")["properties"]["train"]["properties"]["optim"]["properties"]
    assert (optim["weight_decay"]["minimum"], optim["weight_decay"]["maximum"]) == (0.0, 1.0)
    assert (optim["weight_decay"]["valid_min"], optim["weight_decay"]["valid_max"]) == (1e-5, 0.1)
    assert (optim["momentum"]["minimum"], optim["momentum"]["valid_min"], optim["momentum"]["valid_max"]) == (0.0, 0.8, 0.99)
    assert optim["lr"]["log"] is True and (optim["lr"]["valid_min"], optim["lr"]["valid_max"]) == (1e-6, 1e-2)
    # what NVIDIA's tooling would check (minimum/maximum) accepts what our loader accepts
    import jsonschema

    js = tao_to_json_schema(read_tao_schema(REPO / "schemas" / "segformer" / "train.schema.json"))
    spec = {"train": {"optim": {"weight_decay": 0.0, "momentum": 0.0, "lr": 0.02, "optim": "sgd"}}}
    jsonschema.validate(spec, js)
    cfg = load_config(None, ["train.optim.weight_decay=0", "train.optim.momentum=0", "train.optim.lr=0.02"])
    assert (cfg.train.optim.weight_decay, cfg.train.optim.momentum, cfg.train.optim.lr) == (0.0, 0.0, 0.02)
    with pytest.raises(ConfigError, match=r"train.optim.weight_decay must be in \[0, 1\], got 1.5"):
        load_config(None, ["train.optim.weight_decay=1.5"])


def test_validate_accepts_zero_weight_decay(tmp_path, capsys):
    spec = tmp_path / "wd0.yaml"
    spec.write_text("train:\n  optim:\n    weight_decay: 0\n    momentum: 0\n    optim: sgd\n")
    assert validate.main(["-e", str(spec), "--action", "train", "dataset.segment.root_dir=/d", "results_dir=/r"]) == 0, \
        capsys.readouterr().out


def test_import_is_light():
    code = "import sys, segformer.config, segformer.config.generate, segformer.config.validate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "False"


def test_an_override_value_is_not_cut_at_a_hash(tmp_path):
    """YAML reads ' #' as a comment: `results_dir=/runs/a #1` wrote into /runs/a, and
    `train.optim.lr=0.01 #x` trained at 0.01, both in silence. A command line has no comments."""
    cfg = load_config(None, [f"results_dir={tmp_path / 'a #1'}", "train.optim.lr=0.01"])
    assert cfg.results_dir == str(tmp_path / "a #1")
    with pytest.raises(ConfigError, match="train.optim.lr"):
        load_config(None, ["train.optim.lr=0.01 #x"])
    assert load_config(None, ['dataset.segment.root_dir="a #b"']).dataset.segment.root_dir == "a #b"  # quoted: as YAML reads it


def test_a_folder_named_like_a_number_is_a_path():
    """results_dir=2024 was refused ("must be a string, got 2024"), and results_dir="2024" too (the
    quoted text was read as the float 2024.0); OmegaConf's string fields take both as "2024"."""
    assert load_config(None, ["results_dir=2024"]).results_dir == "2024"
    assert load_config(None, ['results_dir="2024"']).results_dir == "2024"
    assert load_config(None, ['train.optim.lr="1e-4"']).train.optim.lr == pytest.approx(1e-4)  # a number field: a number
