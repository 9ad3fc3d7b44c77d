"""Locate a TAO skill (schemas + spec templates + skill_info.yaml) and resolve the AutoML policy.

Two layouts are supported:

* Ours (``--skill segformer``): ``schemas/<name>/<action>.schema.json`` and
  ``templates/<name>/{spec_template_<action>.yaml, skill_info.yaml}`` at the top of a repository
  checkout, or the same two folders shipped in the wheel as ``segformer_skill.schemas`` and
  ``segformer_skill.templates``.
* NVIDIA's skill bank (``--skill-dir PATH``): ``PATH/schemas/<action>.schema.json`` and
  ``PATH/references/{skill_info.yaml, spec_template_<action>.yaml}``. NVIDIA's ``skill_info.yaml``
  lists templates relative to some folder (``../references/spec_template_train.yaml`` in the train
  skill, a bare file name in the deploy skill); we resolve them against the ``skill_info.yaml``
  folder first, then the skill root, then ``references/`` by file name.

The policy follows the skill card: ``auto`` routes training through the search when
``skill_info.yaml`` says ``automl_enabled: true`` and both ``schemas/train.schema.json`` and the train
spec template exist and parse; ``off`` trains the spec once; enabled-but-missing-files trains once
and says why.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

__all__ = [
    "Skill",
    "SkillError",
    "PolicyDecision",
    "find_skill",
    "load_skill",
    "load_skill_dir",
    "list_skills",
    "read_schema",
    "resolve_policy",
]

_SCHEMA_SUFFIX = ".schema.json"
_TEMPLATE_PREFIX = "spec_template_"


class SkillError(ValueError):
    """A skill cannot be found or is not a skill; the message says what was expected and the fix."""


def read_schema(path: str | Path) -> dict[str, Any]:
    """Read a TAO ``*.schema.json`` file, accepting NVIDIA's non-JSON literals.

    NVIDIA's published schemas contain ``Infinity`` (and TAO's generator can emit ``-Infinity`` and
    ``NaN``); Python's ``json`` module maps them to ``float('inf')``/``nan``. Our own generator
    writes strict JSON, which this reader accepts too.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkillError(f"schema file {path} does not exist") from None
    try:
        data = json.loads(text)  # json accepts Infinity, -Infinity and NaN by default
    except json.JSONDecodeError as err:
        raise SkillError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise SkillError(f"{path}: a schema must be a JSON object, got {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@dataclass(frozen=True)
class Skill:
    """A located skill. Paths are absolute; ``schemas``/``templates`` hold the files that exist.

    ``schema_dir``/``template_dir`` are where a missing file would be expected, so that
    ``schema_path("train")`` can name it in messages even when it is absent.
    """

    name: str
    root: Path
    skill_info: Mapping[str, Any]
    schemas: Mapping[str, Path]
    templates: Mapping[str, Path]
    automl_enabled: bool
    schema_dir: Path
    template_dir: Path
    layout: Literal["segformer", "tao"] = "tao"
    declared_templates: Mapping[str, Path] = field(default_factory=dict)

    def schema_path(self, action: str) -> Path:
        """Where ``<action>.schema.json`` is (or would be) for this skill."""
        return self.schemas.get(action, self.schema_dir / f"{action}{_SCHEMA_SUFFIX}")

    def template_path(self, action: str) -> Path:
        """Where the spec template of ``action`` is (or, as declared/expected, would be)."""
        if action in self.templates:
            return self.templates[action]
        if action in self.declared_templates:
            return self.declared_templates[action]
        return self.template_dir / f"{_TEMPLATE_PREFIX}{action}.yaml"

    def load_schema(self, action: str = "train") -> dict[str, Any]:
        """The parsed schema of ``action`` (Infinity accepted)."""
        return read_schema(self.schema_path(action))

    def load_template(self, action: str = "train") -> dict[str, Any]:
        """The parsed spec template of ``action`` (yaml.safe_load)."""
        path = self.template_path(action)
        if not path.is_file():
            raise SkillError(f"skill {self.name!r} has no spec template for {action!r}: {path} does not exist")
        data = _read_yaml(path)
        if not isinstance(data, dict):
            raise SkillError(f"{path}: a spec template must be a YAML mapping, got {type(data).__name__}")
        return data

    def relative(self, path: Path) -> str:
        """``path`` relative to the skill root when possible (for short messages)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class PolicyDecision:
    """What the train action does: ``search`` (AutoML) or ``plain`` (train the spec once), and why."""

    mode: Literal["search", "plain"]
    reason: str


# --------------------------------------------------------------------------------------------
# Locating skills
# --------------------------------------------------------------------------------------------


def _checkout_dirs() -> tuple[Path, Path] | None:
    """``(schemas, templates)`` at the top of a repository checkout, when we run from one."""
    repo = Path(__file__).resolve().parents[1]
    schemas, templates = repo / "schemas", repo / "templates"
    if schemas.is_dir() and templates.is_dir() and (repo / "automl").is_dir():
        return schemas, templates
    return None


def _packaged_dirs() -> tuple[Path, Path] | None:
    """``(schemas, templates)`` of the installed ``segformer_skill`` package, if installed.

    The skill folders ship as namespace packages (generated JSON/YAML, no ``__init__.py``), so they
    are located through the import system's search locations rather than ``importlib.resources``,
    which cannot open a namespace package whose parent has no folder of its own (editable installs).
    """
    from importlib.util import find_spec

    found = []
    for package in ("segformer_skill.schemas.segformer", "segformer_skill.templates.segformer"):
        try:
            spec = find_spec(package)
        except ImportError:  # parent package missing: not installed
            return None
        folders = [Path(p) for p in (spec.submodule_search_locations or []) if Path(p).is_dir()] if spec else []
        if not folders:
            return None
        found.append(folders[0].parent)
    return found[0], found[1]


def _skill_base_dirs() -> tuple[Path, Path]:
    for locate in (_checkout_dirs, _packaged_dirs):  # a checkout wins over an installed wheel
        dirs = locate()
        if dirs is not None:
            return dirs
    raise SkillError(
        "cannot find our skill files: neither a repository checkout (schemas/ and templates/ next to "
        "automl/) nor the installed package segformer_skill is available; reinstall the package or "
        "pass --skill-dir PATH"
    )


def list_skills() -> list[str]:
    """Names accepted by ``find_skill``: the folders under our ``templates/`` with a skill_info.yaml
    or under ``schemas/`` with schema files."""
    try:
        schemas, templates = _skill_base_dirs()
    except SkillError:
        return []
    names = {p.parent.name for p in templates.glob("*/skill_info.yaml")}
    names |= {p.parent.name for p in schemas.glob(f"*/*{_SCHEMA_SUFFIX}")}
    return sorted(names)


def _collect(directory: Path, pattern: str, strip_prefix: str, strip_suffix: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if directory.is_dir():
        for path in sorted(directory.glob(pattern)):
            if path.is_file():
                found[path.name[len(strip_prefix) : len(path.name) - len(strip_suffix)]] = path.resolve()
    return found


def _automl_enabled(skill_info: Mapping[str, Any], source: Path) -> bool:
    value = skill_info.get("automl_enabled", False)
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise SkillError(f"{source}: automl_enabled must be true or false, got {value!r}")
    return value


def _load_skill_info(path: Path) -> dict[str, Any]:
    try:
        info = _read_yaml(path)
    except yaml.YAMLError as err:
        raise SkillError(f"{path}: not valid YAML: {err}") from None
    if info is None:
        info = {}
    if not isinstance(info, dict):
        raise SkillError(f"{path}: skill_info.yaml must be a mapping, got {type(info).__name__}")
    return info


def find_skill(name: str) -> Skill:
    """Our own skill by name (``--skill segformer``), from the checkout or the installed wheel."""
    schemas_base, templates_base = _skill_base_dirs()
    schema_dir, template_dir = schemas_base / name, templates_base / name
    if not schema_dir.is_dir() and not template_dir.is_dir():
        known = list_skills()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SkillError(
            f"unknown skill {name!r}: known skills are {known or '(none)'}{hint} "
            f"(looked in {schemas_base} and {templates_base}); for NVIDIA's skill folders use --skill-dir PATH"
        )
    info_path = template_dir / "skill_info.yaml"
    info = _load_skill_info(info_path) if info_path.is_file() else {}
    templates = _collect(template_dir, f"{_TEMPLATE_PREFIX}*.yaml", _TEMPLATE_PREFIX, ".yaml")
    declared = _declared_templates(info, info_path.parent, template_dir.parent, template_dir)
    return Skill(
        name=name,
        root=schemas_base.parent.resolve(),
        skill_info=info,
        schemas=_collect(schema_dir, f"*{_SCHEMA_SUFFIX}", "", _SCHEMA_SUFFIX),
        templates={**{k: v for k, v in declared.items() if v.is_file()}, **templates},
        automl_enabled=_automl_enabled(info, info_path) if info else False,
        schema_dir=schema_dir.resolve(),
        template_dir=template_dir.resolve(),
        layout="segformer",
        declared_templates=declared,
    )


def _declared_templates(
    info: Mapping[str, Any], info_dir: Path, root: Path, references: Path
) -> dict[str, Path]:
    """skill_info's ``spec_templates`` resolved to paths: next to skill_info.yaml, then the root,
    then ``references/<file name>``; the first candidate that exists wins, else the first one."""
    declared = info.get("spec_templates") or {}
    if not isinstance(declared, Mapping):
        return {}
    resolved: dict[str, Path] = {}
    for action, rel in declared.items():
        if not isinstance(rel, str) or not rel:
            continue
        candidates = [(info_dir / rel).resolve(), (root / rel).resolve(), (references / Path(rel).name).resolve()]
        resolved[str(action)] = next((c for c in candidates if c.is_file()), candidates[0])
    return resolved


def load_skill_dir(path: str | Path) -> Skill:
    """A skill folder in NVIDIA's layout (``--skill-dir PATH``)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise SkillError(f"--skill-dir {path}: no such folder")
    info_path = root / "references" / "skill_info.yaml"
    if not info_path.is_file():
        found = "found " + ", ".join(sorted(p.name for p in root.iterdir())[:8]) if any(root.iterdir()) else "it is empty"
        raise SkillError(
            f"{root} is not a skill folder: expected references/skill_info.yaml (NVIDIA's layout: "
            f"schemas/<action>.schema.json, references/skill_info.yaml, references/spec_template_<action>.yaml); "
            f"{found}"
        )
    info = _load_skill_info(info_path)
    references = root / "references"
    declared = _declared_templates(info, info_path.parent, root, references)
    templates = _collect(references, f"{_TEMPLATE_PREFIX}*.yaml", _TEMPLATE_PREFIX, ".yaml")
    return Skill(
        name=str(info.get("network_arch") or info.get("name") or root.name),
        root=root,
        skill_info=info,
        schemas=_collect(root / "schemas", f"*{_SCHEMA_SUFFIX}", "", _SCHEMA_SUFFIX),
        templates={**templates, **{k: v for k, v in declared.items() if v.is_file()}},
        automl_enabled=_automl_enabled(info, info_path),
        schema_dir=root / "schemas",
        template_dir=references,
        layout="tao",
        declared_templates=declared,
    )


def load_skill(skill: str | None = None, skill_dir: str | Path | None = None) -> Skill:
    """The CLI entry: exactly one of ``--skill NAME`` or ``--skill-dir PATH``."""
    if (skill is None) == (skill_dir is None):
        raise SkillError("give exactly one of --skill NAME (ours, e.g. segformer) or --skill-dir PATH (NVIDIA's layout)")
    return find_skill(skill) if skill is not None else load_skill_dir(skill_dir)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


def _train_files_problems(skill: Skill) -> list[str]:
    """What keeps AutoML from running: a missing train schema or template (TAO then trains plainly).
    One that is present but does not parse is an error naming it (SkillError)."""
    problems: list[str] = []
    schema = skill.schema_path("train")
    if not schema.is_file():
        problems.append(skill.relative(schema))
    else:
        read_schema(schema)  # present but broken: an error naming the file, never a silent plain training
    template = skill.template_path("train")
    if not template.is_file():
        problems.append(skill.relative(template))
    else:
        try:
            skill.load_template("train")
        except yaml.YAMLError as err:
            raise SkillError(f"{template}: not valid YAML: {err}") from None
    return problems


def resolve_policy(skill: Skill, requested: str = "auto") -> PolicyDecision:
    """Decide how ``train`` runs for ``skill`` under ``--policy auto|off`` (TAO's ``automl_policy``).

    ``on`` is accepted as a synonym of ``auto`` (newer skill cards use on/off).
    """
    policy = str(requested).strip().lower()
    if policy == "on":
        policy = "auto"
    if policy not in {"auto", "off"}:
        raise SkillError(f"automl policy must be 'auto' or 'off', got {requested!r}")
    if policy == "off":
        return PolicyDecision("plain", f"AutoML policy is off for this run: training the {skill.name} spec once")
    if not skill.automl_enabled:
        return PolicyDecision(
            "plain", f"AutoML is not enabled for {skill.name} (skill_info.yaml has no automl_enabled: true); training the spec once"
        )
    problems = _train_files_problems(skill)
    if problems:
        return PolicyDecision(
            "plain",
            f"AutoML is enabled for {skill.name} but not runnable until the schemas are generated "
            f"(missing: {', '.join(problems)})",
        )
    return PolicyDecision(
        "search",
        f"AutoML is enabled for {skill.name} and {skill.relative(skill.schema_path('train'))} and "
        f"{skill.relative(skill.template_path('train'))} are present",
    )
