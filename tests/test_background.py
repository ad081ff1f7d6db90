"""benchmarks/background.sh: a leaderboard pinned to a commit, at low priority, stopped and
continued with the same command."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs git and a git checkout")


def sh(*args, cwd, check=True):
    return subprocess.run(list(map(str, args)), cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=check)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.fixture
def clone(tmp_path):
    """A clone of this repository's last commit with one more commit on top, in its own folder
    (the script puts its worktree beside the clone)."""
    repo = tmp_path / "box" / "repo"
    sh("git", "clone", "-q", "--no-hardlinks", ROOT, repo, cwd=tmp_path)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
       "-m", "newer", cwd=repo)
    return repo


@pytest.mark.long
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_start_pins_a_worktree_runs_niced_refuses_twice_and_stops_resumably(clone, tmp_path):
    pinned = sh("git", "rev-parse", "HEAD~1", cwd=clone).stdout.strip()
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "bg", "references": None,
        "protocols": {"long": {"epochs": 100_000, "overlay": {}}},  # never done before the stop
        "settings": [{"id": "s", "overlay": {}}],
        "rows": [{"id": "ce", "recipe": str(clone / "configs" / "quickstart.yaml")}]}))
    out = tmp_path / "runs"
    script = clone / "benchmarks" / "background.sh"
    args = ["--", suite, "--protocol", "long", "--out", out, "--no-plots"]
    started = sh(script, "start", "--commit", "HEAD~1", "--name", "t", *args, cwd=tmp_path)
    tree = clone.parent / "lttoolbox-bg-t"
    pid = int((clone.parent / "lttoolbox-bg-t.pid").read_text())
    try:
        assert f"pid {pid}" in started.stdout
        assert sh("git", "rev-parse", "HEAD", cwd=tree).stdout.strip() == pinned
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(fields[16]) == 19  # nice value: the lowest priority
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={tree}".encode() in environ  # the pinned code, not the installed one
        again = sh(script, "start", "--name", "t", *args, cwd=tmp_path, check=False)
        assert again.returncode == 1 and "is running" in again.stderr
        assert "is running" in sh(script, "status", "--name", "t", cwd=tmp_path).stdout
        log = out / "runs" / "s" / "ce" / "seed0" / "log.jsonl"
        deadline = time.monotonic() + 150
        while not (log.is_file() and log.read_text()):
            assert alive(pid) and time.monotonic() < deadline, "no epoch within 150 s"
            time.sleep(0.3)
        stopped = sh(script, "stop", "--name", "t", "--wait", cwd=tmp_path)
        assert "'t' has stopped" in stopped.stdout
        assert not alive(pid)  # --wait returned after the runner's exit, not before
    finally:
        if alive(pid):
            os.kill(pid, 9)
    text = (clone.parent / "lttoolbox-bg-t.log").read_text()
    assert f"start at {pinned[:7]}" in text and "interrupted; it resumes next time" in text
    assert (log.parent / "checkpoint.pt").is_file()
    assert "is not running" in sh(script, "status", "--name", "t", cwd=tmp_path).stdout


def test_bad_arguments_are_one_line(clone, tmp_path):
    script = clone / "benchmarks" / "background.sh"
    for args, message in ((["start", "--commit", "nope", "--", "x"], "is not a commit"),
                          (["start", "--name", "a/b", "--", "x"], "--name must be"),
                          (["start"], "give the leaderboard's arguments"),
                          (["frobnicate"], "usage:")):
        done = sh(script, *args, cwd=tmp_path, check=False)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
