"""The GPU-window tooling, on the CPU: the script end to end on the digits data, the
leaderboard's priority order, time budget, concurrent runs, and packing / merging of results.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_leaderboard import ROOT, digits_suite, leaderboard, leaderboard_here

from lttoolbox.leaderboard.archive import ArchiveError, merge, pack

QUICKSTART = "configs/quickstart.yaml"


def results_of(out: Path) -> dict[str, dict]:
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in (out / "runs").glob("*/*/seed0/results.json")}


@pytest.mark.long
def test_gpu_window_script_on_the_cpu(tmp_path):
    """Five minutes at most (the smoke runs end sooner), the digits suite: every step runs, at
    most 8 files come back, and the archive rebuilds the report on another machine."""
    suite = digits_suite(tmp_path)
    out, runs = tmp_path / "OUT", tmp_path / "runs"
    env = {**os.environ, "LTTOOLBOX_COMMIT": "abc123", "DEVDATA": str(tmp_path / "none.tgz")}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_window.sh", "--budget", "5", "--suite", str(suite),
         "--protocol", "smoke", "--settings", "exp10", "--seeds", "0", "--priority", "focal ce",
         "--runs", str(runs), "--out", str(out), "--margin", "5",
         "--throughput", f"--recipes {QUICKSTART} --steps 3 --warmup 1 --repeats 1",
         "--concurrency", "1 2", "--concurrency-recipe", QUICKSTART,
         "--concurrency-steps", "3", "--stream", "none"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= 16 * 2 ** 20 for f in files)
    assert {"environment.txt", "throughput.md", "concurrency.md", "results.tar.gz",
            "leaderboard.md", "window.log"} <= set(files)
    environment = (out / "environment.txt").read_text()
    assert "commit: abc123" in environment and "torch" in environment
    assert f"| {QUICKSTART} |" in (out / "throughput.md").read_text()
    assert "best concurrency:" in (out / "concurrency.md").read_text()
    log = (out / "window.log").read_text()
    # priority order: focal is started before ce
    assert log.index("exp10/focal/seed0: starting") < log.index("exp10/ce/seed0: starting")
    finished = results_of(runs)
    assert {"ce", "focal"} <= set(finished)
    # at home: merge the archive and rebuild the report from it alone
    home = tmp_path / "home"
    merged = leaderboard(str(suite), "--protocol", "smoke", "--seeds", "0", "--out", str(home),
                         "--merge", str(out / "results.tar.gz"), "--report-only", "--no-plots")
    assert "merged 2 runs" in merged.stdout, merged.stdout + merged.stderr
    doc = json.loads((home / "leaderboard.json").read_text())
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    for row in ("ce", "focal"):
        assert rows[row]["metrics"]["top1"]["mean"] == pytest.approx(finished[row]["top1"])


@pytest.mark.long
def test_concurrent_runs_match_runs_alone(tmp_path):
    # Same threads per run: CPU kernels are then deterministic, so bit-identical results.
    suite = digits_suite(tmp_path)
    common = [str(suite), "--protocol", "smoke", "--seeds", "0", "--rows", "ce", "focal",
              "--threads-per-job", "1", "--no-plots"]
    alone = leaderboard(*common, "--jobs", "1", "--out", str(tmp_path / "alone"))
    together = leaderboard(*common, "--jobs", "2", "--out", str(tmp_path / "together"))
    assert alone.returncode == together.returncode == 0, together.stdout + together.stderr
    a, b = results_of(tmp_path / "alone"), results_of(tmp_path / "together")
    assert set(a) == set(b) == {"ce", "focal"}
    for row in a:
        assert a[row]["per_class_acc"] == b[row]["per_class_acc"]
        assert [h["loss"] for h in a[row]["history"]] == [h["loss"] for h in b[row]["history"]]


@pytest.mark.long
def test_budget_stops_runs_resumably_and_is_not_a_failure(tmp_path):
    # so many epochs that no machine finishes them in a 3-second budget (the quickstart's 30
    # could, on a fast one); runs left unfinished by the budget: exit 3, neither 0 (all
    # finished) nor 1 (a failure)
    suite = digits_suite(tmp_path, protocols={"long": {"epochs": 100_000, "overlay": {}}})
    proc = leaderboard(str(suite), "--protocol", "long", "--seeds", "0", "--rows", "ce",
                       "--budget", "0.05", "--no-plots", "--out", str(tmp_path / "lb"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "budget spent" in proc.stdout and "1 runs left" in proc.stdout
    run = tmp_path / "lb" / "runs" / "exp10" / "ce" / "seed0"
    assert not (run / "results.json").exists()
    sidecar = json.loads((run / "leaderboard_run.json").read_text())
    assert sidecar["attempts"][-1]["interrupted"] is True


def test_priority_orders_the_queue(tmp_path, capsys):
    suite = digits_suite(tmp_path)
    proc = leaderboard_here(capsys, str(suite), "--protocol", "smoke", "--seeds", "0", "1",
                            "--priority", "focal", "--dry-run", "--out", str(tmp_path / "lb"))
    keys = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  exp10/")]
    assert keys == ["exp10/focal/seed0", "exp10/ce/seed0", "exp10/broken/seed0",
                    "exp10/focal/seed1", "exp10/ce/seed1", "exp10/broken/seed1"], proc.stdout
    bad = leaderboard_here(capsys, str(suite), "--priority", "nope", "--dry-run")
    assert bad.returncode == 2 and "--priority" in bad.stderr


def test_pack_keeps_results_only_and_merge_refuses_anything_else(tmp_path):
    run = tmp_path / "lb" / "runs" / "exp10" / "ce" / "seed0"
    run.mkdir(parents=True)
    content = {"results.json": '{"recipe_hash": "h", "protocol": "smoke", "top1": 50.0}',
               "log.jsonl": '{"epoch": 0}\n', "recipe.yaml": "train: {epochs: 1}\n",
               "checkpoint.pt": "weights", "model-main.pt": "weights"}
    for name, text in content.items():
        (run / name).write_text(text)
    (tmp_path / "lb" / "runs" / "exp10" / "focal" / "seed0").mkdir(parents=True)  # unfinished
    archive = tmp_path / "r.tar.gz"
    assert pack(tmp_path / "lb", archive) == 1
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [f"runs/exp10/ce/seed0/{n}" for n in
                                          ("log.jsonl", "recipe.yaml", "results.json")]
    assert merge(archive, tmp_path / "home") == 1
    assert (tmp_path / "home" / "runs/exp10/ce/seed0/results.json").read_text() == \
        content["results.json"]
    with pytest.raises(ArchiveError, match="limit"):
        pack(tmp_path / "lb", tmp_path / "small.tar.gz", limit=10)
    assert not (tmp_path / "small.tar.gz").exists()
    # weights are never a member (a checkpoint is one only of an unfinished run, checked as such
    # in test_leaderboard.py)
    for name in ("../escape/results.json", "runs/exp10/ce/seed0/model-main.pt", "/etc/x"):
        evil = tmp_path / "evil.tar.gz"
        with tarfile.open(evil, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
        with pytest.raises(ArchiveError, match="unexpected member"):
            merge(evil, tmp_path / "home2")
    assert not (tmp_path / "home2").exists() and not (tmp_path / "escape").exists()
