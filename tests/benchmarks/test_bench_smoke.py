"""Pure helpers of the benchmarks (no timing assertions: the benchmarks print and record figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.common import SearchRun, epoch_events, format_machine, machine_info, median, replace_section
from benchmarks.search_efficiency import band, best_curve, epochs_to_reach
from benchmarks.search_overhead import breakdown
from benchmarks.search_scaling import rates


def test_best_curve_running_best_padded_and_cut():
    assert best_curve([0.2, None, 0.1, 0.5, 0.4], budget=4) == [0.2, 0.2, 0.2, 0.5]
    assert best_curve([0.3], budget=3) == [0.3, 0.3, 0.3]  # a search that ended early keeps its best
    assert best_curve([None, 0.3], budget=3) == [None, 0.3, 0.3]
    assert best_curve([0.5, 0.2, 0.7], budget=3, mode="min") == [0.5, 0.2, 0.2]


def test_epochs_to_reach_and_band():
    curve = best_curve([0.1, 0.3, 0.6, 0.6], budget=4)
    assert epochs_to_reach(curve, 0.3) == 2
    assert epochs_to_reach(curve, 0.61) is None
    mean, low, high = band([[None, 0.2, 0.4], [0.1, 0.4, 0.4]])
    assert mean[0] is None and low[0] is None
    assert abs(mean[1] - 0.3) < 1e-12 and low[1] == 0.2 and high[1] == 0.4


def test_replace_section_keeps_others_and_orders_new_ones():
    text = "# Benchmark results\n\n## Model speed\n\nfast\n\n## Deploy speed\n\nonnx\n"
    out = replace_section(text, "Search overhead", "## Search overhead\n\nnew\n")
    assert out.index("## Deploy speed") < out.index("## Search overhead") and "fast" in out and "onnx" in out
    out = replace_section(out, "Machine", "## Machine\n\ncpu\n")
    assert out.index("## Machine") < out.index("## Model speed")
    out = replace_section(out, "Model speed", "## Model speed\n\nfaster\n")
    assert "faster" in out and "fast\n" not in out.replace("faster", "") and out.count("## Model speed") == 1
    # A labelled run of a benchmark (seed_for_seed --label) goes right after its unlabelled section.
    out = replace_section(out, "Model speed: gpu", "## Model speed: gpu\n\nh200\n")
    assert out.index("## Model speed\n") < out.index("## Model speed: gpu") < out.index("## Deploy speed")


def test_machine_description_names_cpu_memory_and_libraries():
    info = machine_info()
    assert info["cores"] >= 1 and "torch" in info["versions"] and "onnxruntime" in info["versions"]
    line = format_machine(info)
    assert "cores" in line and "GiB RAM" in line and "GPU:" in line and "lightning" in line
    assert median([3, 1, 2]) == 2 and median([1, 2, 3, 4]) == 2.5 and median([]) is None


def _fake_run(tmp_path: Path) -> SearchRun:
    """Two sequential trials, 2 epochs each, with the ledger and timing.json shapes the driver writes."""
    t0 = 1000.0
    trials, timings = {}, {}
    for i, start in enumerate((t0 + 5, t0 + 20)):
        name = f"trial_{i:03d}"
        trials[f"id{i}"] = {"name": name, "status": "FINISHED", "started_at": start, "run_started_at": start,
                            "ended_at": start + 10, "node_id": "n1",
                            "history": [{"epoch": 1, "val_miou": 0.2 + i / 10}, {"epoch": 2, "val_miou": 0.4 - i / 10}]}
        epochs = []
        for e in range(2):
            s = start + 2 + 4 * e
            epochs.append({"epoch": e, "epoch_start_at": s, "train_step_s": 2.0, "train_steps": 2, "val_step_s": 0.5,
                           "val_steps": 1, "data_wait_s": 0.1, "val_start_at": s + 2.5, "val_end_at": s + 3.0,
                           "epoch_end_at": s + 3.5})
        timings[name] = [{"created_at": start + 1.5, "first_batch_at": start + 2.0, "fit_end_at": start + 9.8,
                          "epochs": epochs}]
    state = {"metric": "val_miou", "trials": trials}
    return SearchRun(tmp_path, wall_s=40.0, started_at=t0, ended_at=t0 + 40, returncode=0, state=state, timings=timings)


def test_epoch_events_follow_completion_time(tmp_path):
    events = epoch_events(_fake_run(tmp_path))
    assert [(e["trial"], e["epoch"]) for e in events] == [("trial_000", 1), ("trial_000", 2), ("trial_001", 1), ("trial_001", 2)]
    assert best_curve([e["value"] for e in events], 4) == [0.2, 0.4, 0.4, 0.4]


def test_overhead_breakdown_adds_up(tmp_path):
    run = _fake_run(tmp_path)
    result = breakdown(run)
    assert result["steps_s"] == 2 * 2 * 2.5 and result["trials"] == 2 and result["epochs"] == 4
    # Start-up: the ledger's Ray trial start -> the first training batch in the trial's timing.json.
    assert result["startup_s"] == [2.0, 2.0] and result["startup_median_after_first_s"] == 2.0
    assert abs(sum(result["parts"].values()) - run.wall_s) < 1e-6  # every second is attributed once
    assert result["parts"]["idle slots"] == 5.0 and result["parts"]["search start"] == 5.0
    assert abs(result["share"] - 10 / 40) < 1e-12
    json.dumps(result)  # recorded as JSON


def test_overhead_breakdown_with_concurrent_trials(tmp_path):
    """Two slots: compute is 2 x wall; an empty slot while one trial runs counts as idle."""
    run = _fake_run(tmp_path)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "promotion.json").write_text(json.dumps({"steps": {"evaluate": {"seconds": 4.0},
                                                                            "export": {"status": "skipped"}}}))
    result = breakdown(run, slots=2)
    assert abs(sum(result["parts"].values()) - 2 * run.wall_s) < 1e-6
    assert result["parts"]["promotion"] == 8.0 and result["parts"]["search end"] == 12.0
    assert result["parts"]["idle slots"] == 2 * 25 - 20
    assert abs(result["share"] - 10 / 80) < 1e-12 and abs(result["share_of_trial_phase"] - 10 / 50) < 1e-12


def test_scaling_rates(tmp_path):
    row = rates(_fake_run(tmp_path))
    assert row["trials"] == 2 and row["phase_s"] == 25.0 and row["mean_running"] == 20 / 25 and abs(row["per_hour"] - 3600 * 2 / 25) < 1e-9


def test_stopped_trial_without_timing_or_epoch_end(tmp_path):
    """A trial stopped inside its first report: no epoch end; without timing it is placed by the ledger."""
    run = _fake_run(tmp_path)
    last = run.timings["trial_001"][0]
    del last["epochs"][1]["epoch_end_at"], last["fit_end_at"]
    result = breakdown(run)
    assert abs(sum(result["parts"].values()) - run.wall_s) < 1e-6
    del run.timings["trial_000"]
    events = epoch_events(run)
    assert [e["trial"] for e in events] == ["trial_000", "trial_000", "trial_001", "trial_001"]
    assert events[1]["at"] == run.state["trials"]["id0"]["ended_at"]


def test_projection_of_the_share_with_longer_trials(tmp_path):
    """share(S) = S / (S (1 + per_step) + fixed): the limit and the steps needed for the target."""
    from benchmarks.search_overhead import projection

    result = breakdown(_fake_run(tmp_path))
    proj = projection(result, target=0.5)
    per_step = sum(result["parts"][k] for k in ("Lightning start", "data wait", "training loop other",
                                                "validation other", "checkpoint + report")) / result["steps_s"]
    assert abs(proj["per_step"] - per_step) < 1e-12
    assert abs(proj["fixed_s"] + result["steps_s"] * (1 + per_step) - result["wall_s"]) < 1e-6  # the rest is fixed
    steps = proj["steps_for_target"]
    assert abs(steps / (steps * (1 + per_step) + proj["fixed_s"]) - 0.5) < 1e-9
    assert projection(result, target=proj["asymptote"] + 0.01)["steps_for_target"] is None


def test_demo_wall_render_states_the_quick_exit_share():
    from benchmarks.demo_wall import render

    names = ["after (this checkout)", "before (abc1234)", "before (abc1234), normal exit"]
    result = {"walls": dict(zip(names, ([100.0, 110.0, 90.0], [105.0, 104.0, 106.0], [110.0, 108.0, 112.0]))),
              "shares": {n: [0.9, 0.9, 0.9] for n in names}, "failed": {n: 0 for n in names},
              "before": "abc1234", "written_at": "2026-11-30 00:00", "machine": "test machine"}
    text = render(result)
    assert "| before (abc1234) | 105.0, 104.0, 106.0 | 105.0 | 1.050 |" in text
    assert "+5.0 s, +4.5% of the demo's wall time, under the 5% needed to keep it" in text  # medians 110 vs 105
    assert "up to 20.0 s (20.0% of after's median)" in text
    assert "exited non-zero" not in text


def test_realdata_labels_tiles_and_splits():
    import numpy as np

    from benchmarks.realdata import binary, boundary, by_band, by_frame, by_row, tiles

    instances = np.zeros((6, 8), dtype=np.uint16)
    instances[1:5, 1:4] = 7  # a 4x3 object next to
    instances[1:5, 4:7] = 9  # a touching one
    labels = boundary(instances)
    assert labels[0].tolist() == [0] * 8  # background stays 0
    assert labels[2].tolist() == [0, 2, 1, 2, 2, 1, 2, 0]  # outline and the shared edge are boundary
    assert binary(instances).sum() == 24
    assert list(tiles(700, 1100, 256)) == [(t, l) for t in (0, 256) for l in (0, 256, 512, 768)]
    splits = [by_frame(f, 0, 20) for f in range(20)]
    assert splits.count("train") == 14 and splits[14:17] == ["val"] * 3 and splits[17:] == ["test"] * 3
    assert [by_row(0, r, 1) for r in range(4)] == ["train", "train", "val", "test"]
    assert [by_band(0, r, 1) for r in range(11)] == ["train"] * 4 + ["val", "test", "val"] + ["train"] * 4


def test_realdata_crops_each_frame_around_its_objects():
    """A colony drifting across the field: each frame's window follows its objects, stays inside the
    frame at an edge, and keeps the centre of a frame without objects; image and mask are cut alike."""
    import numpy as np

    from benchmarks.realdata import centred_crops

    instances = np.zeros((3, 20, 30), dtype=np.uint16)
    instances[0, 8:12, 20:24] = 1  # the middle of the frame's right half
    instances[1, 0:2, 0:3] = 2  # the top-left corner
    images = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    crops, masks = centred_crops(images, instances, 10)
    assert crops.shape == masks.shape == (3, 10, 10)
    assert (crops[0] == images[0, 5:15, 17:27]).all() and masks[0].sum() == 16  # the whole object, centred
    assert (crops[1] == images[1, 0:10, 0:10]).all() and masks[1].sum() == 12  # clipped to the frame
    assert (crops[2] == images[2, 5:15, 10:20]).all() and not masks[2].any()  # no objects: the centre
    with pytest.raises(SystemExit, match="a crop of 25 px does not fit frames of 20x30"):
        centred_crops(images, instances, 25)


def test_realdata_reads_a_colour_image_and_an_npz_mask_from_a_wheel(tmp_path):
    """histolytics ships its H&E field as a JPEG and its class mask as an .npz: both come out of the
    archive as one frame, the colour image untouched by the fluorescence stretch."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from benchmarks.realdata import Dataset, Source, as_is, build, by_row, read_stack, to_uint8

    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 90
    classes = np.arange(24, dtype=np.int32).reshape(4, 6) % 4
    png, npz, two = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    np.savez(npz, nuc_raster=classes)
    np.savez(two, a=classes, b=classes)
    wheel = tmp_path / "data.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/he.png", png.getvalue())
        archive.writestr("pkg/types.npz", npz.getvalue())
        archive.writestr("pkg/two.npz", two.getvalue())
    images, masks = read_stack(wheel, "pkg/he.png"), read_stack(wheel, "pkg/types.npz")
    assert images.shape == (1, 4, 6, 3) and masks.shape == (1, 4, 6)
    assert (to_uint8(images[0]) == rgb).all()
    assert as_is(masks[0]).dtype == np.uint8 and (as_is(masks[0]) == classes).all()
    with pytest.raises(SystemExit, match="two.npz holds"):
        read_stack(wheel, "pkg/two.npz")
    with pytest.raises(SystemExit, match="not 8-bit class ids"):
        as_is(classes * 100)
    # a mask with more classes than the dataset names stops the build before a tile is written
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel.rename(wheels / "pkg-1.0-py3-none-any.whl")
    two_classes = Dataset("he", Source("pkg==1.0", "pkg/he.png", "pkg/types.npz"), ("a", "b"), as_is, 2, by_row)
    with pytest.raises(SystemExit, match="frame 0 holds class id 3, but he has 2 classes"):
        build(two_classes, tmp_path / "out", wheels, epochs=1)
    assert not (tmp_path / "out").exists()


