"""lttoolbox.rundir: the layout of a run directory, its lock, its atomic writes, and its state."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lttoolbox.rundir import (RunDir, RunDirError, RunLock, atomic_write, atomic_write_json,
                              lock_holder, write_log)

REPO = Path(__file__).resolve().parents[1]


def test_the_layout_names_every_file_of_a_run(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.recipe == tmp_path / "run" / "recipe.yaml"
    assert run.data == tmp_path / "run" / "data.json"
    assert run.checkpoint == tmp_path / "run" / "checkpoint.pt"
    assert run.log == tmp_path / "run" / "log.jsonl"
    assert run.metrics == tmp_path / "run" / "metrics.csv"
    assert run.results == tmp_path / "run" / "results.json"
    assert run.leaderboard_record == tmp_path / "run" / "leaderboard_run.json"
    assert run.lock_file == tmp_path / "run" / ".lock"
    assert [p.name for p in run.plots] == ["per_class_accuracy.png", "confusion_matrix.png",
                                           "training_curves.png"]
    assert run.weights("crt") == tmp_path / "run" / "model-crt.pt"
    assert run.generated("rsg") == tmp_path / "run" / "generated-rsg.pt"
    assert run.evaluation("r50") == tmp_path / "run" / "eval-r50.json"
    assert run.tensorboard == tmp_path / "run" / "tensorboard"
    assert run.tracking == tmp_path / "run" / "tracking.json"
    assert run.mlflow_db == tmp_path / "run" / "mlflow.db"
    assert run.mlflow_artifacts == tmp_path / "run" / "mlartifacts"
    assert not (tmp_path / "run").exists()  # naming creates nothing


@pytest.mark.parametrize("name, phase", [("model-joint.pt", "joint"), ("model-a-b.pt", "a-b"),
                                         ("checkpoint.pt", None), ("model-.pt", None),
                                         ("model-joint.pth", None), ("my-model-x.pt", None)])
def test_the_phase_of_a_weights_file(name, phase):
    assert RunDir.phase_of_weights(Path("/runs/x") / name) == phase


def test_finished_and_unfinished_runs(tmp_path):
    root = tmp_path / "runs"
    empty, started, unfinished, finished = (RunDir(root / n) for n in ("a", "b", "c", "d"))
    empty.path.mkdir(parents=True)
    (root / "notes.txt").write_text("not a run")
    for run in (started, unfinished, finished):
        run.path.mkdir()
        run.recipe.write_text("{}\n")
    for run in (unfinished, finished):
        run.checkpoint.write_bytes(b"state")
    finished.results.write_text("{}\n")
    assert [(r.holds_run(), r.is_unfinished(), r.is_finished())
            for r in (empty, started, unfinished, finished)] == [
        (False, False, False), (True, False, False), (True, True, False), (True, False, True)]
    assert [r.path.name for r in RunDir.runs_under(root)] == ["b", "c", "d"]
    assert [r.path.name for r in RunDir.unfinished_under(root)] == ["c"]
    assert RunDir.unfinished_under(tmp_path / "nowhere") == []
    # A recipe.yaml beside a checkpoint or results is a saved one; elsewhere a person wrote it.
    assert RunDir.is_saved_recipe(unfinished.recipe) and RunDir.is_saved_recipe(finished.recipe)
    assert not RunDir.is_saved_recipe(started.recipe)
    assert not RunDir.is_saved_recipe(finished.path / "other.yaml")


def test_the_lock_names_its_holder_and_ends_with_the_block(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.holder() is None  # no lock file at all
    with run.lock():
        assert run.holder() == str(os.getpid())
        assert lock_holder(run.path) == str(os.getpid())
        with pytest.raises(RunDirError, match=f"in use by another run \\(process {os.getpid()}\\)"):
            RunLock(run.path).__enter__()
    assert run.lock_file.is_file() and run.holder() is None


def test_a_lock_held_by_another_process_is_seen_and_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom lttoolbox.rundir import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('locked', flush=True)\n    sys.stdin.read()\n",
         str(run.path)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "locked"
        assert run.holder() == str(child.pid)
        with pytest.raises(RunDirError, match=f"process {child.pid}"):
            with run.lock():
                pass
    finally:
        child.communicate("", timeout=60)
    assert run.holder() is None
    with run.lock():  # the lock ended with the process
        pass


def test_an_atomic_write_that_fails_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    run = RunDir(tmp_path / "run")
    atomic_write_json({"top1": 0.5}, run.results)
    before = run.results.read_bytes()

    def half_then_fail(handle):
        handle.write('{"top1": 0.')
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(run.results, half_then_fail, binary=False)
    assert run.results.read_bytes() == before == b'{\n  "top1": 0.5\n}\n'
    assert sorted(p.name for p in run.path.iterdir()) == ["results.json"]
    assert run.temp_files() == []


def test_the_log_is_rewritten_from_the_history(tmp_path):
    run = RunDir(tmp_path / "run")
    rows = [{"phase": "main", "epoch": e, "loss": 1.5 - e, "lr": 0.1, "seconds": 2.0,
             "images_per_second": 50.0, "eval": {"top1": 0.25}} for e in range(2)]
    write_log(run.path, rows)
    assert len(run.log.read_text().splitlines()) == 2
    assert run.metrics.read_text().splitlines() == [
        "phase,epoch,loss,lr,seconds,images_per_second,eval_top1,eval_mean_class_acc,eval_many,"
        "eval_medium,eval_few",
        "main,0,1.5,0.1,2.0,50.0,0.25,,,,", "main,1,0.5,0.1,2.0,50.0,0.25,,,,"]


def _lttoolbox_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level or (node.module or "").startswith("lttoolbox"):
                found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lttoolbox")}
    return found


def test_the_run_directory_module_is_a_leaf():
    """Everything may import it: it imports nothing of lttoolbox but errors, which imports
    nothing of lttoolbox either."""
    assert _lttoolbox_imports(REPO / "lttoolbox" / "rundir.py") == {".errors"}
    assert _lttoolbox_imports(REPO / "lttoolbox" / "errors.py") == set()


def test_one_implementation_of_the_lock_probe():
    """The trainer's lock and the leaderboard's probe of it are the same code."""
    defined = [str(p.relative_to(REPO)) for folder in ("lttoolbox", "benchmarks")
               for p in sorted((REPO / folder).rglob("*.py"))
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.FunctionDef) and node.name == "lock_holder"]
    assert defined == ["lttoolbox/rundir.py"]


LAYOUT = ("recipe.yaml", "checkpoint.pt", "results.json", "log.jsonl", "metrics.csv", "data.json",
          "leaderboard_run.json", "planned_recipe.yaml", "lttrain.log", "model-", "generated-",
          "eval-", ".lock", "tracking.json", "mlflow.db", "mlartifacts")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def layout_literals(path: Path) -> list[str]:
    """String constants of ``path``'s code that are a path to a file of the layout (no
    whitespace: messages, help texts and docstrings name the files in words and may stay)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    return [f"{path}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in skip and not any(c.isspace() for c in node.value)
            and any(name in node.value for name in LAYOUT)]


def test_the_literal_check_sees_a_file_name_in_code_not_in_a_docstring(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Writes results.json."""\ndef f(out, phase):\n'
                      '    """Reads log.jsonl."""\n    print("no results.json here")\n'
                      '    return out / f"model-{phase}.pt", out / "sub/checkpoint.pt"\n')
    assert sorted(line.split(": ", 1)[1] for line in layout_literals(module)) == [
        "'model-'", "'sub/checkpoint.pt'"]


def test_no_file_of_the_layout_is_spelled_outside_the_run_directory_module():
    found = [hit for folder in ("lttoolbox", "benchmarks")
             for path in sorted((REPO / folder).rglob("*.py")) if path.name != "rundir.py"
             for hit in layout_literals(path)]
    assert not found, "\n".join(found)
