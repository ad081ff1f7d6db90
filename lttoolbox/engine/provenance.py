"""Where a number came from: commit, machine, library versions. Recorded with every result."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or None.

    A copy of the tree without its ``.git`` (a GPU machine gets the files only) takes the commit
    from ``$LTTOOLBOX_COMMIT``, which whoever copied it sets.
    """
    cwd = Path(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("LTTOOLBOX_COMMIT") or None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """The machine a run used: device, CPU, core count, versions."""
    info = {"device": str(device), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "hostname": platform.node()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