def test_realdata_fills_the_polygons_of_a_geoparquet_file_as_instances(tmp_path):
    """histolytics ships its stroma nuclei as WKB polygons in a GeoParquet file: each is filled with
    its own instance id, in pixel coordinates (x to the right, y down); anything but a polygon stops."""
    import io
    import struct
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.realdata import binary, read_polygons

    def polygon(points, order="<"):
        ring = [*points, points[0]]
        return (bytes([1 if order == "<" else 0]) + struct.pack(order + "III", 3, 1, len(ring))
                + struct.pack(order + f"{2 * len(ring)}d", *[c for xy in ring for c in xy]))

    square = polygon([(1, 1), (3, 1), (3, 2), (1, 2)])  # x 1..3, y 1..2
    big_endian = polygon([(5, 0), (6, 0), (6, 3), (5, 3)], order=">")
    wheel = tmp_path / "data.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, rows in (("pkg/cells.parquet", [square, big_endian]),
                             ("pkg/points.parquet", [bytes([1]) + struct.pack("<Idd", 1, 2.0, 2.0)])):
            table, buffer = pa.table({"geometry": pa.array(rows, pa.binary()), "class_name": ["a"] * len(rows)}), io.BytesIO()
            pq.write_table(table, buffer)
            archive.writestr(member, buffer.getvalue())
    mask = read_polygons(wheel, "pkg/cells.parquet", 4, 8)
    assert mask.shape == (1, 4, 8)
    assert (mask[0, 1:3, 1:4] == 1).all() and (mask[0, 0:4, 5:7] == 2).all()
    assert binary(mask[0]).sum() == 6 + 8  # nothing outside the two outlines
    with pytest.raises(SystemExit, match="points.parquet row 0 is WKB geometry type 1, not a polygon"):
        read_polygons(wheel, "pkg/points.parquet", 4, 8)


