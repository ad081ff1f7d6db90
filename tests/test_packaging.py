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
    assert "version" not in (ROOT / "pyproject.toml").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+", lttoolbox.__version__)
    spelled = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "lttoolbox").rglob("*.py"))
               if lttoolbox.__version__ in p.read_text(encoding="utf-8")]
    assert spelled == ["lttoolbox/__init__.py"]
    setupcfg = pytest.importorskip("setuptools.config.setupcfg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools deprecates reading setup.cfg this way
        metadata = setupcfg.read_configuration(ROOT / "setup.cfg")["metadata"]
    assert metadata["version"] == lttoolbox.__version__
