"""`lttrain` as a user runs it."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def lttrain(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "lttoolbox.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.long
def test_quickstart_end_to_end(tmp_path):
    run = lttrain("configs/quickstart.yaml", "train.epochs=3", "--out", tmp_path / "q")
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert results["epochs"] == 3 and results["top1"] > 30.0
    assert "top-1" in run.stdout and "Per-class accuracy" in run.stdout


def test_bad_override_is_one_clear_line(tmp_path):
    run = lttrain("configs/quickstart.yaml", "loss.name=focl", "--out", tmp_path / "bad")
    assert run.returncode == 2
    assert "loss.name" in run.stderr and "did you mean" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "bad").exists()


def test_missing_recipe_and_data_name_the_file(tmp_path):
    run = lttrain(tmp_path / "nope.yaml")
    assert run.returncode == 2 and "nope.yaml" in run.stderr and "Traceback" not in run.stderr
    missing = tmp_path / "no-such-cifar"
    run = lttrain("configs/cifar10_lt/ce.yaml", f"data.root={missing}", "--out", tmp_path / "r")
    assert run.returncode == 2 and str(missing) in run.stderr and "Traceback" not in run.stderr


def test_list_names_registries():
    run = lttrain("--list")
    assert run.returncode == 0 and "resnet32" in run.stdout and "digits_lt" in run.stdout


def _epochs_logged(run_dir: Path) -> list[int]:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line)["epoch"] for line in log.read_text().splitlines() if line.strip()]


@pytest.mark.long
def test_a_background_run_stops_resumably_on_sigint_and_sigterm(tmp_path):
    """`nohup lttrain ... &` starts Python with SIGINT ignored; SIGINT and SIGTERM must still stop
    the run with the resume hint, keeping a checkpoint that --resume continues from."""
    out = tmp_path / "bg"
    args = ["configs/quickstart.yaml", "train.epochs=500", "--out", str(out)]

    def started_in_background():  # what a non-interactive shell does for `cmd &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def run_until_an_epoch_then(signal_to_send, *extra):
        before = len(_epochs_logged(out))
        proc = subprocess.Popen([sys.executable, "-m", "lttoolbox.cli", *args, *extra], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=started_in_background)
        deadline = time.monotonic() + 120
        while len(_epochs_logged(out)) <= before and proc.poll() is None:
            assert time.monotonic() < deadline, "no epoch finished within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal_to_send)
        output, _ = proc.communicate(timeout=60)
        return proc.returncode, output

    code, output = run_until_an_epoch_then(signal.SIGINT)
    assert code == 130, output
    assert "--resume" in output and "Traceback" not in output
    assert (out / "checkpoint.pt").is_file() and not (out / "results.json").exists()
    first = _epochs_logged(out)

    code, output = run_until_an_epoch_then(signal.SIGTERM, "--resume")
    assert code == 130, output
    resumed = _epochs_logged(out)[len(first):]
    # the second attempt continued after the first one's epochs instead of starting over
    assert resumed and resumed[0] > first[-1]