def test_realdata_reads_nifti_volumes_as_tissue_slices(tmp_path):
    """nilearn ships the MNI template and its tissue maps as gzipped NIfTI-1 volumes (x fastest on
    disk): each voxel takes the class of the larger probability, only the slices with brain are kept,
    cropped to a square around it with the front of the head up; slabs of slices split with a margin."""
    import gzip
    import struct
    import zipfile

    import numpy as np

    from benchmarks.realdata import Source, brain_tissue, by_slab, read_nifti

    def nifti(volume: np.ndarray, datatype: int = 2) -> bytes:  # volume as (z, y, x)
        header = bytearray(352)
        struct.pack_into("<i", header, 0, 348)
        struct.pack_into("<8h", header, 40, 3, volume.shape[2], volume.shape[1], volume.shape[0], 1, 1, 1, 1)
        struct.pack_into("<hh", header, 70, datatype, volume.dtype.itemsize * 8)
        struct.pack_into("<f", header, 108, 352.0)
        return gzip.compress(bytes(header) + volume.astype(volume.dtype.newbyteorder("<")).tobytes())

    z, y, x = 6, 10, 9
    t1 = np.arange(z * y * x, dtype=np.uint8).reshape(z, y, x)
    grey, white = np.zeros((z, y, x), np.uint8), np.zeros((z, y, x), np.uint8)
    grey[1:5, 2:7, 3:8], white[1:5, 3:6, 4:7] = 200, 0
    white[1:5, 4:5, 5:6], grey[1:5, 4:5, 5:6] = 180, 60  # the core: more white than grey
    grey[1, 2, 3] = 100  # 100 of 255: background (155) wins
    wheel = tmp_path / "data.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, volume in (("t1", t1), ("gm", grey), ("wm", white)):
            archive.writestr(f"pkg/{name}.nii.gz", nifti(volume))
        archive.writestr("pkg/f32.nii.gz", nifti(t1.astype(np.float32), datatype=16))
    assert (read_nifti(wheel, "pkg/t1.nii.gz") == t1[:, ::-1, :]).all()  # rows flipped: the front up
    assert (read_nifti(wheel, "pkg/f32.nii.gz") == t1[:, ::-1, :]).all()
    images, classes = brain_tissue(wheel, Source("pkg==1", "pkg/t1.nii.gz", "pkg/gm.nii.gz", ("pkg/wm.nii.gz",)), side=6)
    assert images.shape == (4, 6, 6, 3) and classes.shape == (4, 6, 6)  # slices 1-4 only
    assert (images[..., 0] == t1[1:5, ::-1, :][:, 2:8, 2:8]).all()  # brain rows and columns 3-7: the crop 2-7
    assert images.dtype == np.uint8 and (images[..., 0] == images[..., 2]).all()
    assert [(classes[i] == 1).sum() for i in range(4)] == [23, 24, 24, 24]  # 25 grey, less the core and the weak voxel
    assert (classes == 2).sum() == 4 and classes[:, 1:6, 1:6].astype(bool).sum() == (classes > 0).sum()  # brain at 1-5 of the crop
    with pytest.raises(SystemExit, match="not within 4"):
        brain_tissue(wheel, Source("pkg==1", "pkg/t1.nii.gz", "pkg/gm.nii.gz", ("pkg/wm.nii.gz",)), side=4)
    splits = [by_slab(f, 0, 80) for f in range(80)]
    assert splits[:14] == ["train"] * 14 and splits[14:18] == [None] * 4 and splits[18:22] == ["val"] * 4
    assert splits[30:34] == [None] * 4 and splits[34:38] == ["test"] * 4 and splits[38:42] == [None] * 4
    assert splits[74:] == ["test"] * 6  # the last slab: no train slice beyond it to keep away from
    assert splits.count("val") == 8 and splits.count("train") == 34 and splits.count(None) == 28


