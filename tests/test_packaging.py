"""The declared requirements cover what the code uses."""
import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def minimum(requirement: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.search(r">=\s*([\d.]+)", requirement).group(1).split("."))


def test_torch_pin_covers_the_device_argument_of_grad_scaler():
    # The trainer builds torch.amp.GradScaler(device_type), which appeared in torch 2.3 (with
    # torchvision 0.18); torch.cuda.amp.GradScaler was the only form before.
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requires = {re.split(r"[<>=!~ ]", line.strip())[0]: line.strip()
                for line in cfg["options"]["install_requires"].strip().splitlines()}
    assert minimum(requires["torch"]) >= (2, 3)
    assert minimum(requires["torchvision"]) >= (0, 18)
    assert "torch.amp.GradScaler(self.device.type" in (
        ROOT / "lttoolbox/engine/trainer.py").read_text()


def test_the_version_is_written_once():
    """``lttoolbox.__version__`` is the one source: the package metadata reads it from there."""
    import warnings

    import lttoolbox

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: lttoolbox.__version__"
    assert not (ROOT / "setup.py").exists()
    # no version key (ruff's target-version names the oldest Python, not ours)
    assert not re.search(r"^version\s*=", (ROOT / "pyproject.toml").read_text(), re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", lttoolbox.__version__)
    spelled = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "lttoolbox").rglob("*.py"))
               if lttoolbox.__version__ in p.read_text(encoding="utf-8")]
    assert spelled == ["lttoolbox/__init__.py"]
    setupcfg = pytest.importorskip("setuptools.config.setupcfg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools deprecates reading setup.cfg this way
        metadata = setupcfg.read_configuration(ROOT / "setup.cfg")["metadata"]
    assert metadata["version"] == lttoolbox.__version__


def test_the_tree_passes_ruff_and_ci_runs_it_before_the_tests():
    """pyproject.toml's lint rules hold for the whole tree; .ci/run checks them before pytest."""
    import subprocess
    import sys

    pytest.importorskip("ruff")  # the [test] extra installs it
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.startswith("python -m")]
    assert steps.index("python -m ruff check .") < steps.index("python -m pytest -q")
