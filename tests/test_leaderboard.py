"""Tests of the leaderboard (lttoolbox/leaderboard/, run as benchmarks/leaderboard.py).

The end-to-end test runs a small suite on the embedded digits data set with a one-epoch smoke
protocol, stops after one run, resumes, and checks the md/csv/json tables against the runs'
``results.json`` (means and standard deviations computed here with numpy). The other tests need
no training.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from lttoolbox.errors import ConfigError
from lttoolbox.leaderboard.archive import LIMIT, ArchiveError, merge, pack, plan_merge
from lttoolbox.leaderboard.references import References
from lttoolbox.leaderboard.report import collect, markdown, stats
from lttoolbox.leaderboard.runner import FRESH, RESUME, SKIP, STALE, decide, move_aside
from lttoolbox.leaderboard.suite import Planner, compose_recipe, flatten_overlay, load_suite

ROOT = Path(__file__).resolve().parents[1]
from lttoolbox.recipe import dump_recipe  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def references_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "refs.yaml", {
        "sources": {"toy": {"paper": "Toy et al. A toy paper. 2020."},
                    "other": {"paper": "Other et al. Another paper. 2021."}},
        "entries": [
            {"method": "ce", "source": "toy", "table": "Table 1", "dataset": "digits_lt",
             "imbalance_type": "exp", "imbalance_ratio": 10, "top1_error": 20.0},
            {"method": "focal", "source": "toy", "table": "Table 1", "dataset": "digits_lt",
             "imbalance_type": "exp", "imbalance_ratio": 10, "top1_error": 15.0},
            {"method": "focal", "source": "other", "table": "Table 3", "dataset": "digits_lt",
             "imbalance_type": "exp", "imbalance_ratio": 10, "top1_accuracy": 88.0},
        ]})


def digits_suite(tmp_path: Path, **extra) -> Path:
    """Two trainable rows on digits, a row whose run fails and a row that does not exist yet."""
    references_file(tmp_path)
    suite = {
        "name": "digits_smoke", "title": "Digits smoke", "baseline": "ce",
        "references": "refs.yaml", "reference_priority": ["toy", "other"],
        "notes": ["A test suite."],
        "protocols": {"smoke": {"epochs": 1, "overlay": {}}},
        "settings": [{"id": "exp10", "label": "LT ratio 10",
                      "overlay": {"data": {"imbalance_type": "exp", "imbalance_ratio": 10}}}],
        "rows": [
            {"id": "ce", "label": "CE", "recipe": str(QUICKSTART)},
            {"id": "focal", "label": "Focal", "recipe": str(QUICKSTART),
             "overlay": {"loss": {"name": "focal", "gamma": 1.0}}},
            {"id": "broken", "label": "Broken", "recipe": str(QUICKSTART),
             "overlay": {"loss": {"name": "no_such_loss"}}},
            {"id": "mixup", "label": "Mixup", "recipe": None, "status": "not yet available"},
        ],
        **extra,
    }
    return write_yaml(tmp_path / "suite.yaml", suite)


def leaderboard(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "leaderboard.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)


def leaderboard_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """:func:`leaderboard` in this process, for the commands that train nothing (``--dry-run``,
    ``--report-only``): the script only calls ``lttoolbox.leaderboard.cli.main``, and starting a
    Python with torch for each call costs seconds on a busy machine."""
    from lttoolbox.leaderboard.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["leaderboard.py", *args], code, out, err)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.long
def test_sigterm_stops_a_background_leaderboard_resumably(tmp_path):
    """A leaderboard started with `nohup ... &` (SIGINT ignored) and stopped with SIGTERM stops its
    running lttrain, records the attempt as interrupted, and the next invocation resumes it."""
    import signal
    import time

    suite = digits_suite(tmp_path, protocols={"long": {"epochs": 100_000, "overlay": {}}})
    out = tmp_path / "lb"
    common = [sys.executable, str(ROOT / "benchmarks" / "leaderboard.py"), str(suite),
              "--protocol", "long", "--rows", "ce", "--out", str(out), "--no-plots"]
    run_dir = out / "runs" / "exp10" / "ce" / "seed0"
    proc = subprocess.Popen(common, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while not (run_dir / "log.jsonl").is_file() or not (run_dir / "log.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "no epoch within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted; it resumes next time" in output
    attempts = json.loads((run_dir / "leaderboard_run.json").read_text())["attempts"]
    assert attempts[-1]["interrupted"] and attempts[-1]["returncode"] == 130
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "results.json").exists()
    again = subprocess.run(common + ["--dry-run"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert "exp10/ce/seed0 [resume]" in again.stdout, again.stdout + again.stderr


@pytest.mark.long
def test_rows_sharing_a_first_phase_train_it_once_with_the_result_of_a_run_from_scratch(
        tmp_path):
    crt = {"id": "crt", "label": "cRT", "recipe": str(QUICKSTART),
           "overlay": {"phases": [{"name": "joint"},
                                  {"name": "crt", "sampler": {"name": "class_balanced"},
                                   "train": {"epochs": 30, "freeze": ["backbone"],
                                             "reset_head": True}}]}}
    lws = {**crt, "id": "lws", "label": "LWS"}
    suite = digits_suite(tmp_path, rows=[{"id": "ce", "label": "CE", "recipe": str(QUICKSTART)},
                                         crt, lws])
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    # the multi-phase rows first: the scheduler still waits for the CE run they share
    common = [str(suite), "--protocol", "smoke", "--no-plots", "--threads-per-job", "1"]
    dry = leaderboard(*common, "--out", str(shared), "--priority", "crt", "lws", "--dry-run")
    assert "exp10/crt/seed0 [fresh]" in dry.stdout
    assert "(first phase from exp10/ce/seed0 or exp10/lws/seed0 once it has ended)" in dry.stdout
    done = leaderboard(*common, "--out", str(shared), "--priority", "crt", "lws", "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exp10/crt/seed0: its first phase is taken from exp10/ce/seed0" in done.stdout
    assert "exp10/lws/seed0: its first phase is taken from exp10/ce/seed0" in done.stdout
    scratch = leaderboard(*common, "--out", str(alone), "--rows", "crt")
    assert scratch.returncode == 0, scratch.stdout + scratch.stderr
    assert "taken from" not in scratch.stdout

    def results(out, row):
        return json.loads((out / "runs" / "exp10" / row / "seed0" / "results.json").read_text())

    reused, fresh = results(shared, "crt"), results(alone, "crt")
    assert reused["reused"]["from"] == str((shared / "runs" / "exp10" / "ce" / "seed0").resolve())
    assert "reused" not in fresh
    for key in ("top1", "per_class_acc", "confusion_matrix", "recipe_hash"):
        assert reused[key] == fresh[key], key
    assert ([(r["phase"], r["loss"]) for r in reused["history"]]
            == [(r["phase"], r["loss"]) for r in fresh["history"]])


def ce_and_crt_suite(tmp_path: Path) -> Path:
    """A CE row and a cRT row whose first phase is the CE row's recipe."""
    crt = {"id": "crt", "label": "cRT", "recipe": str(QUICKSTART),
           "overlay": {"phases": [{"name": "joint"},
                                  {"name": "crt", "train": {"epochs": 30,
                                                            "freeze": ["backbone"]}}]}}
    return digits_suite(tmp_path, rows=[{"id": "ce", "label": "CE", "recipe": str(QUICKSTART)},
                                        crt])


def test_dry_run_names_a_shared_first_phase_only_where_the_runner_can_take_it(tmp_path,
                                                                               capsys):
    """A donor neither queued nor past its first phase on disk is not waited for (the run
    trains that phase itself), so the dry run does not promise it."""
    suite = ce_and_crt_suite(tmp_path)
    common = [str(suite), "--protocol", "smoke", "--no-plots", "--out", str(tmp_path / "lb"),
              "--dry-run"]
    alone = leaderboard_here(capsys, *common, "--rows", "crt")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "exp10/crt/seed0 [fresh]" in alone.stdout and "first phase from" not in alone.stdout
    both = leaderboard_here(capsys, *common, "--rows", "crt", "ce")
    assert "(first phase from exp10/ce/seed0 once it has ended)" in both.stdout, both.stdout


def test_a_finished_run_without_weights_gives_no_first_phase(tmp_path, capsys):
    """A run merged from a --pack archive holds results.json but no checkpoint: the rows that
    share its first phase must train it themselves instead of failing in lttrain --from-run."""
    from lttoolbox.leaderboard.runner import first_phase_ended
    path = ce_and_crt_suite(tmp_path)
    planner = Planner(load_suite(path), "smoke", tmp_path / "lb")
    ce, two = planner.plan("ce", "exp10", 0), planner.plan("crt", "exp10", 0)
    for run in (ce, two):  # finished, as a merge leaves them
        run.dir.mkdir(parents=True)
        (run.dir / "results.json").write_text(json.dumps({"recipe_hash": run.hash,
                                                          "protocol": "smoke"}))
    assert not first_phase_ended(ce, "smoke") and not first_phase_ended(two, "smoke")
    (two.dir / "results.json").unlink()  # crt is to run; CE is finished without weights
    dry = leaderboard_here(capsys, str(path), "--protocol", "smoke", "--no-plots", "--out",
                           str(tmp_path / "lb"), "--dry-run")
    assert "exp10/crt/seed0 [fresh]" in dry.stdout and "first phase from" not in dry.stdout

    (ce.dir / "checkpoint.pt").write_bytes(b"x")  # a single-phase run: its checkpoint is all
    assert first_phase_ended(ce, "smoke")
    (two.dir / "checkpoint.pt").write_bytes(b"x")
    dump_recipe(two.recipe, two.dir / "recipe.yaml")
    assert not first_phase_ended(two, "smoke")  # a multi-phase run needs model-joint.pt too
    (two.dir / "model-joint.pt").write_bytes(b"x")
    assert first_phase_ended(two, "smoke")