def test_search_quality_counts_epochs_from_status_files_and_renders(tmp_path):
    """Epochs are counted the way acceptance counts them (status.json lines), and the table compares
    the default search's promoted model with the best plain seed on the test split."""
    from benchmarks.search_quality import render, status_epochs

    for trial, epochs in (("trial_000", 4), ("trial_001", 1), ("trial_002", 4)):
        folder = tmp_path / trial / "train"
        folder.mkdir(parents=True)
        (folder / "status.json").write_text("".join(f'{{"epoch": {e}, "step": {e}, "val_miou": 0.5}}\n' for e in range(epochs)))
    assert status_epochs(tmp_path) == 9
    verdict = {"confirmed": True, "gain": 0.02, "gain_stderr": 0.005, "leader": "trial_001", "baseline": "trial_000",
               "leader_values": [0.70, 0.71], "baseline_values": [0.65, 0.66]}
    search = {"promoted": "trial_002", "test_miou": 0.62, "trials": 3, "epochs": 9, "budget_epochs": 20, "wall_s": 120.0,
              "recheck": verdict, "final": {"test_miou": {"trial_000": 0.60, "trial_001": 0.63}}}
    baseline_led = {**verdict, "confirmed": False, "leader_values": [0.64, 0.70]}  # the runner-up, below the baseline
    text = render({"real": {"plain": [{"test_miou": v} for v in (0.60, 0.59, 0.61)],
                            "searches": {"default": search, "random": {**search, "test_miou": 0.6, "recheck": {}},
                                         "default@1": {**search, "test_miou": 0.64, "recheck": baseline_led}}}})
    assert "| real | 0.600 (0.590..0.610) | 0.610 | 0.620 (trial_002; +0.010 vs best plain) | confirmed, gain +0.020 ± 0.005 | 9 (20) | 2 min |" in text
    assert "| real | random | 0.600 | -0.010 | 3 | 9 | baseline led |" in text
    # searches repeated with another search seed are summarised per algorithm (a single one is not)
    assert "| real | default | 2 | 0.630 (0.620..0.640) | +0.020 |" in text and "| real | random | 1 |" not in text
    # the re-check's worth: promoted vs the search's baseline training (+0.02, +0.04), and the best trial
    # promoted unchecked (+0.03; the baseline itself, +0, where it led); searches without a re-check left out
    assert "| real | 2 | +0.0300 (+0.0200) | +0.0150 (+0.0000) |" in text


