"""AutoML for SegFormer: TAO skill files -> search space -> Ray Tune + Optuna trials of the train action.

Importing this package stays light (PyYAML only): Ray, Optuna, MLflow and torch are imported inside
the functions that need them.
"""

from automl.settings import ALGORITHMS, SearchSettings, SettingsError, load_settings, map_tao_settings, merge_settings
from automl.skill import PolicyDecision, Skill, SkillError, find_skill, list_skills, load_skill, load_skill_dir, read_schema, resolve_policy
from automl.space import Param, Space, SpaceError, SpaceWarning, build_space, parameter_status

__all__ = [
    "ALGORITHMS",
    "Param",
    "PolicyDecision",
    "SearchSettings",
    "SettingsError",
    "Skill",
    "SkillError",
    "Space",
    "SpaceError",
    "SpaceWarning",
    "build_space",
    "find_skill",
    "list_skills",
    "load_settings",
    "load_skill",
    "load_skill_dir",
    "map_tao_settings",
    "merge_settings",
    "parameter_status",
    "read_schema",
    "resolve_policy",
]