def test_two_multi_phase_rows_sharing_a_first_phase_are_ordered_without_waiting_in_a_circle(
        tmp_path):
    from lttoolbox.leaderboard.runner import Runner, donor_map
    phases = [{"name": "joint"}, {"name": "crt", "train": {"epochs": 30, "freeze": ["backbone"]}}]
    rows = [{"id": i, "recipe": str(QUICKSTART), "overlay": {"phases": phases}}
            for i in ("crt", "lws")] + [{"id": "focal", "recipe": str(QUICKSTART),
                                         "overlay": {"loss": {"name": "focal"}}}]
    suite = load_suite(digits_suite(tmp_path, rows=rows, baseline="focal"))
    planner = Planner(suite, "smoke", tmp_path / "lb")
    runs = [planner.plan(r, "exp10", 0) for r in ("focal", "lws", "crt")]
    donors = donor_map(runs, runs)
    assert {k: [d.key for d in v] for k, v in donors.items()} == {
        "exp10/lws/seed0": ["exp10/crt/seed0"], "exp10/crt/seed0": ["exp10/lws/seed0"]}
    runner = Runner("smoke")
    runner.donors = donors
    assert [r.row for r in runner.donors_first(runs)] == ["focal", "crt", "lws"]


@pytest.mark.long
def test_two_row_smoke_suite_end_to_end_with_interrupt_and_resume(tmp_path):
    suite, out = digits_suite(tmp_path), tmp_path / "lb"
    common = [str(suite), "--protocol", "smoke", "--out", str(out), "--no-plots"]
    ce0 = out / "runs" / "exp10" / "ce" / "seed0"

    # 1) Stop after one run: the baseline's first seed.
    first = leaderboard(*common, "--seeds", "0", "--max-runs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (ce0 / "results.json").is_file()
    assert not (out / "runs" / "exp10" / "focal").exists()
    doc = json.loads((out / "leaderboard.json").read_text())
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    assert rows["ce"]["status"] == "done" and rows["focal"]["status"] == "pending"
    mtime = (ce0 / "results.json").stat().st_mtime_ns

    # 2) The same command without the limit (two at a time) skips the finished run and runs the
    #    rest; the broken row fails on its own and is recorded, the leaderboard goes on.
    second = leaderboard(*common, "--seeds", "0", "--jobs", "2", "--threads-per-job", "1")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "exp10/ce/seed0: starting" not in second.stdout
    assert (ce0 / "results.json").stat().st_mtime_ns == mtime
    (attempt,) = json.loads((ce0 / "leaderboard_run.json").read_text())["attempts"]
    # each attempt names its machine: a run carried between machines has several
    import platform
    assert attempt["host"] == platform.node() and attempt["cpu"]
    assert (out / "runs" / "exp10" / "focal" / "seed0" / "results.json").is_file()

    # 3) A second seed for the baseline only; the table keeps every matching run on disk.
    third = leaderboard(*common, "--seeds", "1", "--rows", "ce")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 runs planned, 0 finished, 1 to run" in third.stdout

    results = {(row, seed): json.loads((out / "runs" / "exp10" / row / f"seed{seed}" /
                                        "results.json").read_text())
               for row, seed in (("ce", 0), ("ce", 1), ("focal", 0))}
    for res in results.values():
        assert res["protocol"] == "smoke" and res["epochs"] == 1
    assert results[("ce", 0)]["seed"] == 0 and results[("ce", 1)]["seed"] == 1
    expected = {}
    for row, seeds in (("ce", (0, 1)), ("focal", (0,))):
        expected[row] = {}
        for metric in ("top1", "mean_class_acc", "many", "medium", "few"):
            vals = np.array([results[(row, s)][metric] for s in seeds], dtype=float)
            expected[row][metric] = (vals.mean(), vals.std(ddof=1) if len(vals) > 1 else None)
    delta = expected["focal"]["top1"][0] - expected["ce"]["top1"][0]

    # JSON
    doc = json.loads((out / "leaderboard.json").read_text())
    assert doc["protocol"]["name"] == "smoke"
    assert doc["machines"] and doc["machines"][0]["device"] == "cpu"
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    assert list(rows) == ["ce", "focal", "broken", "mixup"]  # nothing silently dropped
    assert rows["ce"]["n"] == 2 and rows["ce"]["seeds"] == [0, 1]
    assert rows["focal"]["n"] == 1
    for row in ("ce", "focal"):
        for metric, (mean, std) in expected[row].items():
            got = rows[row]["metrics"][metric]
            assert got["mean"] == pytest.approx(mean, abs=1e-9)
            if std is None:
                assert got["std"] is None
            else:
                assert got["std"] == pytest.approx(std, abs=1e-9)
    assert rows["focal"]["delta_top1"] == pytest.approx(delta, abs=1e-9)
    assert rows["ce"]["paper"]["top1"] == pytest.approx(80.0)
    assert rows["focal"]["paper"]["top1"] == pytest.approx(85.0)   # "toy" outranks "other"
    assert rows["focal"]["paper"]["delta_top1"] == pytest.approx(5.0)
    assert rows["focal"]["vs_paper"]["difference"] is None          # not the paper protocol
    assert rows["focal"]["vs_paper"]["direction"] == (
        "no change" if delta == 0 else "same" if delta > 0 else "opposite")
    assert rows["broken"]["status"] == "failed" and "no_such_loss" in rows["broken"]["reason"]
    assert rows["mixup"]["status"] == "not available"
    assert rows["ce"]["costs"]["train_seconds"]["mean"] == pytest.approx(
        np.mean([results[("ce", s)]["seconds"] for s in (0, 1)]))

    # CSV
    with open(out / "leaderboard.csv") as handle:
        records = {r["row"]: r for r in csv.DictReader(handle)}
    assert float(records["ce"]["top1_mean"]) == pytest.approx(expected["ce"]["top1"][0])
    assert float(records["ce"]["top1_std"]) == pytest.approx(expected["ce"]["top1"][1])
    assert float(records["ce"]["few_mean"]) == pytest.approx(expected["ce"]["few"][0])
    assert records["focal"]["top1_std"] == ""
    assert float(records["focal"]["delta_top1_vs_baseline"]) == pytest.approx(delta)
    assert records["ce"]["seeds"] == "0 1" and records["ce"]["n_seeds"] == "2"
    assert records["mixup"]["status"] == "not available"
    assert records["broken"]["status"] == "failed"

    # Markdown
    md = (out / "leaderboard.md").read_text()
    mean, std = expected["ce"]["top1"]
    assert f"| CE | 2 | 1 | {mean:.2f} ± {std:.2f} |" in md  # seeds, epochs, top-1
    assert f"| Focal | 1 | 1 | {expected['focal']['top1'][0]:.2f} |" in md
    assert f"{delta:+.2f}" in md
    assert "not yet available" in md and "no_such_loss" in md
    assert "Protocol: `smoke`" in md and "Final-epoch numbers only" in md
    assert "Toy et al. A toy paper. 2020. — Table 1." in md
    assert "A test suite." in md


# ------------------------------------------------------------------------------ suites
@pytest.mark.parametrize("change, key", [
    ({"colour": "red"}, "suite.colour"),
    ({"baseline": "nope"}, "baseline"),
    ({"rows": [{"id": "a", "recipe": None}, {"id": "a", "recipe": None}]}, "rows"),
    ({"rows": [{"id": "a", "recipe": None, "settings": ["zzz"]}]}, "rows[0].settings"),
    ({"rows": [{"id": "a b", "recipe": None}]}, "rows[0].id"),
    ({"rows": [{"id": "a", "recipe": None, "flavour": 1}]}, "rows[0].flavour"),
    ({"settings": [{"id": "s", "rows": ["nope"]}]}, "settings[0].rows"),
    ({"settings": []}, "settings"),
    ({"protocols": {"quick": {"epochs": 0}}}, "protocols.quick.epochs"),
])
def test_bad_suites_name_the_key(tmp_path, change, key):
    suite = {"name": "s", "baseline": None, "references": None,
             "settings": [{"id": "s", "overlay": {}}],
             "rows": [{"id": "a", "recipe": None, "status": "not yet available"}]}
    suite.update(change)
    with pytest.raises(ConfigError, match="^" + re.escape(key)):
        load_suite(write_yaml(tmp_path / "suite.yaml", suite))


def test_missing_suite_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_unknown_protocol_is_a_config_error(tmp_path):
    suite = load_suite(digits_suite(tmp_path))
    with pytest.raises(ConfigError, match="unknown protocol 'fast'"):
        Planner(suite, "fast", tmp_path / "out")


def test_setting_rows_restrict_where_a_row_runs(tmp_path):
    suite = load_suite(digits_suite(tmp_path, settings=[
        {"id": "exp10", "overlay": {}}, {"id": "step10", "rows": ["ce"], "overlay": {}}]))
    assert suite.row("ce").runs_in("step10") and not suite.row("focal").runs_in("step10")
    assert suite.row("focal").runs_in("exp10")


def test_flatten_overlay_matches_deep_merge_semantics():
    flat = flatten_overlay({"data": {"root": "../x y", "imbalance_ratio": 50},
                            "schedule": {"milestones": [3, 4]}, "augment": [], "generator": None,
                            "loss": {"name": "ce", "weights": {}}})
    assert flat == ['data.root="../x y"', "data.imbalance_ratio=50", "schedule.milestones=[3, 4]",
                    "augment=[]", "generator=null", 'loss.name="ce"', "loss.weights={}"]


def multi_phase_recipe(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "two_phase.yaml", {
        "_base_": str(QUICKSTART),
        "train": {"epochs": 200},
        "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": [160, 180]},
        "sampler": {"name": "class_balanced", "start_epoch": 160},
        "generator": {"name": "toy", "epoch_thresh": 159},
        "phases": [{"name": "first"},
                   {"name": "second", "train": {"epochs": 10}, "loss": {"name": "focal"}}],
    })