def test_seed_for_seed_pairs_each_search_with_the_plain_training_of_its_seed(tmp_path):
    """The difference is search minus plain of the same seed (its mean with the standard error), and
    each search is ranked among all the plain trainings, not only its own."""
    from benchmarks.seed_for_seed import plot, render, summarise

    pairs = [{"seed": 0, "plain": 0.60, "search": 0.62, "promoted": "trial_003", "outcome": "confirmed", "epochs": 200,
              "budget_epochs": 200, "wall_s": 60.0},
             {"seed": 1, "plain": 0.64, "search": 0.63, "promoted": "trial_009", "outcome": "not confirmed", "epochs": 200,
              "budget_epochs": 200, "wall_s": 60.0}]
    s = summarise(pairs)
    assert s["mean_diff"] == pytest.approx(0.005) and s["se"] == pytest.approx(0.0212132 / 2 ** 0.5, abs=1e-6)
    assert s["wins"] == 1 and s["ranks"] == [2, 2]  # 0.62 and 0.63 are each below only the 0.64 training
    text = render({"args": "--seeds 2", "machine": "m", "date": "d", "datasets": {"real": pairs}})
    assert "| real | 1 | 0.6400 | 0.6300 (trial_009) | -0.0100 | not confirmed | 200 (200) |" in text
    assert "| real | 2 | 0.6200 (0.6000..0.6400) | 0.6250 | +0.0050 +/- 0.0150 | 1 of 2 | 2 of 3, 2 of 3 |" in text
    assert "![each seed's plain training and its search](results/seed_for_seed.png)" in text
    labelled = render({"args": "--seeds 2 --label tao_lr", "machine": "m", "date": "d", "datasets": {"real": pairs}},
                      "Search against the spec, seed for seed: tao_lr", "seed_for_seed_tao_lr.png")
    assert labelled.startswith("## Search against the spec, seed for seed: tao_lr\n")
    assert "(results/seed_for_seed_tao_lr.png)" in labelled and "(results/seed_for_seed.png)" not in labelled
    picture = plot({"datasets": {"real": pairs, "other": pairs[:1]}}, tmp_path / "seeds.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recheck_rules_are_replayed_against_the_test_split():
    """--rules: each rule decides on a recorded verdict's two seeds; a promoted leader's test gain is
    realised, and a declined one that gained on test is counted as missed."""
    from benchmarks.search_quality import RULES, rule_replay

    def row(g0: float, g1: float, test: float) -> dict:
        verdict = {"leader_values": [0.5 + g0, 0.5 + g1], "baseline_values": [0.5, 0.5], "baseline_led": False}
        return {"recheck": verdict, "final": {"leader": {"mean": 0.6 + test}, "baseline": {"mean": 0.6}}}

    searches = {"a": row(0.05, 0.04, 0.03),  # a steady lead every rule takes: +0.03 on test
                "b": row(0.10, 0.01, 0.02),  # moved by 0.09 between seeds: only 'g1 > 0' takes it
                "c": row(0.01, -0.01, 0.01),  # lost on the fresh seed: no rule takes it, +0.01 on test missed
                "led": {**row(0.0, 0.0, 0.5), "recheck": {"baseline_led": True}}}  # the baseline led: left out
    rows = rule_replay({"real": {"plain": [], "searches": searches}})
    by_rule = dict(zip([*RULES, "oracle"], rows))
    assert by_rule[next(iter(RULES))].endswith("| 1 of 3 | +0.030 | 0 | 2 |")  # the product's rule: b and c missed
    assert by_rule["g1 > 0"].endswith("| 2 of 3 | +0.050 | 0 | 1 |")
    assert by_rule["oracle"].endswith("| 3 of 3 | +0.060 | 0 | 0 |")


def test_a_plain_seed_picked_by_validation_is_ranked_on_test():
    """--rules, second table: the seed with the best validation mIoU, its test score and rank."""
    from benchmarks.search_quality import seed_pick

    plain = [{"seed": 0, "best_val_miou": 0.70, "test_miou": 0.61}, {"seed": 1, "best_val_miou": 0.72, "test_miou": 0.60},
             {"seed": 2, "best_val_miou": 0.69, "test_miou": 0.62}]
    rows = seed_pick({"real": {"plain": plain, "searches": {}}, "lucky": {"plain": plain[::2], "searches": {}}})
    assert rows[0] == "| real | 3 | seed 1: 0.6000 | 0.6200 | 0.6100 | 3 |"
    assert rows[1] == "| lucky | 2 | seed 0: 0.6100 | 0.6200 | 0.6150 | 2 |"
    assert rows[2].startswith("| picked the best test seed | 0 of 2 |")


def test_the_test_splits_resolution_is_a_paired_bootstrap_over_its_images():
    """The SD of a gain over resampled test images: none between a model and itself, and it shrinks
    as the square root of the images (the same images four times over: about half)."""
    import numpy as np

    from benchmarks.search_quality import _miou, paired_bootstrap_sd, render

    rng = np.random.default_rng(1)
    # per-image (2, 2) confusion matrices: rows the true class, columns the predicted one
    a = rng.integers(1, 50, size=(8, 2, 2)).astype(np.int64)
    b = a.copy()
    b[:, 1, 1] -= rng.integers(0, 20, size=8).clip(max=a[:, 1, 1] - 1)  # b misses some class-1 pixels a gets
    b[:, 1, 0] += a[:, 1, 1] - b[:, 1, 1]
    assert paired_bootstrap_sd(a, a) == 0.0
    assert _miou(a) > _miou(b)
    few, many = paired_bootstrap_sd(a, b), paired_bootstrap_sd(np.tile(a, (4, 1, 1)), np.tile(b, (4, 1, 1)))
    assert few > 0 and 0.35 < many / few < 0.65
    row = {"search": "default", "against": "plain seed 0", "images": 8, "gain": _miou(a) - _miou(b), "sd": few}
    text = render({"real": {"plain": [], "searches": {}, "test_resolution": row}})
    assert f"| real | 8 | default | plain seed 0 | {_miou(a) - _miou(b):+.4f} | {few:.4f} |" in text


def test_search_quality_efficiency_reads_random_best_exactly_and_within_the_seed_noise():
    """Each search's epochs to random's final best val_miou, and to within the plain seeds' spread of
    it; a search that never gets there says so."""
    from benchmarks.search_quality import reach

    plain = [{"best_val_miou": v} for v in (0.60, 0.595, 0.59)]
    searches = {"random": {"curve": [None, 0.5, 0.58, 0.58, 0.62, 0.62]},
                "asha": {"curve": [0.55, 0.612, 0.615, 0.615, 0.615, 0.615]},
                "default": {"curve": [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]}}
    [line] = reach({"real": {"plain": plain, "searches": searches}})
    assert "random's final best val_miou 0.6200 after 6 search epochs (a third: 2)" in line, line
    exact, near = line.split("; to within")
    assert "random 5, asha never, default never" in exact, line
    assert "(0.0100)" in near and "random 5, asha 2, default never" in near, line


def test_fidelity_rank_starts_from_the_spec_and_spreads_the_rest_around_it(tmp_path):
    """The spec's own optimizer values come first; the others cover a decade either side of its lr
    (each half of the log range gets some) and weight decays in [0, 0.1]; the table reads each row."""
    from benchmarks.fidelity_rank import configurations, render

    spec = tmp_path / "spec.yaml"
    spec.write_text("train:\n  optim: {lr: 0.001, weight_decay: 0.02}\n")
    configs = configurations(spec, 10)
    assert configs[0] == {"lr": 0.001, "weight_decay": 0.02} and len(configs) == 10
    lrs = [c["lr"] for c in configs[1:]]
    assert all(1e-4 <= v <= 1e-2 for v in lrs) and min(lrs) < 3e-4 and max(lrs) > 3e-3
    assert all(0 <= c["weight_decay"] <= 0.1 for c in configs[1:]) and len(set(lrs)) == 9
    row = {"fidelity": "short: a 2-epoch training", "spearman": 0.7, "best_in_top_third": True, "regret": 0.0, "scores": []}
    text = render({"real": {"configs": configs, "full": [0.5, 0.6], "rows": [row], "epochs_per_config": 48}})
    assert "| short: a 2-epoch training | +0.70 | yes | 0.0000 |" in text and "best full val mIoU 0.6000" in text


def test_deploy_search_renders_both_searches_against_the_limit():
    """The table names each search's promoted architecture, latency and test mIoU, and the ratio of
    the two latencies."""
    from benchmarks.deploy_search import render

    def row(label, backbone, size, latency, bits, miou):
        return {"label": label, "promoted": "trial_003", "params": {"model.backbone.type": backbone, "dataset.segment.img_size": size},
                "latency": {"latency_ms": latency, "precision_bits": bits}, "test_miou": miou, "baseline_test_miou": 0.60,
                "baseline_latency": {"latency_ms": 10.0}, "limit_ms": 5.0, "trials": 9, "infeasible": 3, "epochs": 80,
                "wall_s": 600.0}

    text = render("real", {"constrained": row("constrained", "mit_b0", 96, 4.0, 8, 0.58),
                           "unconstrained": row("unconstrained", "mit_b1", 128, 16.0, 32, 0.62)}, ["--budget", "4"])
    assert "| constrained | trial_003 | mit_b0 @ 96 px, int8 | 4.00 | 0.580 | 9 (3) | 80 | 10 min |" in text
    assert "The limit: 5.00 ms (a share of the spec's own model at fp32, measured in the same passes as the others; the spec deploys at fp32 in 10.00 ms)" in text and "0.25x the unconstrained one's latency, at -0.040" in text


def test_gpu_check_runs_its_parts_on_the_cpu_in_smoke_mode_and_renders_the_section():
    """benchmarks/gpu_check.py's code, run for real on the CPU (--quick): the numbers mean nothing
    here, the GPU machine's run records them. A part that breaks is recorded, never raised."""
    from benchmarks.gpu_check import _part, amp_training, environment, section

    data: dict = {}
    _part("environment", environment, data)
    _part("AMP training", lambda: amp_training(batch=1, size=64, steps=1, smoke=True), data)
    _part("model speed", lambda: 1 / 0, data)
    amp = data["AMP training"]
    assert amp["status"] == "ok" and amp["fp32"]["step_ms"] > 0 and amp["bf16"]["images_per_s"] > 0
    assert data["model speed"]["status"] == "error" and "ZeroDivisionError" in data["model speed"]["error"]
    text = section(data)
    assert text.startswith("## GPU check") and "AMP training, B0 64x64, batch 1" in text
    assert "Model speed: error: ZeroDivisionError" in text and "Fractional-GPU search: not run" in text


def test_gpu_check_times_trainings_sharing_the_device_from_their_status_files():
    """The shared-GPU part, run for real on the CPU (smoke): 1 then 2 `segformer train` processes at
    once, each timed by its epochs after the first; the section reads the throughput against one."""
    from benchmarks.gpu_check import section, shared_gpu

    part = shared_gpu((1, 2), size=32, train=4, epochs=2, workers=0, timeout=240, smoke=True)
    assert part["status"] == "ok", part
    one, two = part["at_once"]["1"], part["at_once"]["2"]
    assert one["throughput_vs_one"] == 1.0 and one["epoch_s"] > 0 and two["epoch_s"] > 0
    assert abs(two["epochs_per_s"] - 2 / two["epoch_s"]) <= 0.02 * two["epochs_per_s"]  # two trainings' epochs
    text = section({"trainings sharing the GPU": part})
    assert "Trainings sharing the GPU (B0 32x32, 4 images, 0 data workers each;" in text
    assert f"2 at once {two['epochs_per_s']} (**{two['throughput_vs_one']}x**" in text


def test_gpu_check_tells_modules_it_could_not_collect_for_want_of_the_search_packages_from_failures():
    """The first GPU run (H200, 2026-12-04): both GPU tests passed, but four modules that import Ray
    or Optuna at their top could not be collected there (a lent machine has room for neither), and
    the check said "failed". Such errors are reported as not collected; any other error, or a failed
    test, still fails the part. (pytest's output as it printed it there, shortened.)"""
    from benchmarks.gpu_check import pytest_result, section

    def log(*blocks: str, summary: str) -> str:
        return "==== ERRORS ====\n" + "".join(blocks) + f"==== short test summary info ====\n{summary}\n"

    ray = ("_____ ERROR collecting tests/automl/test_budget.py _____\nImportError while importing test module\n"
           "E   ModuleNotFoundError: No module named 'ray'\n")
    optuna = ("_____ ERROR collecting tests/automl/test_space.py _____\n"
              "E   ModuleNotFoundError: No module named 'optuna.distributions'\n")
    other = "_____ ERROR collecting tests/x.py _____\nE   SyntaxError: invalid syntax\n"
    ok = pytest_result(log(ray, optuna, summary="2 passed, 6 skipped, 2 errors in 3.0s"), 1)
    assert ok["status"] == "ok"
    assert ok["not_collected"] == ["tests/automl/test_budget.py (needs ray)", "tests/automl/test_space.py (needs optuna)"]
    assert pytest_result(log(ray, other, summary="2 passed, 2 errors in 3.0s"), 1)["status"] == "failed"
    assert pytest_result(log(ray, summary="1 failed, 1 passed, 1 error in 3.0s"), 1)["status"] == "failed"
    assert pytest_result("1 failed, 1 passed in 3.0s", 1)["status"] == "failed"
    assert pytest_result("2 passed in 3.0s", 0) == {"status": "ok", "exit_code": 0, "summary": "2 passed in 3.0s",
                                                   "not_collected": [], "skips": []}
    text = section({"pytest -m gpu": ok})
    assert ("- `pytest -m gpu`: 2 passed, 6 skipped, 2 errors in 3.0s; not collected here: "
            "tests/automl/test_budget.py (needs ray)") in text


def test_search_scale_section_states_the_ratio_and_the_targets():
    import argparse

    from benchmarks.search_scale import render

    def row(variant, size, ms):
        return {"variant": variant, "size": size, "events": 220, "per_event_ms": ms, "events_per_s": 1000 / ms,
                "by_callback_ms": {"LedgerCallback": ms / 2, "MlflowCallback": ms / 2}, "status_block_ms": 3,
                "load_ms": 40, "state_bytes": 2_000_000}

    rows = [row("after", 100, 2.0), row("before", 100, 40.0), row("after", 5000, 3.0), row("before", 5000, 1500.0)]
    args = argparse.Namespace(sizes=[100, 5000], ray_trials=0, small=False)
    text = render(rows, None, args)
    assert text.startswith("## Search bookkeeping at scale")
    assert "1.50x the cost at 100" in text and "333 events/s at 5000" in text
    assert "5000 trials 1500.0 / 3.00 ms (500x)" in text
