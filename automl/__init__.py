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
from typing import TYPE_CHECKING, Any

from automl.options import (ALGORITHMS, PromotionConfig, ResourceConfig, SearchConfig, SearchError, SearchOptions,
                            TrackingConfig)
from automl.settings import SettingsError, load_settings, options_from_settings
from automl.skill import PolicyDecision, Skill, SkillError, load_skill, resolve_policy
from automl.space import Param, Space, SpaceError, build_space
from automl.state import SearchState, TrialRecord

if TYPE_CHECKING:
    from automl.runner import SearchOutcome

__all__ = [
    "ALGORITHMS",
    "Param",
    "PolicyDecision",
    "PromotionConfig",
    "ResourceConfig",
    "SearchConfig",
    "SearchError",
    "SearchOptions",
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


def run(opts: SearchOptions, **kwargs: Any) -> "SearchOutcome":
    """Search (or train once, as the policy says), promote the best trial and write the report
    (`automl.runner.run`: echo=, dry_run=, live=)."""
    from automl.runner import run as _run

    return _run(opts, **kwargs)


def resume(results_dir: str | Path, **kwargs: Any) -> "SearchOutcome":
    """Continue an interrupted search in `results_dir` (`automl.runner.resume`: echo=, live=, address=)."""
    from automl.runner import resume as _resume

    return _resume(results_dir, **kwargs)


def load_state(results_dir: str | Path) -> SearchState:
    """A search's ledger, during or after the search."""
    return SearchState.load(results_dir)
