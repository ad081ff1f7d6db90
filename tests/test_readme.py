"""README.md's set-up lines and its Python example stay true."""
import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_starts_with_install_then_quickstart_and_names_the_test_command():
    first_block = re.search(r"```\n(.*?)```", README, re.S).group(1).splitlines()
    assert first_block[0].startswith("pip install -e .")
    assert first_block[1].startswith("lttrain configs/quickstart.yaml")
    tests = " ".join(README.split("Tests:", 1)[1].split("\n\n")[0].split())
    assert tests.startswith('`pip install -e ".[test]"` then '
                            '`python -m pytest -n 2 --dist loadfile -m "not long"`')
    assert "`.ci/run` runs everything" in tests


def test_the_test_extra_installs_what_the_test_command_needs():
    """``-n 2 --dist loadfile`` are pytest-xdist's options: without it the command fails."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extra = cfg["options.extras_require"]["test"].split()
    assert any(req.startswith("pytest-xdist") for req in extra), extra


def test_python_example_runs():
    namespace = {}
    exec(re.search(r"```python\n(.*?)```", README, re.S).group(1), namespace)
    assert namespace["per_sample"].shape == (128,)
    assert torch.isfinite(namespace["loss"]) and namespace["loss"] > 0


def test_readme_states_the_test_time_with_its_conditions():
    """The time depends on the machine's load: the README gives measured times with the load
    they were taken at, not "a few minutes" (a busy 2-core machine once took 16)."""
    sentence = " ".join(README.split("Tests:", 1)[1].split("\n\n")[0].split())
    assert "a few minutes" not in sentence
    assert re.search(r"\(load \d+(\.\d+)?-\d+(\.\d+)?\) it took \d+ minutes? \d+ seconds",
                     sentence), sentence
    assert re.search(r"whole suite .* took \d+ minutes \d+ seconds", sentence), sentence
