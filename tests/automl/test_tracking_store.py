"""New sqlite MLflow stores come from a migrated empty copy kept in the user's cache (real MLflow)."""

from __future__ import annotations

from pathlib import Path

from automl.tracking import Tracker, _sqlite_file, _store_template


def _search(tmp_path: Path, name: str) -> tuple[Tracker, str]:
    results = tmp_path / name
    results.mkdir()
    tracker = Tracker(f"sqlite:///{results / 'mlflow.db'}", results, "segformer")
    run_id = tracker.start_parent(f"search-{name}", {"automl.algorithm": "asha"}, {"automl.skill": "segformer"})
    return tracker, run_id


def test_second_store_is_seeded_from_the_template_and_fully_usable(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = _store_template()
    assert template is not None and not template.exists()
    first, _ = _search(tmp_path, "one")
    assert template.is_file(), "the first new store leaves an empty migrated copy in the cache"
    first_experiment = first.client.get_experiment(first.experiment_id())

    second, run_id = _search(tmp_path, "two")
    experiment = second.client.get_experiment(second.experiment_id())
    # Its own experiment and artifact folder, nothing of the first search's.
    assert experiment.artifact_location.startswith((tmp_path / "two").as_uri())
    assert experiment.artifact_location != first_experiment.artifact_location
    assert [r.info.run_id for r in second.client.search_runs([experiment.experiment_id])] == [run_id]
    assert second.client.get_run(run_id).data.params == {"automl.algorithm": "asha"}
    second.log_metrics(run_id, {"best_val_miou": 0.5}, step=1)
    assert second.client.get_metric_history(run_id, "best_val_miou")[0].value == 0.5
    # The template itself stays empty.
    assert template.stat().st_size > 0
    third = Tracker(f"sqlite:///{template}", tmp_path, "check")
    assert [e.name for e in third.client.search_experiments()] == ["Default"]


def test_unwritable_cache_still_makes_a_store(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    _, run_id = _search(tmp_path, "one")
    assert run_id


def test_only_sqlite_files_are_seeded():
    assert _sqlite_file("sqlite:////abs/mlflow.db") == Path("/abs/mlflow.db")
    assert _sqlite_file("sqlite:///:memory:") is None
    assert _sqlite_file("http://127.0.0.1:5000") is None
    assert _sqlite_file("file:///tmp/mlruns") is None