def test_overlays_reach_every_phase_and_quick_scales_every_switch(tmp_path):
    recipe = multi_phase_recipe(tmp_path)
    suite = load_suite(write_yaml(tmp_path / "suite.yaml", {
        "name": "s", "references": None,
        "overlay": {"eval": {"ece_bins": 10}},
        "settings": [{"id": "r5", "overlay": {"data": {"imbalance_ratio": 5}}}],
        "rows": [{"id": "two", "recipe": str(recipe), "overrides": ["optim.lr=0.02"]}]}))
    composed = compose_recipe(suite, suite.row("two"), suite.setting("r5"), "quick", seed=3,
                              extra_overrides=["train.amp=bf16"])
    assert composed["meta"]["protocol"] == "quick"
    # 200 -> 30 epochs: factor 0.15; 160 -> 24, 180 -> 27, 10 -> 1.5 -> 2; the warm-up keeps
    # its fraction per step: 5 -> 0.75 epochs
    assert composed["train"]["epochs"] == 30
    assert composed["schedule"]["milestones"] == [24, 27]
    assert composed["schedule"]["warmup_epochs"] == 0.75
    assert composed["schedule"]["warmup_unit"] == "step"
    assert composed["sampler"]["start_epoch"] == 24
    first, second = composed["phases"]
    for phase in (first, second):
        assert phase["data"]["imbalance_ratio"] == 5
        assert phase["eval"]["ece_bins"] == 10
        assert phase["optim"]["lr"] == 0.02
        assert phase["train"]["seed"] == 3
        assert phase["train"]["amp"] == "bf16"
    assert first["train"]["epochs"] == 30 and second["train"]["epochs"] == 2
    assert second["loss"]["name"] == "focal"


def test_quick_scales_each_recipe_by_its_own_budget(tmp_path):
    """30 per 200 for every recipe: 400 epochs -> 60, each phase by the same factor, rounded
    to the nearest epoch (halves to even), at least 1 epoch; 0-epoch phases stay 0. The smoke
    protocol (epochs alone) still gives every first phase its fixed length."""
    long = write_yaml(tmp_path / "long.yaml", {
        "_base_": str(QUICKSTART), "train": {"epochs": 400},
        "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": [320, 360]},
        "phases": [{"name": "a"}, {"name": "b", "train": {"epochs": 30}},
                   {"name": "c", "train": {"epochs": 3}}, {"name": "d", "train": {"epochs": 0}},
                   {"name": "e", "train": {"epochs": 10}}]})
    odd = write_yaml(tmp_path / "odd.yaml", {"_base_": str(QUICKSTART), "train": {"epochs": 210}})
    suite = load_suite(write_yaml(tmp_path / "suite.yaml", {
        "name": "s", "references": None, "settings": [{"id": "a", "overlay": {}}],
        "rows": [{"id": "long", "recipe": str(long)}, {"id": "odd", "recipe": str(odd)},
                 {"id": "base", "recipe": str(QUICKSTART), "overrides": ["train.epochs=200"]}]}))
    quick = Planner(suite, "quick", tmp_path / "out")
    run = quick.plan("long", "a", 0)
    # 400 * 0.15 = 60; 30 * 0.15 = 4.5 -> 4; 3 * 0.15 = 0.45 -> at least 1; 10 * 0.15 = 1.5 -> 2
    assert run.written_epochs == [400, 30, 3, 0, 10]
    assert run.epochs == [60, 4, 1, 0, 2]
    assert run.recipe["schedule"]["milestones"] == [48, 54]  # 320, 360 by 0.15
    assert run.recipe["phases"][0]["schedule"]["warmup_epochs"] == 0.75
    assert not any("rounded to" in w for w in run.warnings)
    assert quick.plan("base", "a", 0).epochs == [30]
    odd_run = quick.plan("odd", "a", 0)  # 210 * 0.15 = 31.5 -> 32: not exactly 0.15, warned
    assert odd_run.epochs == [32]
    assert any("train.epochs=210 scales to 31.5 epochs, rounded to 32" in w
               for w in odd_run.warnings)
    smoke = Planner(suite, "smoke", tmp_path / "out").plan("long", "a", 0)
    assert smoke.epochs[0] == 1 and smoke.written_epochs == [400, 30, 3, 0, 10]
    assert Planner(suite, "paper", tmp_path / "out").plan("long", "a", 0).epochs == \
        [400, 30, 3, 0, 10]


@pytest.mark.parametrize("proto, key", [
    ({"epochs": 30, "per": 0}, "protocols.p.per"),
    ({"per": 200}, "protocols.p.per"),
    ({"epochs": 30, "pre": 200}, "protocols.p.pre"),
])
def test_bad_protocols_name_the_key(tmp_path, proto, key):
    suite = {"name": "s", "references": None, "settings": [{"id": "s", "overlay": {}}],
             "rows": [{"id": "a", "recipe": None, "status": "x"}], "protocols": {"p": proto}}
    with pytest.raises(ConfigError, match="^" + re.escape(key)):
        load_suite(write_yaml(tmp_path / "suite.yaml", suite))


