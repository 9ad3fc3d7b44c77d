"""AutoML for SegFormer: TAO skill files -> search space -> Ray Tune + Optuna trials of the train action.

The public API a Python user needs, re-exported over the private modules::

    import automl

    opts = automl.SearchOptions.build({"algorithm": "bohb", "max_trials": 16}, results_dir="runs/s1",
                                      spec="spec.yaml")
    outcome = automl.run(opts)                 # or automl.resume("runs/s1") after a crash
    state = automl.load_state("runs/s1")       # the ledger: trials, best, baseline
    print(state.best().name, state.best().best_value)

Importing this package stays light (PyYAML only): Ray, Optuna, MLflow and torch are imported inside
the functions that need them.
"""

from __future__ import annotations

from pathlib import Path

from automl.options import (ALGORITHMS, PromotionConfig, ResourceConfig, SearchConfig, SearchError, SearchOptions,
                            TrackingConfig)
from automl.settings import SettingsError, load_settings, options_from_settings
from automl.runner import SearchOutcome, resume, run
from automl.skill import PolicyDecision, Skill, SkillError, load_skill, resolve_policy
from automl.space import Param, Space, SpaceError, build_space
from automl.state import SearchState, TrialRecord

__all__ = [
    "ALGORITHMS",
    "Param",
    "PolicyDecision",
    "PromotionConfig",
    "ResourceConfig",
    "SearchConfig",
    "SearchError",
    "SearchOptions",
    "SearchOutcome",
    "SearchState",
    "SettingsError",
    "Skill",
    "SkillError",
    "Space",
    "SpaceError",
    "TrackingConfig",
    "TrialRecord",
    "build_space",
    "load_settings",
    "load_skill",
    "load_state",
    "options_from_settings",
    "resolve_policy",
    "resume",
    "run",
]


def load_state(results_dir: str | Path) -> SearchState:
    """A search's ledger, during or after the search."""
    return SearchState.load(results_dir)
