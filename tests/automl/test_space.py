"""The search space from TAO train schemas: defaults, disabled rules, ranges, math_cond, sampling."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from automl.skill import read_schema
from automl.space import SpaceError, build_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

NVIDIA_SKILL = Path(__file__).resolve().parents[1] / "fixtures" / "tao_reference" / "tao-skill-segformer"
LR = "train.optim.lr"


@pytest.fixture(scope="module")
def nvidia_schema() -> dict[str, Any]:
    return read_schema(NVIDIA_SKILL / "schemas" / "train.schema.json")


def _schema(fields: dict[str, dict[str, Any]], defaults: list[str] | None = None, disabled: list[str] = ()) -> dict[str, Any]:
    """A synthetic TAO-style schema with dotted field names under one 'train' collection."""
    props: dict[str, Any] = {}
    for name, node in fields.items():
        parts = name.split(".")
        cursor = props
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {"type": "collection", "properties": {}})["properties"]
        cursor[parts[-1]] = node
    return {"automl_default_parameters": defaults if defaults is not None else list(fields),
            "automl_disabled_parameters": list(disabled), "properties": props}


def _samples(space, n: int, seed: int = 0) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(n)]


def test_nvidia_defaults_sixteen_finite(nvidia_schema: dict[str, Any]) -> None:
    space = build_space(nvidia_schema)
    assert len(space) == 16
    assert {p.name for p in space} == set(nvidia_schema["automl_default_parameters"])
    for p in space:
        if p.kind in {"int", "float"} and not p.choices:
            assert math.isfinite(p.low) and math.isfinite(p.high) and p.low < p.high, p
    lr = space[LR]
    assert lr.log and lr.low == pytest.approx(6e-7) and lr.high == pytest.approx(6e-3)
    assert lr.low < lr.default < lr.high  # never collapsed to the default
    assert "default/100" in lr.source
    values = [s[LR] for s in _samples(space, 40)]
    assert min(values) < 6e-5 < max(values)  # searches both down and up
    assert space.grid() is None  # floats: infinite
    table = space.describe()
    assert LR in table and "log" in table and "source" in table.splitlines()[0]
    # beside the baseline, the column shows what the first trial trains: the spec's value, not the schema's
    header, _, *rows = space.describe(space.baseline({LR: 2e-3})).splitlines()
    assert "baseline" in header and " 0.002 " in next(row for row in rows if row.startswith(LR))


def test_disabled_semantics(nvidia_schema: dict[str, Any]) -> None:
    assert LR in build_space(nvidia_schema)  # train.optim is disabled, but lr is explicitly a default
    with pytest.raises(SpaceError, match="train.gpu_ids is disabled for AutoML by the schema"):
        build_space(nvidia_schema, include=["train.gpu_ids"])
    with pytest.raises(SpaceError, match="train.num_epochs is disabled by train"):
        build_space(nvidia_schema, include=["train.num_epochs"])
    with pytest.raises(SpaceError, match="disabled by train.*override_automl_disabled_params"):
        build_space(nvidia_schema, include=["train.optim.optim"])
    with pytest.raises(SpaceError, match="disabled for AutoML by the schema"):
        build_space(nvidia_schema, include=["dataset.segment.augmentation.random_rotate.angle_list"])
    space = build_space(nvidia_schema, include=["train.optim.optim", "dataset.segment.batch_size"], override_disabled=True)
    assert space["train.optim.optim"].choices == ("adamw", "adam", "sgd")
    batch = space["dataset.segment.batch_size"]  # minimum 1, maximum Infinity, default 8
    assert (batch.low, batch.high) == (1, 32) and "max(default*4" in batch.source
    with pytest.raises(SpaceError, match="lists/collections"):
        build_space(nvidia_schema, include=["dataset.segment.augmentation.mean"], override_disabled=True)


def test_include_exclude_only_and_typos(nvidia_schema: dict[str, Any]) -> None:
    space = build_space(nvidia_schema, exclude=[LR, "train.optim.momentum"])
    assert len(space) == 14 and LR not in space
    assert [p.name for p in build_space(nvidia_schema, only=[LR])] == [LR]
    with pytest.raises(SpaceError, match="did you mean 'train.optim.lr'"):
        build_space(nvidia_schema, only=["train.optim.lrr"])
    with pytest.raises(SpaceError, match="is a collection"):
        build_space(nvidia_schema, only=["train.optim"])


def test_custom_param_ranges(nvidia_schema: dict[str, Any]) -> None:
    space = build_space(nvidia_schema, only=[LR], param_ranges={LR: {"valid_min": 1e-5, "valid_max": 1e-3}})
    assert (space[LR].low, space[LR].high, space[LR].log) == (1e-5, 1e-3, True)
    with pytest.raises(SpaceError, match="above the schema maximum"):
        build_space(nvidia_schema, only=["train.optim.momentum"], param_ranges={"train.optim.momentum": {"valid_max": 2}})
    with pytest.raises(SpaceError, match="did you mean 'valid_min'"):
        build_space(nvidia_schema, only=[LR], param_ranges={LR: {"valid_mn": 1e-5}})
    # a range for a parameter not searched names TAO's key that adds it (it said include (automl_hyperparameters))
    with pytest.raises(SpaceError, match=r"not searched; add it with automl_add_hyperparameters \(or --only\), or drop"):
        build_space(nvidia_schema, only=[LR], param_ranges={"train.optim.momentum": {"valid_max": 0.95}})


def test_options_given_for_a_float_are_its_values(nvidia_schema: dict[str, Any]) -> None:
    """valid_options on lr and weight_decay were ignored: the schema's whole range was searched, and
    grid search said the space was not finite."""
    wd = "train.optim.weight_decay"
    space = build_space(nvidia_schema, only=[LR, wd], param_ranges={LR: {"valid_options": [0.001, 0.003]},
                                                                     wd: {"valid_options": [0.01, 0.001]}})
    assert space[LR].choices == (0.001, 0.003) and space[wd].choices == (0.01, 0.001)
    grid = space.grid()
    assert grid is not None and sorted((g[LR], g[wd]) for g in grid) == [(0.001, 0.001), (0.001, 0.01),
                                                                        (0.003, 0.001), (0.003, 0.01)]
    with pytest.raises(SpaceError, match="must be numbers"):
        build_space(nvidia_schema, only=[LR], param_ranges={LR: {"valid_options": ["fast", 0.003]}})


def test_math_cond_power_divisible_and_relation() -> None:
    schema = _schema({
        "train.batch": {"type": "int", "default": 8, "minimum": 1, "maximum": 64, "math_cond": "^ 2"},
        "train.width": {"type": "int", "default": 32, "minimum": 10, "maximum": 100, "math_cond": "/ 8"},
        "train.hi": {"type": "int", "default": 20, "minimum": 1, "maximum": 100,
                     "math_cond": "> depends_on", "depends_on": "train.lo"},
        "train.lo": {"type": "int", "default": 10, "minimum": 1, "maximum": 50, "parent_param": "TRUE"},
        "train.half": {"type": "int", "default": 4, "math_cond": "/ 2", "depends_on": "train.batch"},
        "train.pos": {"type": "float", "default": 0.5, "minimum": 0, "maximum": 1, "math_cond": "> 0.0"},
    })
    space = build_space(schema)
    assert space["train.batch"].choices == (2, 4, 8, 16, 32, 64)  # TAO: powers N**k, k >= 1
    names = [p.name for p in space]
    assert names.index("train.lo") < names.index("train.hi")  # parent first
    assert names.index("train.batch") < names.index("train.half")
    assert space["train.pos"].low > 0
    for s in _samples(space, 200):
        assert s["train.batch"] in space["train.batch"].choices
        assert s["train.width"] % 8 == 0 and 16 <= s["train.width"] <= 96
        assert s["train.hi"] > s["train.lo"]
        assert s["train.half"] == s["train.batch"] // 2
        assert s["train.pos"] > 0


def test_math_cond_errors_and_cycles() -> None:
    with pytest.raises(SpaceError, match="not understood"):
        build_space(_schema({"train.a": {"type": "int", "default": 1, "minimum": 0, "maximum": 4, "math_cond": "prime"}}))
    with pytest.raises(SpaceError, match="int parameters only"):
        build_space(_schema({"train.a": {"type": "float", "default": 1, "minimum": 0, "maximum": 4, "math_cond": "^ 2"}}))
    cyclic = _schema({
        "train.a": {"type": "int", "default": 1, "minimum": 0, "maximum": 9, "math_cond": "> depends_on", "depends_on": "train.b"},
        "train.b": {"type": "int", "default": 1, "minimum": 0, "maximum": 9, "math_cond": "> depends_on", "depends_on": "train.a"},
    })
    with pytest.raises(SpaceError, match="cycle"):
        build_space(cyclic)


def test_depends_on_unsearched_parent_uses_spec() -> None:
    schema = _schema({
        "train.lo": {"type": "int", "default": 10, "minimum": 1, "maximum": 50},
        "train.hi": {"type": "int", "default": 20, "minimum": 1, "maximum": 100, "math_cond": ">= depends_on", "depends_on": "train.lo"},
    }, defaults=["train.hi"])
    space = build_space(schema, spec={"train": {"lo": 90}})
    assert space.fixed == {"train.lo": 90}
    assert all(s["train.hi"] >= 90 for s in _samples(space, 30))


def test_option_weights_respected() -> None:
    schema = _schema({"train.opt": {"type": "categorical", "default": "a", "enum": ["a", "b", "c"], "option_weights": [0.7, 0.2, 0.1]}})
    space = build_space(schema)
    counts = Counter(s["train.opt"] for s in _samples(space, 1000, seed=3))
    assert abs(counts["a"] / 1000 - 0.7) < 0.06 and abs(counts["b"] / 1000 - 0.2) < 0.05 and abs(counts["c"] / 1000 - 0.1) < 0.04
    # the baseline option encodes to a point inside its weight interval, which samples back to it
    raw = space.encode({"train.opt": "b"})
    assert 0.7 < raw["train.opt"] < 0.9
    study = optuna.create_study()
    study.enqueue_trial(raw)
    assert space.sample(study.ask()) == {"train.opt": "b"}
    with pytest.raises(SpaceError, match="one weight per option"):
        build_space(_schema({"train.opt": {"type": "categorical", "default": "a", "enum": ["a", "b"], "option_weights": [1]}}))


def test_grid_on_finite_schema() -> None:
    schema = _schema({
        "train.flag": {"type": "bool", "default": True},
        "train.opt": {"type": "categorical", "default": "x", "enum": ["x", "y", "z"]},
        "train.n": {"type": "int", "default": 2, "minimum": 1, "maximum": 4},
    })
    grid = build_space(schema).grid()
    assert grid is not None and len(grid) == 2 * 3 * 4
    assert {"train.flag": True, "train.opt": "z", "train.n": 3} in grid


def test_baseline_replayed_by_an_enqueued_trial(nvidia_schema: dict[str, Any]) -> None:
    space = build_space(nvidia_schema)
    spec = yaml.safe_load((NVIDIA_SKILL / "references" / "spec_template_train.yaml").read_text())
    spec["train"]["optim"]["lr"] = 2e-4
    baseline = space.baseline(spec)
    assert baseline[LR] == 2e-4
    assert baseline["model.backbone.freeze_backbone"] is False
    assert baseline["dataset.segment.augmentation.random_color.hue"] == 0.3
    # the first trial of a study replays the baseline exactly
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(space.encode(baseline))
    assert space.sample(study.ask()) == baseline


def test_define_by_run(nvidia_schema: dict[str, Any]) -> None:
    space = build_space(nvidia_schema)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = space.define_by_run(trial)
    assert set(values) == {p.name for p in space} and trial.params[LR] == values[LR]
    assert trial.distributions[LR].log


def test_search_range_from_valid_min_max_validity_from_minimum_maximum() -> None:
    """Our schemas: minimum/maximum = validity bounds (NVIDIA's meaning), valid_min/valid_max = search range."""
    from automl.skill import find_skill

    space = build_space(find_skill("segformer").load_schema())
    lr, momentum, wd = space[LR], space["train.optim.momentum"], space["train.optim.weight_decay"]
    assert (lr.low, lr.high, lr.log) == (1e-6, 1e-2, True) and "valid_min/valid_max" in lr.source
    assert (momentum.low, momentum.high, momentum.log) == (0.8, 0.99, False)
    assert (wd.low, wd.high, wd.log) == (1e-5, 0.1, True)
    table = space.describe()
    assert "[1e-06, 0.01]" in table and "[0.8, 0.99]" in table and "[1e-05, 0.1]" in table
    node = {"type": "float", "default": 0.01, "minimum": 0.0, "maximum": 1.0, "valid_min": 1e-5, "valid_max": 0.1}
    # custom ranges may leave the schema's search range but not its validity bounds
    wide = build_space(_schema({"train.wd": node}), param_ranges={"train.wd": {"valid_max": 0.5}})
    assert (wide["train.wd"].low, wide["train.wd"].high) == (1e-5, 0.5)
    with pytest.raises(SpaceError, match="above the schema maximum 1.0"):
        build_space(_schema({"train.wd": node}), param_ranges={"train.wd": {"valid_max": 2.0}})
    # options as well (a trial failed on 1e6 at run time, after a dry run that listed it)
    with pytest.raises(SpaceError, match=r"options \[1000000.0\] are outside the schema's bounds \[0, 1\]"):
        build_space(_schema({"train.wd": node}), param_ranges={"train.wd": {"valid_options": [0.01, 1e6]}})
    assert build_space(_schema({"train.wd": node}), param_ranges={"train.wd": {"valid_options": [0.0, 1.0]}})["train.wd"].choices == (0.0, 1.0)
    only_min = build_space(_schema({"train.x": {"type": "float", "default": 0.5, "minimum": 0, "maximum": 1, "valid_min": 0.2}}))
    assert (only_min["train.x"].low, only_min["train.x"].high) == (0.2, 1.0) and "valid_min, maximum" in only_min["train.x"].source


def test_derived_parameters_in_grid_and_samples() -> None:
    """'/ N' with depends_on is derived, not searched: parent // N in grid points and in draws."""
    space = build_space(_schema({
        "train.batch": {"type": "int", "default": 8, "minimum": 2, "maximum": 16, "math_cond": "^ 2"},
        "train.half": {"type": "int", "default": 4, "math_cond": "/ 2", "depends_on": "train.batch"},
    }))
    grid = space.grid()
    assert [p["train.batch"] for p in grid] == [2, 4, 8, 16]
    assert all(p["train.half"] == p["train.batch"] // 2 for p in grid)
    assert space.infinite_params() == []
    for values in _samples(space, 10):
        assert values["train.half"] == values["train.batch"] // 2
    # the baseline is what the search runs for it: the derived value follows the spec's parent
    baseline = space.baseline({"train": {"batch": 8, "half": 99}})
    assert baseline == {"train.batch": 8, "train.half": 4}
    study = optuna.create_study()
    study.enqueue_trial(space.encode(baseline))
    assert space.sample(study.ask()) == baseline