def test_epochs_are_shown_and_unequal_paper_budgets_are_flagged(tmp_path):
    """A row whose recipe is twice the baseline's length (as input mixup's 400 against CE's 200)
    keeps that ratio under quick, shows its epochs, and its direction against a paper Δ that
    compares unequal budgets is flagged instead of printed as an opposite direction."""
    suite = load_suite(digits_suite(tmp_path, rows=[
        {"id": "ce", "label": "CE", "recipe": str(QUICKSTART)},
        {"id": "focal", "label": "Focal", "recipe": str(QUICKSTART),
         "overrides": ["train.epochs=60"]}]))
    planner = Planner(suite, "quick", tmp_path / "out")
    ce, focal = planner.plan("ce", "exp10", 0), planner.plan("focal", "exp10", 0)
    assert (ce.epochs, focal.epochs) == ([4], [9])  # 30 and 60 by 30/200: 4.5 -> 4, 9
    for run, top1 in ((ce, 60.0), (focal, 50.0)):  # the paper's focal beats its CE by 5
        run.dir.mkdir(parents=True)
        (run.dir / "results.json").write_text(json.dumps(
            {"recipe_hash": run.hash, "protocol": "quick", "top1": top1, "seconds": 1.0}))
    doc = collect(suite, planner, References.load(tmp_path / "refs.yaml"), [0], {"ce", "focal"},
                  {"exp10"})
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    assert rows["focal"]["epochs"]["phases"] == [9]
    assert rows["focal"]["epochs"]["written_phases"] == [60]
    cmp = rows["focal"]["vs_paper"]
    assert cmp["direction"] == "opposite" and cmp["unequal_budgets"] is True
    assert cmp["budgets"] == {"paper": [60, 30], "here": [9, 4]}
    md = markdown(doc)
    assert "| CE | 1 | 4 | 60.00 |" in md and "| Focal | 1 | 9 | 50.00 |" in md
    assert "**opposite direction**" not in md and "opposite direction ‡" in md
    assert "Unequal budgets" in md and "Focal 60 vs 30 (here 9 vs 4)" in md
    from lttoolbox.leaderboard.report import csv_rows
    record = {r["row"]: r for r in csv_rows(doc)}["focal"]
    assert record["direction_vs_paper"] == "opposite (unequal budgets)"
    assert (record["epochs"], record["epochs_as_written"]) == ("9", "60")
    assert record["paper_delta_epochs"] == "60 vs 30"
    # equal budgets: a plain, bold verdict
    (focal.dir / "results.json").unlink()
    suite.row("focal").overrides = []
    planner = Planner(suite, "quick", tmp_path / "out")
    focal = planner.plan("focal", "exp10", 0)
    (focal.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": focal.hash, "protocol": "quick", "top1": 50.0, "seconds": 1.0}))
    doc = collect(suite, planner, References.load(tmp_path / "refs.yaml"), [0], {"ce", "focal"},
                  {"exp10"})
    assert doc["settings"][0]["rows"][1]["vs_paper"]["unequal_budgets"] is False
    assert "**opposite direction**" in markdown(doc) and "‡" not in markdown(doc)


def test_a_setting_no_source_reports_has_no_paper_columns(tmp_path):
    """Without a reference number for any row, the table has no Paper / Paper Δ / vs paper
    columns (they would be empty on every line); a finished, a failed and a not-available row
    all keep one cell per header."""
    suite = load_suite(digits_suite(tmp_path, references=None))
    planner = Planner(suite, "quick", tmp_path / "out")
    run = planner.plan("ce", "exp10", 0)
    run.dir.mkdir(parents=True)
    (run.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": run.hash, "protocol": "quick", "top1": 60.0, "seconds": 1.0}))
    doc = collect(suite, planner, References.empty(), [0], {r.id for r in suite.rows},
                  {"exp10"})
    md = markdown(doc)
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0] == ("| Method | Seeds | Epochs | Top-1 | Mean/class | Many | Medium | Few | "
                        "Δ top-1 vs CE | Train min | Wall min | img/s |"), table[0]
    assert "Paper" not in md and "vs paper" not in md
    assert len({ln.count("|") for ln in table}) == 1, table
    assert any(ln.startswith("| CE | 1 | 4 | 60.00 |") for ln in table), table
    assert any(ln.startswith("| Mixup | 0 |") for ln in table), table


def test_unscaled_epoch_keys_are_warned_about(tmp_path):
    suite = load_suite(write_yaml(tmp_path / "suite.yaml", {
        "name": "s", "references": None, "settings": [{"id": "a", "overlay": {}}],
        "rows": [{"id": "two", "recipe": str(multi_phase_recipe(tmp_path))}]}))
    run = Planner(suite, "quick", tmp_path / "out").plan("two", "a", 0)
    assert any(w.startswith("generator.epoch_thresh") for w in run.warnings)
    assert not any("start_epoch" in w or "milestones" in w for w in run.warnings)


def test_paper_protocol_leaves_the_recipe_alone(tmp_path):
    suite = load_suite(digits_suite(tmp_path))
    run = Planner(suite, "paper", tmp_path / "out").plan("ce", "exp10", 0)
    assert run.recipe["train"]["epochs"] == 30  # quickstart's own length
    assert run.recipe["schedule"]["warmup_epochs"] == 2
    assert run.dir == tmp_path / "out" / "runs" / "exp10" / "ce" / "seed0"


def test_seed_and_protocol_change_the_hash_only_where_they_should(tmp_path):
    suite = load_suite(digits_suite(tmp_path))
    out = tmp_path / "out"
    smoke, quick = Planner(suite, "smoke", out), Planner(suite, "quick", out)
    assert smoke.plan("ce", "exp10", 0).hash != smoke.plan("ce", "exp10", 1).hash
    assert smoke.plan("ce", "exp10", 0).hash != quick.plan("ce", "exp10", 0).hash
    assert smoke.plan("ce", "exp10", 0).hash == Planner(suite, "smoke", out).plan(
        "ce", "exp10", 0).hash


# ---------------------------------------------------------------------------- run decisions
def test_decide_skip_resume_stale_fresh(tmp_path):
    suite = load_suite(digits_suite(tmp_path))
    planner = Planner(suite, "smoke", tmp_path / "out")
    run = planner.plan("ce", "exp10", 0)
    other = planner.plan("ce", "exp10", 1)
    assert decide(run, "smoke")[0] == FRESH

    run.dir.mkdir(parents=True)
    (run.dir / "checkpoint.pt").write_bytes(b"x")
    dump_recipe(run.recipe, run.dir / "recipe.yaml")
    assert decide(run, "smoke")[0] == RESUME
    dump_recipe(other.recipe, run.dir / "recipe.yaml")
    assert decide(run, "smoke")[0] == STALE

    (run.dir / "results.json").write_text(json.dumps({"recipe_hash": run.hash,
                                                      "protocol": "smoke"}))
    assert decide(run, "smoke")[0] == SKIP
    assert decide(run, "quick")[0] == STALE  # the same recipe under another protocol's name
    (run.dir / "results.json").write_text(json.dumps({"recipe_hash": other.hash,
                                                      "protocol": "smoke"}))
    assert decide(run, "smoke")[0] == STALE

    moved = move_aside(run.dir)
    assert not run.dir.exists() and (moved / "results.json").is_file()
    assert moved.name.startswith("seed0.stale-")
    assert planner.seeds_on_disk("ce", "exp10") == []  # stale copies never enter the tables


def test_wall_time_of_an_unrecorded_attempt_is_flagged_as_a_lower_bound(tmp_path):
    """A runner killed outright records no attempt: its start line in the log still counts."""
    suite = load_suite(digits_suite(tmp_path))
    planner = Planner(suite, "smoke", tmp_path / "out")
    run = planner.plan("ce", "exp10", 0)
    run.dir.mkdir(parents=True)
    (run.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": run.hash, "protocol": "smoke", "top1": 50.0, "seconds": 300.0}))
    (run.dir / "leaderboard_run.json").write_text(json.dumps({"attempts": [
        {"recipe_hash": run.hash, "wall_seconds": 120.0, "returncode": 0}]}))
    start = "# 2026-01-01T00:00:00+0000 python -m lttoolbox.cli planned_recipe.yaml --out x\n"
    refs = References.load(tmp_path / "refs.yaml")

    def table():
        doc = collect(suite, planner, refs, [0], {"ce"}, {"exp10"})
        return doc["settings"][0]["rows"][0], markdown(doc)

    (run.dir / "lttrain.log").write_text(start + "epoch 1\n")
    row, md = table()
    assert row["costs"]["wall_seconds"]["mean"] == 120.0
    assert row["costs"]["wall_seconds_lower_bound"] is False
    assert "| 5.0 | 2.0 |" in md and "lower bound" not in md and "blank *Wall min*" not in md

    (run.dir / "lttrain.log").write_text(start + "epoch 1\n" + start + "epoch 2\n")
    row, md = table()
    assert row["costs"]["wall_seconds_lower_bound"] is True
    assert "| 5.0 | ≥2.0 |" in md and "lower bound" in md

    # carried by --pack and --merge: the merged run gives the same wall time and bound
    archive = tmp_path / "runs.tar.gz"
    assert pack(tmp_path / "out", archive) == 1
    assert merge(archive, tmp_path / "merged") == 1
    run.dir.rename(tmp_path / "gone")  # the table reads the merged copy only
    planner = Planner(suite, "smoke", tmp_path / "merged")
    row, md = table()
    assert row["costs"]["wall_seconds"]["mean"] == 120.0
    assert "| 5.0 | ≥2.0 |" in md and "lower bound" in md

    # a run with no record of its attempts: the blank is explained, not left to be guessed
    (tmp_path / "merged" / "runs" / "exp10" / "ce" / "seed0" / "leaderboard_run.json").unlink()
    row, md = table()
    assert row["costs"]["wall_seconds"] is None
    assert "| 5.0 |  |" in md and "A blank *Wall min* beside a finished row" in md


def test_phase_timings_and_post_hoc_choices_are_reported(tmp_path):
    """A multi-phase row gets one timing line per phase (its epochs' seconds summed, generation
    time apart) and its validation-split choices; a single-phase row gets neither."""
    suite = load_suite(digits_suite(tmp_path))
    planner = Planner(suite, "smoke", tmp_path / "out")
    epochs = {0: ([30.0, 50.0], [7.0, 9.0, 11.0]), 1: ([40.0, 60.0], [8.0, 10.0, 12.0])}
    for seed, (first, second) in epochs.items():
        run = planner.plan("ce", "exp10", seed)
        run.dir.mkdir(parents=True)
        history = ([{"phase": "joint", "epoch": i, "seconds": t} for i, t in enumerate(first)]
                   + [{"phase": "grow", "epoch": i, "seconds": t} for i, t in enumerate(second)])
        (run.dir / "results.json").write_text(json.dumps({
            "recipe_hash": run.hash, "protocol": "smoke", "top1": 50.0 + seed, "seconds": 1.0,
            "phases": [{"name": "joint", "epochs": 2},
                       {"name": "grow", "epochs": 3,
                        "generated": {"images": 100, "seconds": 20.0 + 10 * seed}}],
            "history": history,
            "selection": {"tau_norm": {"tau": 0.5 + seed, "chosen_on": "validation split",
                                       "grid": [{"tau": 0.0, "val_top1": 1.0}]}}}))
    focal = planner.plan("focal", "exp10", 0)
    focal.dir.mkdir(parents=True)
    (focal.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": focal.hash, "protocol": "smoke", "top1": 40.0, "seconds": 1.0,
         "phases": [{"name": "joint", "epochs": 2}], "history": []}))
    doc = collect(suite, planner, References.load(tmp_path / "refs.yaml"), [0, 1],
                  {"ce", "focal"}, {"exp10"})
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    joint, grow = rows["ce"]["phases"]
    assert (joint["name"], joint["epochs"], grow["name"], grow["epochs"]) == ("joint", 2, "grow", 3)
    assert joint["train_seconds"]["mean"] == pytest.approx(np.mean([80.0, 100.0]))
    assert grow["train_seconds"]["mean"] == pytest.approx(np.mean([27.0, 30.0]))
    assert grow["generation_seconds"]["mean"] == pytest.approx(25.0)
    assert joint["generation_seconds"] is None
    assert rows["focal"]["phases"] == [] and rows["focal"]["choices"] == []
    assert rows["ce"]["choices"] == ["tau_norm: tau 0.5, seed 0, chosen on validation split",
                                     "tau_norm: tau 1.5, seed 1, chosen on validation split"]
    md = markdown(doc)
    assert "| CE | joint | 2 | 1.5 |  |  |" in md          # 90 s
    assert "|  | grow | 3 | 0.5 | 100 | 25.0 |" in md       # 28.5 s
    assert "- CE: tau_norm: tau 1.5, seed 1, chosen on validation split" in md
    assert "| Focal | joint" not in md


# ------------------------------------------------------------------------------- references
def test_references_convert_errors_and_prefer_sources(tmp_path):
    refs = References.load(references_file(tmp_path))
    assert refs.lookup("ce", "digits_lt", "exp", 10).top1 == pytest.approx(80.0)
    assert refs.lookup("focal", "digits_lt", "exp", 10, ["toy"]).top1 == pytest.approx(85.0)
    other = refs.lookup("focal", "digits_lt", "exp", 10.0, ["other", "toy"])
    assert other.top1 == pytest.approx(88.0) and other.printed == "88 % accuracy"
    assert refs.baseline_for(other, "ce") is None  # no CE number from the same source
    assert refs.baseline_for(refs.lookup("focal", "digits_lt", "exp", 10, ["toy"]),
                             "ce").top1 == pytest.approx(80.0)
    assert refs.lookup("focal", "digits_lt", "step", 10) is None
    assert refs.lookup("focal", "digits_lt", "exp", 100) is None


@pytest.mark.parametrize("entry, message", [
    ({"top1_error": 20.0, "top1_accuracy": 80.0}, "exactly one of"),
    ({}, "exactly one of"),
    ({"top1_error": 120.0}, r"\[0, 100\]"),
    ({"top1_error": 20.0, "source": "nobody"}, "unknown source"),
    ({"top1_error": 20.0, "colour": "red"}, "unknown key"),
])
def test_bad_reference_entries_are_rejected(tmp_path, entry, message):
    base = {"method": "ce", "source": "toy", "table": "T1", "dataset": "d",
            "imbalance_type": "exp", "imbalance_ratio": 10}
    path = write_yaml(tmp_path / "refs.yaml", {"sources": {"toy": {"paper": "P"}},
                                              "entries": [{**base, **entry}]})
    with pytest.raises(ConfigError, match=message):
        References.load(path)


