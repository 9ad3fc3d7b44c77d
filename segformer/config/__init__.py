"""SegFormer experiment specs (TAO-compatible): dataclasses, loading, overrides, schemas.

Importing this package is light (PyYAML, OmegaConf; jsonschema on first validation): no torch.
"""
from segformer.actions import ACTIONS  # the one list of actions (name -> one-line help)

from .experiment import *  # noqa: F401,F403  (the section dataclasses and BACKBONES)
from .experiment import __all__ as _experiment_all
from .fields import ConfigError, ConfigWarning, FieldSpec, field_, iter_fields, section, spec_of
from .loader import (
    REQUIRED_BY_ACTION,
    action_results_dir,
    apply_overrides,
    dump_config,
    load_config,
    read_spec,
    require,
    spec_problems,
    to_dict,
)
from .tao_schema import (
    ACTION_SECTIONS,
    SPEC_SHORTHAND_KEYS,
    build_tao_schema,
    parse_math_cond,
    read_tao_schema,
    tao_to_json_schema,
    valid_keys,
)

__all__ = [
    *_experiment_all,
    "ConfigError",
    "ConfigWarning",
    "FieldSpec",
    "field_",
    "section",
    "spec_of",
    "iter_fields",
    "load_config",
    "apply_overrides",
    "to_dict",
    "dump_config",
    "require",
    "action_results_dir",
    "spec_problems",
    "read_spec",
    "REQUIRED_BY_ACTION",
    "ACTIONS",
    "ACTION_SECTIONS",
    "SPEC_SHORTHAND_KEYS",
    "build_tao_schema",
    "parse_math_cond",
    "read_tao_schema",
    "tao_to_json_schema",
    "valid_keys",
]
