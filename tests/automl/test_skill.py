"""Locating skills (ours and NVIDIA's folder layout) and the AutoML policy of the skill card."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from automl.skill import SkillError, find_skill, load_skill, load_skill_dir, read_schema, resolve_policy

NVIDIA_SKILL = Path(__file__).resolve().parents[1] / "fixtures" / "tao_reference" / "tao-skill-segformer"


@pytest.fixture
def nvidia_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "tao-train-segformer"
    shutil.copytree(NVIDIA_SKILL, dest)
    return dest


def test_read_schema_accepts_nvidia_infinity(tmp_path: Path) -> None:
    schema = read_schema(NVIDIA_SKILL / "schemas" / "train.schema.json")
    lr = schema["properties"]["train"]["properties"]["optim"]["properties"]["lr"]
    assert lr["maximum"] == math.inf and lr["minimum"] == 0
    odd = tmp_path / "odd.schema.json"
    odd.write_text('{"a": -Infinity, "b": NaN, "c": Infinity}')
    data = read_schema(odd)
    assert data["a"] == -math.inf and math.isnan(data["b"]) and data["c"] == math.inf


def test_skill_dir_nvidia_layout(nvidia_copy: Path) -> None:
    skill = load_skill_dir(nvidia_copy)
    assert skill.name == "segformer" and skill.automl_enabled
    assert set(skill.schemas) >= {"train", "evaluate", "export", "inference", "quantize"}
    # skill_info says ../references/spec_template_train.yaml; it resolves inside the folder
    assert skill.templates["train"] == nvidia_copy / "references" / "spec_template_train.yaml"
    assert skill.load_template("train")["train"]["optim"]["lr"] == pytest.approx(6e-5)
    decision = resolve_policy(skill, "auto")
    assert decision.mode == "search" and "segformer" in decision.reason


def test_policy_off_trains_once(nvidia_copy: Path) -> None:
    decision = resolve_policy(load_skill_dir(nvidia_copy), "off")
    assert decision.mode == "plain" and "off" in decision.reason


def test_policy_missing_schema_is_plain_with_reason(nvidia_copy: Path) -> None:
    (nvidia_copy / "schemas" / "train.schema.json").unlink()
    (nvidia_copy / "references" / "spec_template_train.yaml").unlink()
    decision = resolve_policy(load_skill_dir(nvidia_copy), "auto")
    assert decision.mode == "plain"
    assert decision.reason.startswith("AutoML is enabled for segformer but not runnable until the schemas are generated")
    assert "schemas/train.schema.json" in decision.reason and "references/spec_template_train.yaml" in decision.reason


def test_policy_unparsable_schema_is_an_error(nvidia_copy: Path) -> None:
    """Missing files mean "not generated yet" (TAO trains plainly); a present but broken schema is a
    mistake to fix, not a reason to train once and exit 0."""
    schema = nvidia_copy / "schemas" / "train.schema.json"
    schema.write_text("{not json")
    with pytest.raises(SkillError, match=r"train\.schema\.json: not valid JSON at line 1 column 2"):
        resolve_policy(load_skill_dir(nvidia_copy), "auto")
    assert resolve_policy(load_skill_dir(nvidia_copy), "off").mode == "plain"  # the schema is not needed then


def test_policy_not_enabled(nvidia_copy: Path) -> None:
    info = nvidia_copy / "references" / "skill_info.yaml"
    info.write_text(info.read_text().replace("automl_enabled: true", "automl_enabled: false"))
    decision = resolve_policy(load_skill_dir(nvidia_copy), "auto")
    assert decision.mode == "plain" and "not enabled" in decision.reason


def test_policy_rejects_unknown_value(nvidia_copy: Path) -> None:
    with pytest.raises(SkillError, match="'auto' or 'off'"):
        resolve_policy(load_skill_dir(nvidia_copy), "sometimes")


def test_folder_that_is_not_a_skill(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SkillError, match="not a skill folder: expected references/skill_info.yaml"):
        load_skill_dir(tmp_path)
    with pytest.raises(SkillError, match="no such folder"):
        load_skill_dir(tmp_path / "absent")


def test_unknown_skill_name() -> None:
    with pytest.raises(SkillError, match="unknown skill 'no-such-model'"):
        find_skill("no-such-model")


def test_load_skill_needs_exactly_one_source() -> None:
    with pytest.raises(SkillError, match="exactly one"):
        load_skill()
    with pytest.raises(SkillError, match="exactly one"):
        load_skill("segformer", NVIDIA_SKILL)


def test_our_skill_from_checkout() -> None:
    skill = find_skill("segformer")  # schemas/segformer and templates/segformer of this checkout
    assert skill.layout == "segformer"
    assert skill.schema_path("train").name == "train.schema.json"
    decision = resolve_policy(skill, "auto")
    if not skill.schema_path("train").is_file():  # before the CONFIG helper generates the files
        assert decision.mode == "plain"
    else:
        assert skill.automl_enabled and decision.mode == "search", decision.reason