def test_shipped_reference_numbers_are_on_the_toolbox_split():
    """Bag of Tricks' numbers are those of its cao_cifar results page (commit 66c2087), not the
    older page on Cui et al.'s split; the softmax focal recipe has no paper number."""
    refs = References.load(ROOT / "benchmarks" / "reference_numbers.yaml")
    bot = {"ce": 29.64, "cs_ce": 31.70, "cb_focal": 24.80, "ldam": 26.34,
           "balanced_softmax": 22.46, "cb_sampling": 27.55, "sqrt_sampling": 28.58,
           "progressive": 28.02, "cs_ce_drw": 25.18, "ldam_drw": 22.27, "drs_cb": 24.93,
           "drs_sqrt": 26.78, "drs_progressive": 26.15}
    for method, error in bot.items():
        ref = refs.lookup(method, "cifar10_lt", "exp", 100, ["bot_repo"])
        assert ref.source == "bot_repo" and ref.top1 == pytest.approx(100.0 - error), method
        assert "66c20876e051d54c2ba14686a8f0a2b4c6765516" in ref.url
    drw = [refs.lookup("ldam_drw", d, "exp", r, ["bot_repo"]).top1
           for d, r in (("cifar10_lt", 100), ("cifar10_lt", 50), ("cifar100_lt", 100),
                        ("cifar100_lt", 50))]
    assert drw == pytest.approx([100 - 22.27, 100 - 18.40, 100 - 57.53, 100 - 52.71])
    outdated = {30.12, 31.22, 29.37, 23.63, 30.35, 30.81, 29.35, 27.08, 27.73}  # Cui's split
    assert not [e for e in refs.entries if e.source == "bot_repo" and e.dataset == "cifar10_lt"
                and e.imbalance_ratio == 100 and round(100 - e.top1, 2) in outdated]
    assert not refs.matching("focal", "cifar10_lt", "exp", 100)
    assert refs.lookup("sigmoid_focal", "cifar10_lt", "exp", 100).top1 == pytest.approx(70.38)
    cao = {"ce": 29.64, "ldam": 26.65, "ldam_drw": 22.97, "ce_drw": 25.14}
    for method, error in cao.items():
        ref = refs.lookup(method, "cifar10_lt", "exp", 100, ["ldam", "bot_repo"])
        assert ref.source == "ldam" and ref.top1 == pytest.approx(100.0 - error), method
    for entry in refs.entries:
        assert entry.table and entry.paper and entry.url and entry.selection
        if "github.com" in entry.url:
            assert re.search(r"/blob/[0-9a-f]{40}/", entry.url), entry.url


def test_paper_directions_are_taken_within_one_table(tmp_path):
    path = write_yaml(tmp_path / "refs.yaml", {
        "sources": {"p": {"paper": "P", "selection": "best epoch"}},
        "entries": [
            {"method": "ce", "source": "p", "table": "T1", "dataset": "d", "imbalance_type": "exp",
             "imbalance_ratio": 10, "top1_error": 30.0},
            {"method": "ce", "source": "p", "table": "T2", "dataset": "d", "imbalance_type": "exp",
             "imbalance_ratio": 10, "top1_error": 28.0},
            {"method": "x", "source": "p", "table": "T2", "dataset": "d", "imbalance_type": "exp",
             "imbalance_ratio": 10, "top1_error": 29.0},
            {"method": "y", "source": "p", "table": "T3", "dataset": "d", "imbalance_type": "exp",
             "imbalance_ratio": 10, "top1_error": 29.0}]})
    refs = References.load(path)
    # x beats T1's baseline (71 > 70) but not its own table's (71 < 72)
    assert refs.baseline_for(refs.lookup("x", "d", "exp", 10), "ce").top1 == pytest.approx(72.0)
    # a table without a baseline row falls back to the source's first
    assert refs.baseline_for(refs.lookup("y", "d", "exp", 10), "ce").top1 == pytest.approx(70.0)
    assert refs.lookup("x", "d", "exp", 10).selection == "best epoch"


@pytest.mark.parametrize("name", ["cifar10_lt_core", "cifar100_lt_core"])
def test_shipped_suites_plan_and_list_every_row(tmp_path, name):
    suite = load_suite(ROOT / "benchmarks" / "suites" / f"{name}.yaml")
    refs = References.load(suite.references)
    planner = Planner(suite, "quick", tmp_path / "out")
    for row in suite.rows:
        assert row.recipe is not None or row.status, row.id
        if not row.available:
            continue
        for setting in suite.settings:
            if row.runs_in(setting.id):
                run = planner.plan(row.id, setting.id, 0)
                assert not isinstance(run, ConfigError), f"{row.id}/{setting.id}: {run}"
                # every phase of every recipe by 30/200 (a half to the even epoch, at least 1)
                assert run.epochs == [max(1, round(e * 30 / 200)) if e else 0
                                      for e in run.written_epochs], row.id
                assert not any("rounded to" in w for w in run.warnings), run.warnings
    mixup = planner.plan("mixup", "exp100", 0)
    assert (mixup.written_epochs, mixup.epochs) == ([400], [60])
    assert planner.plan("ce", "exp100", 0).epochs == [30]
    doc = collect(suite, planner, refs, [0], {r.id for r in suite.rows},
                  {s.id for s in suite.settings})
    exp100 = next(s for s in doc["settings"] if s["id"] == "exp100")
    assert [r["id"] for r in exp100["rows"]] == [r.id for r in suite.rows]
    assert ({r["id"] for r in exp100["rows"] if r["status"] == "not available"}
            == {r.id for r in suite.rows if not r.available})
    assert exp100["rows"][0]["paper"]["source"] == "ldam"
    md = markdown(doc)
    assert "under-trained" in md and "direction only" in md
    assert "is not a final-epoch number" in md and "best test-set epoch" in md
    if name == "cifar10_lt_core":
        assert "JPEG" in md


@pytest.mark.parametrize("name", ["cifar10_lt_core", "cifar100_lt_core"])
def test_notes_state_the_measured_machine_and_test_split(tmp_path, name):
    """The table names the machine of the runs (from results.json), never a 'sandbox', and the
    test split the runs were evaluated on: 20 images per class under smoke, not the full
    split's 1,000 (CIFAR-10) or 100 (CIFAR-100)."""
    suite = load_suite(ROOT / "benchmarks" / "suites" / f"{name}.yaml")
    planner = Planner(suite, "smoke", tmp_path / "out")
    run = planner.plan("ce", "exp100", 0)
    run.dir.mkdir(parents=True)
    classes = 10 if name == "cifar10_lt_core" else 100
    machine = {"device": "cpu", "cpu": "Acme Cruncher 9000", "cpu_count": 2, "torch": "2.0"}
    (run.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": run.hash, "protocol": "smoke", "top1": 30.0, "seconds": 60.0,
         "machine": machine, "test_class_counts": [20] * classes}))
    doc = collect(suite, planner, References.load(suite.references), [0], {"ce"}, {"exp100"})
    md = markdown(doc)
    assert "sandbox" not in md.lower()
    assert "1,000 images per class" not in md and "(100 images per class)" not in md
    assert (f"Test split of the 1 finished run (`results.json`'s `test_class_counts`): 20 images "
            f"per class, {classes} classes ({20 * classes:,} images).") in md
    timing = next(line for line in md.splitlines() if line.startswith("- Timing:"))
    assert "Acme Cruncher 9000 (2 cores)" in timing


def test_stats_match_numpy():
    values = [70.0, 71.5, None, 69.25]
    s = stats(values)
    arr = np.array([70.0, 71.5, 69.25])
    assert s["n"] == 3 and s["mean"] == pytest.approx(arr.mean())
    assert s["std"] == pytest.approx(arr.std(ddof=1))
    assert stats([42.0])["std"] is None and stats([None]) is None


