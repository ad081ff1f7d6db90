"""The declared requirements cover what the code uses."""
import configparser
import re
from pathlib import Path

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
