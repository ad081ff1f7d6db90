"""Every Python snippet of the documentation runs as written.

The ```python blocks of README.md and docs/*.md are run in order, each document's blocks in one
namespace (a later block may use what an earlier one defined, as a reader would), in a fresh
working directory. A block that cannot run here is listed in SKIP with its reason; the list is
checked to name only blocks that exist, so it cannot go stale.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# (document, index of the block in it, first line of the block) -> why it cannot run in the tests
SKIP = {
    ("docs/models.md", 0, "import torch"):
        "downloads torchvision's ImageNet ResNet-50 weights (about 100 MB, needs the network)",
}


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_skip_list_names_existing_blocks():
    found = {(name(p), i, code.splitlines()[0]) for p in DOCS for i, code in enumerate(blocks(p))}
    assert set(SKIP) <= found, set(SKIP) - found


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=name)
def test_python_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a snippet that writes (a run directory) writes here
    namespace: dict = {"__name__": "__doc_snippet__"}
    ran = 0
    for index, code in enumerate(blocks(path)):
        if (name(path), index, code.splitlines()[0]) in SKIP:
            continue
        exec(compile(code, f"{name(path)}, python block {index}", "exec"), namespace)
        ran += 1
    if not ran:
        pytest.skip("every block of this document is in SKIP")
