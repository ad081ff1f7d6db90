"""README.md's set-up lines and its Python example stay true."""
import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_starts_with_install_then_quickstart_and_names_the_test_command():
    first_block = re.search(r"```\n(.*?)```", README, re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install -e .")
    assert first_block[1].startswith("lttrain configs/quickstart.yaml")
    assert "python -m pytest" in README


def test_python_example_runs():
    namespace = {}
    exec(re.search(r"```python\n(.*?)```", README, re.S).group(1), namespace)
    assert namespace["per_sample"].shape == (128,)
    assert torch.isfinite(namespace["loss"]) and namespace["loss"] > 0