def test_plots_are_written_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    from lttoolbox.leaderboard.plots import write_plots

    row = {"id": "ce", "label": "CE", "n": 2,
           "metrics": {"top1": {"mean": 70.0, "std": 1.0}},
           "per_class_acc": [90.0, 60.0, 20.0], "train_class_counts": [100, 30, 5],
           "paper": None}
    doc = {"title": "T", "baseline": "ce", "protocol": {"name": "quick"},
           "settings": [{"id": "exp100", "label": "LT 100", "rows": [row]}]}
    written = write_plots(doc, tmp_path)
    assert written == {"exp100": ["plots/exp100_per_class.png", "plots/exp100_top1.png"]}
    for name in written["exp100"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ pack / merge
RUN = "runs/exp10/ce/seed0"


def good_results(top1=71.5, **extra) -> bytes:
    return json.dumps({"recipe_hash": "abc", "protocol": "smoke", "top1": top1,
                       "seconds": 3.0, **extra}).encode()


def make_archive(path: Path, members: list) -> Path:
    """``members``: (name, bytes) pairs, or TarInfo objects (links, folders) with no data."""
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def valid_run(run: str = RUN, top1=71.5) -> list:
    return [(f"{run}/recipe.yaml", b"train: {epochs: 1}\n"),
            (f"{run}/log.jsonl", b'{"epoch": 0, "loss": 1.0, "eval": {"top1": 60.0}}\n'),
            (f"{run}/results.json", good_results(top1))]


def test_merge_refuses_to_replace_a_local_run_unless_asked(tmp_path):
    home = tmp_path / "home"
    local = home / RUN
    local.mkdir(parents=True)
    (local / "results.json").write_bytes(good_results(50.0))
    (local / "checkpoint.pt").write_bytes(b"weights")
    archive = make_archive(tmp_path / "a.tar.gz", valid_run(top1=99.99))
    with pytest.raises(ArchiveError, match=re.escape(f"{archive}: member '{RUN}/results.json' "
                                                     f"would replace the local run")):
        merge(archive, home)
    assert json.loads((local / "results.json").read_text())["top1"] == 50.0
    assert not (local / "log.jsonl").exists()
    # an unfinished local run (a checkpoint, no results) is not shadowed either
    (local / "results.json").unlink()
    with pytest.raises(ArchiveError, match="local checkpoint"):
        merge(archive, home)
    # asked for: the local run is moved aside, never deleted
    assert merge(archive, home, overwrite=True) == 1
    assert json.loads((local / "results.json").read_text())["top1"] == 99.99
    (aside,) = local.parent.glob("seed0.replaced-*")
    assert (aside / "checkpoint.pt").read_bytes() == b"weights"
    # merging the same archive again changes nothing and needs no flag
    assert plan_merge([archive], home)[0].unchanged == {RUN}
    assert merge(archive, home) == 1


def test_merge_cli_refuses_an_overwrite_in_one_line(tmp_path, capsys):
    suite, home = digits_suite(tmp_path), tmp_path / "home"
    local = home / RUN
    local.mkdir(parents=True)
    (local / "results.json").write_bytes(good_results(50.0))
    archive = make_archive(tmp_path / "a.tar.gz", valid_run(top1=99.99))
    common = [str(suite), "--protocol", "smoke", "--out", str(home), "--report-only",
              "--no-plots", "--merge", str(archive)]
    refused = leaderboard_here(capsys, *common)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {archive}: member '{RUN}/")
    assert "--merge-overwrite" in lines[0] and "Traceback" not in refused.stderr
    assert json.loads((local / "results.json").read_text())["top1"] == 50.0
    forced = leaderboard_here(capsys, *common, "--merge-overwrite")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "moved the local run" in forced.stdout
    assert json.loads((local / "results.json").read_text())["top1"] == 99.99


def _torch_bytes(obj) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class _Crafted:
    """Unpickling it would call print: what a file crafted to run code holds (a GLOBAL)."""

    def __reduce__(self):
        return print, ("ran",)


# the keys of a run's state (lttoolbox.engine.state.CHECKPOINT_KEYS, spelled out here)
_STATE = dict.fromkeys(("phase", "epoch", "phase_done", "model", "optimizer", "scaler",
                        "components", "history", "rng", "seconds", "images", "recipe_hash"), 0)


def _symlink(name: str, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


@pytest.mark.parametrize("members, member, message", [
    # content the report would read wrongly or not at all
    ([(f"{RUN}/results.json", b"{not json")], "results.json", "not valid JSON"),
    ([(f"{RUN}/results.json", good_results("abc"))], "results.json", "'top1' must be a number"),
    ([(f"{RUN}/results.json", good_results(None))], "results.json", "'top1' must be a number"),
    ([(f"{RUN}/results.json", good_results(float("nan")))], "results.json", "'top1'"),
    ([(f"{RUN}/results.json", good_results(101))], "results.json", "from 0 to 100"),
    ([(f"{RUN}/results.json", b"[1, 2]")], "results.json", "a JSON object"),
    ([(f"{RUN}/results.json", json.dumps({"top1": 50.0}).encode())], "results.json",
     "'recipe_hash'"),
    ([(f"{RUN}/results.json", good_results(history="x"))], "results.json", "'history'"),
    ([(f"{RUN}/results.json", good_results(per_class_acc=["a"]))], "results.json",
     "per_class_acc"),
    ([(f"{RUN}/results.json", b"\xff\xfe")], "results.json", "not UTF-8"),
    ([*valid_run()[:1], (f"{RUN}/log.jsonl", b'{"epoch": 0}\n{oops\n'),
      valid_run()[2]], "log.jsonl", "line 2: not valid JSON"),
    ([(f"{RUN}/log.jsonl", b'{"eval": {"top1": "high"}}\n'), valid_run()[2]], "log.jsonl",
     "'eval'"),
    ([(f"{RUN}/recipe.yaml", b"a: [1\n"), valid_run()[2]], "recipe.yaml", "not valid YAML"),
    ([(f"{RUN}/recipe.yaml", b"- 1\n"), valid_run()[2]], "recipe.yaml", "a mapping"),
    ([(f"{RUN}/leaderboard_run.json", b"[]"), valid_run()[2]], "leaderboard_run.json",
     "an 'attempts' list"),
    ([(f"{RUN}/leaderboard_run.json", b'{"attempts": [{"wall_seconds": "long"}]}'),
      valid_run()[2]], "leaderboard_run.json", "attempt 1: 'wall_seconds' must be a number"),
    ([(f"{RUN}/lttrain.log", b"\xff"), valid_run()[2]], "lttrain.log", "not UTF-8"),
    # shapes
    ([(f"{RUN}/log.jsonl", b"")], "results.json", "is missing"),
    ([*valid_run(), (f"{RUN}/results.json", good_results())], "results.json", "comes twice"),
    ([_symlink(f"{RUN}/results.json")], "results.json", "not a regular file"),
    ([_folder(RUN + "/results.json")], "results.json", "not a regular file"),
    ([(f"{RUN}/model-main.pt", b"x")], "model-main.pt", "unexpected member"),
    # an unfinished run: a checkpoint lttrain --resume could load, with its recipe
    ([(f"{RUN}/recipe.yaml", b"train: {epochs: 1}\n"), (f"{RUN}/checkpoint.pt", b"x")],
     "checkpoint.pt", "not a checkpoint"),
    ([(f"{RUN}/recipe.yaml", b"train: {epochs: 1}\n"),
      (f"{RUN}/checkpoint.pt", _torch_bytes({"model": {}}))], "checkpoint.pt",
     "not an lttoolbox checkpoint"),
    ([(f"{RUN}/recipe.yaml", b"train: {epochs: 1}\n"),
      (f"{RUN}/checkpoint.pt", _torch_bytes(_Crafted()))], "checkpoint.pt",
     "objects other than tensors and plain values"),
    ([(f"{RUN}/checkpoint.pt", _torch_bytes(_STATE))], "recipe.yaml", "is missing"),
    ([*valid_run(), (f"{RUN}/checkpoint.pt", _torch_bytes(_STATE))], "checkpoint.pt",
     "comes with results.json"),
    ([(f"{RUN}/recipe.yaml", b"train: {epochs: 1}\n"), (f"{RUN}/data.json", b"[1]"),
      (f"{RUN}/checkpoint.pt", _torch_bytes(_STATE))], "data.json", "a JSON object"),
    ([("runs/exp10/../../escape/seed0/results.json", good_results())], "escape",
     "unexpected member"),
    ([("/etc/results.json", good_results())], "/etc/results.json", "unexpected member"),
    ([("runs/exp10/ce/seedX/results.json", good_results())], "seedX", "unexpected member"),
])
def test_merge_checks_the_whole_archive_before_writing(tmp_path, members, member, message):
    """A valid run first, then the bad member: nothing of either is written."""
    other = "runs/exp10/focal/seed0"
    archive = make_archive(tmp_path / "bad.tar.gz", valid_run(other) + members)
    with pytest.raises(ArchiveError) as err:
        merge(archive, tmp_path / "home")
    text = str(err.value)
    assert text.startswith(f"{archive}: ") and "\n" not in text
    assert member in text and re.search(re.escape(message), text), text
    assert not (tmp_path / "home").exists() and not (tmp_path / "escape").exists()


def test_merge_applies_the_pack_size_limit(tmp_path):
    # one member over the limit (zeros: a small archive), and an archive over it
    big = make_archive(tmp_path / "big.tar.gz",
                       [(f"{RUN}/log.jsonl", b" " * (LIMIT + 1)), valid_run()[2]])
    assert big.stat().st_size < LIMIT
    with pytest.raises(ArchiveError, match=re.escape(f"member '{RUN}/log.jsonl' weighs "
                                                     f"{LIMIT + 1:,} bytes, over the")):
        merge(big, tmp_path / "home")
    heavy = tmp_path / "heavy.tar.gz"
    heavy.write_bytes(b"\0" * (LIMIT + 1))
    with pytest.raises(ArchiveError, match="over the .*-byte limit of an archive"):
        merge(heavy, tmp_path / "home")
    assert not (tmp_path / "home").exists()


def test_merge_refuses_a_truncated_archive_at_any_length(tmp_path):
    whole = make_archive(tmp_path / "whole.tar.gz", valid_run() + valid_run(
        "runs/exp10/focal/seed0"))
    data = whole.read_bytes()
    for cut in sorted({1, 10, 30, len(data) // 3, len(data) // 2, len(data) - 30,
                       len(data) - 8, len(data) - 1}):
        part = tmp_path / f"cut{cut}.tar.gz"
        part.write_bytes(data[:cut])
        with pytest.raises(ArchiveError, match=re.escape(f"{part}: not a complete .tar.gz")):
            merge(part, tmp_path / "home")
    assert not (tmp_path / "home").exists()
    assert merge(whole, tmp_path / "home") == 2


def test_what_pack_writes_merge_accepts(tmp_path):
    out = tmp_path / "lb"
    for row, results in (("ce", good_results()), ("focal", b"{broken")):
        run = out / "runs" / "exp10" / row / "seed0"
        run.mkdir(parents=True)
        (run / "results.json").write_bytes(results)
        (run / "log.jsonl").write_bytes(b'{"epoch": 0}\n')
    skipped = []
    archive = tmp_path / "r.tar.gz"
    assert pack(out, archive, skipped=skipped) == 1
    assert [(p.parent.name, why.split(":")[0]) for p, why in skipped] == [("focal",
                                                                           "results.json")]
    assert merge(archive, tmp_path / "home") == 1


def test_a_run_moved_aside_is_not_packed_and_the_pack_merges(tmp_path):
    """The runner renames a stale run to ``seed<k>.stale-<time>``; it is no run of the table,
    and a merge refuses any member path but ``seed<k>``, so a pack that took it would be
    refused whole."""
    out = tmp_path / "lb"
    for folder in ("seed0", "seed0.stale-20261207-221500", "seed1.superseded-by-hand"):
        run = out / "runs" / "exp10" / "ce" / folder
        run.mkdir(parents=True)
        (run / "results.json").write_bytes(good_results())
        (run / "log.jsonl").write_bytes(b'{"epoch": 0}\n')
    archive = tmp_path / "r.tar.gz"
    assert pack(out, archive) == 1
    with tarfile.open(archive) as tar:
        assert {name.split("/")[3] for name in tar.getnames()} == {"seed0"}
    assert merge(archive, tmp_path / "home") == 1


def test_an_unfinished_run_is_carried_to_another_machine_and_resumes_there_exactly(
        tmp_path, capsys):
    """--pack-unfinished writes a stopped run's checkpoint and the files a resume reads; merged
    into an empty folder, the runner resumes it there, and the resumed run trains exactly as one
    that never stopped. The finished run is not in that archive, and a second merge over the
    run, once it has moved on, is refused."""
    from conftest import StopAfter, assert_same_training

    from lttoolbox.engine import train

    suite_path = digits_suite(tmp_path, protocols={"three": {"epochs": 3, "overlay": {}}})
    suite, lb, home = load_suite(suite_path), tmp_path / "lb", tmp_path / "home"
    cut, done = (Planner(suite, "three", lb).plan(row, "exp10", 0) for row in ("ce", "focal"))
    full = train(cut.recipe, tmp_path / "full", quiet=True)
    train(done.recipe, done.dir, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(cut.recipe, cut.dir, logger=StopAfter(1))  # the checkpoint of epoch 0
    (cut.dir / "lttrain.log").write_text("# the runner's output\n")

    carry = tmp_path / "carry.tar.gz"
    packed = leaderboard_here(capsys, str(suite_path), "--protocol", "three", "--out", str(lb),
                              "--report-only", "--no-plots", "--pack-unfinished", str(carry))
    assert packed.returncode == 0, packed.stdout + packed.stderr
    assert f"packed 1 unfinished runs into {carry}" in packed.stdout
    with tarfile.open(carry) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(f"runs/exp10/ce/seed0/{n}" for n in (
        "checkpoint.pt", "recipe.yaml", "data.json", "log.jsonl", "lttrain.log"))

    dry = leaderboard_here(capsys, str(suite_path), "--protocol", "three", "--out", str(home),
                           "--no-plots", "--dry-run", "--merge", str(carry))
    assert dry.returncode == 0 and f"would merge 1 runs from {carry}" in dry.stdout, dry.stdout
    assert not home.exists()  # a dry run writes nothing, a merge included
    assert merge(carry, home) == 1
    moved = Planner(suite, "three", home).plan("ce", "exp10", 0)
    assert decide(moved, "three") == (RESUME, "unfinished")
    assert (moved.dir / "checkpoint.pt").read_bytes() == (cut.dir / "checkpoint.pt").read_bytes()
    resumed = train(moved.recipe, moved.dir, resume=True, quiet=True)
    assert_same_training(resumed, full)
    assert len(resumed["history"]) == 3
    # the archive's run has moved on here: merging it again would set it back
    with pytest.raises(ArchiveError, match="would replace the local run .*(differs|finished)"):
        merge(carry, home)
    # packed again with nothing unfinished, the stale archive goes (the next merge would stop)
    assert carry.is_file() and pack(home, carry, unfinished=True) == 0
    assert not carry.exists()


def test_the_same_runs_pack_to_the_same_bytes(tmp_path, monkeypatch):
    """Republishing unchanged results must not commit a new binary: a pack of the runs a merge
    wrote (new file times, a later clock) equals the pack they came from, byte for byte."""
    import os
    import time

    out = tmp_path / "lb"
    run = out / "runs" / "exp10" / "ce" / "seed0"
    run.mkdir(parents=True)
    (run / "results.json").write_bytes(good_results())
    (run / "log.jsonl").write_bytes(b'{"epoch": 0}\n')
    os.utime(run / "results.json", (1_000_000_000, 1_000_000_000))
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert pack(out, first) == 1
    assert merge(first, tmp_path / "home") == 1
    copied = tmp_path / "home" / "runs" / "exp10" / "ce" / "seed0" / "results.json"
    assert copied.stat().st_mtime != 1_000_000_000  # the merge wrote it anew
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)  # gzip would write this clock in its header
    assert pack(tmp_path / "home", second) == 1
    assert second.read_bytes() == first.read_bytes()


# ----------------------------------------------------------------------- owning the children
def _ended(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped (it holds no lock and runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.long
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_9_of_the_runner_ends_its_run_and_the_rerun_resumes_it(tmp_path):
    """After kill -9 of the leaderboard, its lttrain child stops (checkpoint kept) instead of
    training on unowned; a rerun started at once waits for it, resumes the run, and, stopped by
    its --budget with the run unfinished, exits 3, not 0 and not 1."""
    import signal
    import time

    # so many epochs that no machine finishes the run inside the rerun's budget (500 epochs of
    # digits took less than the 0.3 minutes on a fast machine, and the rerun then exited 0)
    suite = digits_suite(tmp_path, protocols={"long": {"epochs": 100_000, "overlay": {}}})
    out = tmp_path / "lb"
    common = [sys.executable, str(ROOT / "benchmarks" / "leaderboard.py"), str(suite),
              "--protocol", "long", "--rows", "ce", "--out", str(out), "--no-plots"]
    run_dir = out / "runs" / "exp10" / "ce" / "seed0"
    runner = subprocess.Popen(common, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "log.jsonl").is_file() or not (run_dir / "log.jsonl").read_text():
            assert runner.poll() is None and time.monotonic() < deadline, "no epoch in 120 s"
            time.sleep(0.2)
        child = int((run_dir / ".lock").read_text().split()[0])
        assert not _ended(child)
        runner.kill()  # SIGKILL: no handler runs in the runner
        runner.wait(timeout=30)
        rerun = subprocess.Popen(common + ["--budget", "0.3"], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not _ended(child):
            assert time.monotonic() < deadline, "the killed runner's lttrain is still running"
            time.sleep(0.2)
        output, _ = rerun.communicate(timeout=180)
    finally:
        if child is not None and not _ended(child):
            os.kill(child, signal.SIGKILL)
        if runner.poll() is None:
            runner.kill()
    assert rerun.returncode == 3, output
    assert "budget spent" in output and "1 runs left" in output
    assert "FAILED" not in output and "in use by another run" not in output, output
    attempts = json.loads((run_dir / "leaderboard_run.json").read_text())["attempts"]
    assert attempts[-1]["action"] == "resume" and attempts[-1]["error"] is None
    assert attempts[-1]["interrupted"] is True


def test_a_run_still_locked_by_another_process_is_waited_for_and_adopted(tmp_path):
    """A run whose lock another process holds (an orphan of a killed runner that finishes it) is
    not started over it and not failed: the runner waits, then finds it finished."""
    import time

    from lttoolbox.leaderboard.runner import Runner

    suite = load_suite(digits_suite(tmp_path))
    run = Planner(suite, "smoke", tmp_path / "out").plan("ce", "exp10", 0)
    run.dir.mkdir(parents=True)
    results = json.dumps({"recipe_hash": run.hash, "protocol": "smoke", "top1": 42.0})
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(run.dir / '.lock')!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(3)
open({str(run.dir / 'results.json')!r}, "w").write({results!r})
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    messages = []
    start = time.monotonic()
    outcome = Runner("smoke", report=messages.append).execute(run)
    holder.wait(timeout=30)
    assert time.monotonic() - start >= 2.0
    assert outcome.error is None and outcome.results["top1"] == 42.0
    assert outcome.action == "skip"
    assert not (run.dir / "lttrain.log").exists()  # no lttrain was started over it
    assert any(f"process {holder.pid}" in m and "waiting" in m for m in messages)


# ------------------------------------------------------------------------ best test epoch
def write_run(run, top1: float, phases: list[tuple[str, int]], evals: dict) -> None:
    """A finished run: ``evals`` maps (phase, epoch) to the test top-1 logged under ``eval``."""
    run.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, epochs in phases:
        for epoch in range(epochs):
            row = {"phase": name, "epoch": epoch, "loss": 1.0, "lr": 0.1, "seconds": 1.0}
            if (name, epoch) in evals:
                row["eval"] = {"top1": evals[(name, epoch)], "mean_class_acc": 0.0}
            rows.append(row)
    (run.dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": run.hash, "protocol": "smoke", "top1": top1, "seconds": 1.0,
         "phases": [{"name": n, "epochs": e} for n, e in phases], "history": rows}))


def test_best_test_epoch_is_read_from_the_eval_logs(tmp_path):
    """The max over the last phase's logged test top-1 and the final one, with how many epochs
    it is the best of; empty without eval logs; labelled as the papers' practice; carried by a
    pack through a merge."""
    suite = load_suite(digits_suite(tmp_path))
    refs = References.load(tmp_path / "refs.yaml")
    planner = Planner(suite, "smoke", tmp_path / "lb")
    ce0, ce1 = planner.plan("ce", "exp10", 0), planner.plan("ce", "exp10", 1)
    # eval.every 1 on 4 epochs: epochs 0-2 logged, the last is results.json's top-1
    write_run(ce0, 62.0, [("main", 4)], {("main", 0): 50.0, ("main", 1): 66.0,
                                         ("main", 2): 60.0})
    write_run(ce1, 58.0, [("main", 4)], {})  # no eval logs
    # two phases: the joint phase's 90 is another model's; the final 70 beats crt's 65
    focal = planner.plan("focal", "exp10", 0)
    write_run(focal, 70.0, [("joint", 3), ("crt", 3)], {("joint", 1): 90.0, ("crt", 0): 65.0,
                                                        ("crt", 1): 64.0})
    doc = collect(suite, planner, refs, [0, 1], {"ce", "focal"}, {"exp10"})
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    best = rows["ce"]["best_test"]
    assert best["top1"]["mean"] == 66.0 and best["top1"]["std"] is None
    assert best["evaluated_epochs"] == [4] and best["n"] == 1
    assert best["seeds"] == [{"seed": 0, "top1": 66.0, "epoch": 1, "evaluated": 4,
                              "phase": "main"}]
    assert rows["ce"]["metrics"]["top1"]["mean"] == 60.0  # the table's result stays final
    fb = rows["focal"]["best_test"]["seeds"][0]
    assert (fb["top1"], fb["epoch"], fb["evaluated"], fb["phase"]) == (70.0, 2, 3, "crt")
    md = markdown(doc)
    assert "| Best test epoch § | Paper top-1 |" in md
    assert "| 66.00 (of 4; 1 of 2 seeds) | 80.00 [1] |" in md
    assert "| 70.00 (of 3) |" in md
    assert "papers' practice" in md and "not a valid model selection" in md
    from lttoolbox.leaderboard.report import csv_rows
    records = {r["row"]: r for r in csv_rows(doc)}
    assert float(records["ce"]["best_test_top1_mean"]) == 66.0
    assert records["ce"]["best_test_evaluated_epochs"] == "4"
    assert records["ce"]["best_test_n_seeds"] == 1
    assert records["broken"]["best_test_top1_mean"] == ""
    json.dumps(doc)  # leaderboard.json holds it
    # the pack carries log.jsonl: the merged copy gives the same column
    archive = tmp_path / "r.tar.gz"
    assert pack(tmp_path / "lb", archive) == 3
    merge(archive, tmp_path / "home")
    home = collect(suite, Planner(suite, "smoke", tmp_path / "home"), refs, [0, 1],
                   {"ce", "focal"}, {"exp10"})
    assert home["settings"][0]["rows"][0]["best_test"] == best
    # no row with eval logs: no column
    (ce0.dir / "log.jsonl").unlink()
    (focal.dir / "log.jsonl").unlink()
    for run in (ce0, focal):  # and none in results.json's history either
        res = json.loads((run.dir / "results.json").read_text())
        res["history"] = [{k: v for k, v in h.items() if k != "eval"} for h in res["history"]]
        (run.dir / "results.json").write_text(json.dumps(res))
    doc = collect(suite, planner, refs, [0, 1], {"ce", "focal"}, {"exp10"})
    assert all(r.get("best_test") is None for r in doc["settings"][0]["rows"])
    assert "Best test epoch" not in markdown(doc)


def test_a_post_hoc_last_phase_is_its_own_best_test_epoch(tmp_path):
    """tau-norm's last phase has no epochs: one model, evaluated once. In a run that evaluated
    its epochs its best test epoch is the final result, of 1 (the joint phase's better epochs
    are another model's); in a run that evaluated none, there is none."""
    from lttoolbox.leaderboard.report import best_test_epoch
    planner = Planner(load_suite(digits_suite(tmp_path)), "smoke", tmp_path / "lb")
    run = planner.plan("ce", "exp10", 0)
    write_run(run, 73.0, [("joint", 3), ("tau_norm", 0)], {("joint", 0): 50.0,
                                                            ("joint", 1): 80.0})
    results = json.loads((run.dir / "results.json").read_text())
    assert best_test_epoch(run.dir, results) == {"top1": 73.0, "epoch": None, "evaluated": 1,
                                                 "phase": "tau_norm"}
    write_run(run, 73.0, [("joint", 3), ("tau_norm", 0)], {})
    results = json.loads((run.dir / "results.json").read_text())
    assert best_test_epoch(run.dir, results) is None


def test_fault_sweep_merge_cases_give_one_clear_line_each(tmp_path):
    """benchmarks/fault_sweep.py's leaderboard merge cases: every bad archive is one clear error
    line naming it (and its member), no traceback, nothing written; valid ones are accepted."""
    from lttoolbox.leaderboard.faults import problems, sweep_merge

    sweep = sweep_merge(tmp_path)
    assert sweep["tried"] >= 40
    assert sweep["clear_errors"] == sweep["tried"], [
        (c["name"], c["stderr"], c["traceback"]) for c in sweep["cases"]
        if not c["expected_ok"] and not c["clear"]]
    assert sweep["tracebacks"] == sweep["misleading_errors"] == 0
    assert sweep["wrote_before_refusing"] == sweep["accepted_bad"] == 0
    assert sweep["controls_accepted"] == sweep["controls"] == 3
    assert problems(sweep, None) == 0


@pytest.mark.long  # a nice-19 process on a busy machine can wait tens of seconds for a core
@pytest.mark.skipif(not Path("/proc/self/autogroup").exists()
                    or Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1",
                    reason="needs Linux scheduler autogroups")
def test_a_niced_runners_children_keep_its_priority_in_their_own_sessions():
    """A child in a new session gets a new autogroup of nice 0 unless the runner passes its own
    nice on: without it, `nice -n 19` of the runner would not reach the training runs."""
    from lttoolbox.leaderboard.runner import die_with_runner
    script = ("import os, subprocess, sys\n"
              "os.nice(19)\n"
              "from lttoolbox.leaderboard.runner import die_with_runner\n"
              "child = subprocess.Popen([sys.executable, '-c', "
              "'print(open(\"/proc/self/autogroup\").read())'], stdout=subprocess.PIPE, "
              "text=True, start_new_session=True, preexec_fn=die_with_runner())\n"
              "print(child.communicate()[0])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ,
                                           "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("nice 19"), done.stdout
    assert die_with_runner() is not None


# ------------------------------------------------------ runs written before phases were so named
@pytest.mark.long
def test_runs_written_before_the_rename_are_decided_reported_and_merged(tmp_path):
    """Run directories as the code before the rename of stages to phases and points wrote them
    (tests/old_runs.py, from real runs): a finished one is skipped, an interrupted one resumed,
    the report reads their phases, timings and best test epoch, and their pack merges."""
    from lttoolbox.engine import train
    from lttoolbox.engine.logging import RunLogger
    from old_runs import to_old_format

    class StopAfterOne(RunLogger):
        def __init__(self):
            super().__init__(quiet=True)
            self.ended = 0

        def end_epoch(self, summary):
            self.ended += 1
            if self.ended > 1:
                raise KeyboardInterrupt  # after the first epoch's checkpoint

    crt = {"id": "crt", "label": "cRT", "recipe": str(QUICKSTART),
           "overlay": {"train": {"epochs": 2}, "eval": {"every": 1},
                       "schedule": {"warmup_epochs": 0},
                       "augment": [{"name": "manifold_mixup", "point": "layer1"}],
                       "phases": [{"name": "joint"},
                                  {"name": "crt", "augment": [],
                                   "sampler": {"name": "class_balanced"},
                                   "train": {"freeze": ["backbone"], "reset_head": True}}]}}
    suite = load_suite(digits_suite(tmp_path, rows=[crt], baseline="crt"))
    refs = References.load(tmp_path / "refs.yaml")
    planner = Planner(suite, "paper", tmp_path / "lb")
    done, cut = planner.plan("crt", "exp10", 0), planner.plan("crt", "exp10", 1)
    results = train(done.recipe, done.dir, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        train(cut.recipe, cut.dir, logger=StopAfterOne())
    for run in (done, cut):
        to_old_format(run.dir)
    assert "stage: layer1" in (done.dir / "recipe.yaml").read_text()
    assert '"stages"' in (done.dir / "results.json").read_text()

    assert decide(done, "paper") == (SKIP, "finished")
    assert decide(cut, "paper") == (RESUME, "unfinished")

    def row_of(out: Path) -> dict:
        doc = collect(suite, Planner(suite, "paper", out), refs, [0], {"crt"}, {"exp10"})
        return doc["settings"][0]["rows"][0]

    row = row_of(tmp_path / "lb")
    assert row["n"] == 1 and row["metrics"]["top1"]["mean"] == results["top1"]
    assert [p["name"] for p in row["phases"]] == ["joint", "crt"]
    joint_seconds = sum(r["seconds"] for r in results["history"] if r["phase"] == "joint")
    assert row["phases"][0]["train_seconds"]["mean"] == pytest.approx(joint_seconds)
    # the crt phase's first epoch was evaluated, its last is the final result
    crt_eval = next(r["eval"]["top1"] for r in results["history"]
                    if r["phase"] == "crt" and "eval" in r)
    best = row["best_test"]["seeds"][0]
    assert (best["phase"], best["evaluated"]) == ("crt", 2)
    assert best["top1"] == max(crt_eval, results["top1"])

    archive = tmp_path / "old.tar.gz"
    assert pack(tmp_path / "lb", archive) == 1  # the finished run
    assert merge(archive, tmp_path / "home") == 1
    assert row_of(tmp_path / "home") == {**row, "runs": [
        {**r, "dir": str(tmp_path / "home" / Path(r["dir"]).relative_to(tmp_path / "lb"))}
        for r in row["runs"]]}


def test_appendix_is_published_under_the_tables_and_a_bad_one_stops_before_writing(
        tmp_path, capsys):
    """--appendix keeps a section the runs on disk cannot give (earlier runs whose directories
    are gone) in every republished table; an unreadable or empty file is one line, nothing
    written."""
    suite, home = digits_suite(tmp_path), tmp_path / "home"
    appendix = tmp_path / "earlier.md"
    appendix.write_text("## Earlier runs\n\n| Method | Top-1 |\n|---|---|\n| X | 12.34 |\n")
    target = tmp_path / "docs" / "lb.md"
    common = [str(suite), "--protocol", "smoke", "--out", str(home), "--report-only",
              "--no-plots", "--publish", str(target)]
    done = leaderboard_here(capsys, *common, "--appendix", str(appendix))
    assert done.returncode == 0, done.stdout + done.stderr
    text = target.read_text()
    assert "## Earlier runs\n\n| Method | Top-1 |\n|---|---|\n| X | 12.34 |" in text
    assert text.index("## Earlier runs") > text.index("| Method | Seeds |")
    assert "--appendix" in text  # the recorded command republishes it
    assert (home / "leaderboard.md").read_text() == text
    for bad, why in ((tmp_path / "missing.md", "cannot read"), (tmp_path / "empty.md", "empty")):
        if why == "empty":
            bad.write_text("  \n")
        target.unlink(missing_ok=True)
        refused = leaderboard_here(capsys, *common, "--appendix", str(bad))
        assert refused.returncode == 2
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --appendix: ") and why in lines[0]
        assert str(bad) in lines[0] and not target.exists()
