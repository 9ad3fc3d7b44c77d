"""TAO AutoML settings files mapped onto our options, with command-line precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automl.settings import SearchSettings, SettingsError, SettingsWarning, load_settings, map_tao_settings, merge_settings


def test_tao_keys_map_to_our_options(tmp_path: Path) -> None:
    path = tmp_path / "automl.yaml"
    path.write_text(
        "automl_algorithm: Hyperband\n"
        "automl_max_recommendations: 12\n"
        "automl_max_epochs: 9\n"
        "automl_reduction_factor: 3\n"
        "automl_max_concurrent: 2\n"
        'automl_hyperparameters: \'["train.optim.lr", "train.optim.momentum"]\'\n'
        "automl_delete_intermediate_ckpt: false\n"
        "epoch_multiplier: 2\n"
        "override_automl_disabled_params: true\n"
        "metric: val_miou\n"
        "direction: maximize\n"
        "custom_param_ranges:\n"
        "  train.optim.lr: {valid_min: 1.0e-5, valid_max: 1.0e-3}\n"
    )
    settings = merge_settings(load_settings(path), {})
    assert settings.algorithm == "hyperband"
    assert (settings.max_trials, settings.max_epochs, settings.reduction_factor, settings.max_concurrent) == (12, 9, 3, 2)
    assert settings.only == ("train.optim.lr", "train.optim.momentum")
    assert settings.delete_intermediate_checkpoints is False and settings.override_disabled is True
    assert settings.epoch_multiplier == 2 and settings.mode == "max"
    assert settings.param_ranges["train.optim.lr"] == {"valid_min": 1e-5, "valid_max": 1e-3}


def test_json_file_and_nested_algorithm_params(tmp_path: Path) -> None:
    path = tmp_path / "automl.json"
    path.write_text(json.dumps({"automl_algorithm": "asha", "algorithm_specific_params": {"automl_max_trials": 7, "automl_R": 27, "automl_nu": 3}}))
    settings = merge_settings(load_settings(path), None)
    assert (settings.algorithm, settings.max_trials, settings.max_epochs, settings.reduction_factor) == ("asha", 7, 27, 3)


def test_cli_wins_over_file(tmp_path: Path) -> None:
    path = tmp_path / "automl.yaml"
    path.write_text("automl_algorithm: bayesian\nautoml_max_recommendations: 30\nmetric: val_miou\n")
    settings = merge_settings(load_settings(path), {"max_trials": 4, "algorithm": "random", "metric": None, "gpus_per_trial": 0.5})
    assert (settings.algorithm, settings.max_trials, settings.metric, settings.gpus_per_trial) == ("random", 4, "val_miou", 0.5)


def test_defaults() -> None:
    settings = merge_settings({}, {})
    assert settings == SearchSettings()
    assert (settings.algorithm, settings.metric, settings.mode) == ("bayesian", "val_miou", "max")


def test_unknown_key_names_closest() -> None:
    with pytest.raises(SettingsError, match="unknown AutoML setting 'automl_max_recomendations'.*did you mean 'automl_max_recommendations'"):
        map_tao_settings({"automl_max_recomendations": 3})


def test_inapplicable_tao_key_warns() -> None:
    with pytest.warns(SettingsWarning, match="llm_endpoint"):
        assert map_tao_settings({"llm_endpoint": "http://x"}) == {}


def test_unknown_algorithm_lists_valid() -> None:
    with pytest.raises(SettingsError, match="valid: bayesian, hyperband, asha, bohb, pbt, random, grid"):
        merge_settings({"automl_algorithm": "dehb"}, {})
    assert merge_settings({"automl_algorithm": "b"}, {}).algorithm == "bayesian"


def test_conflicting_aliases_and_bad_values() -> None:
    with pytest.raises(SettingsError, match="both set 'max_epochs'"):
        map_tao_settings({"automl_max_epochs": 10, "automl_R": 27})
    with pytest.raises(SettingsError, match="mode must be 'max' or 'min'"):
        merge_settings({"direction": "up"}, {})
    with pytest.raises(SettingsError, match="max_trials must be an integer >= 1"):
        merge_settings({}, {"max_trials": 0})


def test_cpu_lending_setting_file_flag_and_options(tmp_path: Path) -> None:
    from automl.driver import options_from_settings

    assert SearchSettings().lend_idle_cpus is True
    path = tmp_path / "automl.yaml"
    path.write_text("lend_idle_cpus: false\n")
    settings = merge_settings(load_settings(path), {"lend_idle_cpus": None})  # flag not given: the file's
    assert settings.lend_idle_cpus is False
    assert options_from_settings(settings, results_dir=str(tmp_path)).lend_cpus is False
    assert merge_settings({}, {"lend_idle_cpus": False}).lend_idle_cpus is False  # --no-lend-cpus
    with pytest.raises(SettingsError, match="lend_idle_cpus must be true or false, got 'no'"):
        merge_settings({"lend_idle_cpus": "no"}, {})
