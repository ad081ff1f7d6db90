"""What the paper-protocol table relies on: test-set logging that changes nothing, and a first
phase reused from another run that gives the result of a run from scratch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import StopAfter, digits_recipe
from test_stream import recipe as stream_recipe
from test_split_files import tree_fixture  # noqa: F401  (a fixture)

from lttoolbox.engine import train
from lttoolbox.engine.reuse import ReuseError, first_phase_hash, reused_start
from lttoolbox.recipe import apply_overrides, dump_recipe, resolve

ROOT = Path(__file__).resolve().parents[1]
CRT = ('phases=[{name: joint}, {name: crt, sampler: {name: class_balanced}, optim: {lr: 0.02}, '
       'train: {epochs: 2, freeze: [backbone], reset_head: true}}]')


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def trained(results: dict) -> tuple:
    """What training decides: the metrics and every epoch's loss and rate (not timings)."""
    return (results["top1"], results["per_class_acc"], results["confusion_matrix"],
            [(r["phase"], r["epoch"], r["loss"], r["lr"]) for r in results["history"]])


# ------------------------------------------------------------------------ eval.every is inert
@pytest.mark.long
@pytest.mark.parametrize("extra", [(), (CRT,)], ids=["one phase", "two phases"])
def test_logging_test_metrics_every_epoch_changes_no_weight_and_no_draw(tmp_path, extra):
    plain = train(digits_recipe(*extra), tmp_path / "plain", quiet=True)
    logged = train(digits_recipe(*extra, "eval.every=1"), tmp_path / "logged", quiet=True)
    assert trained(logged) == trained(plain)
    last = plain["phases"][-1]["name"]
    assert same_weights(tmp_path / "plain" / f"model-{last}.pt",
                        tmp_path / "logged" / f"model-{last}.pt")
    # every epoch but each phase's last (whose model the next phase or results.json holds) is
    # evaluated on the test set
    rows = logged["history"]
    ends = {(s["name"], s["epochs"] - 1) for s in logged["phases"]}
    assert [("eval" in r) for r in rows] == [(r["phase"], r["epoch"]) not in ends for r in rows]
    assert all(0.0 <= r["eval"]["top1"] <= 100.0 for r in rows if "eval" in r)


def test_logging_test_metrics_is_inert_on_the_streaming_path_too(tree, tmp_path):
    plain = train(stream_recipe(tree, "stream"), tmp_path / "plain", quiet=True)
    logged = train(resolve(apply_overrides(stream_recipe(tree, "stream"), ["eval.every=1"])),
                   tmp_path / "logged", quiet=True)
    assert trained(logged) == trained(plain)
    assert same_weights(tmp_path / "plain" / "model-main.pt", tmp_path / "logged" / "model-main.pt")


# ------------------------------------------------------------------------- first-phase reuse
def test_a_single_phase_run_and_a_phase_of_a_longer_run_share_their_hash():
    one, two = digits_recipe(), digits_recipe(CRT)
    assert first_phase_hash(one) == first_phase_hash(two)
    assert first_phase_hash(digits_recipe("train.seed=1")) != first_phase_hash(two)


@pytest.mark.parametrize("donor", [
    "single-phase run", pytest.param("the same two-phase recipe", marks=pytest.mark.long)])
def test_a_reused_first_phase_gives_the_result_of_a_run_from_scratch(tmp_path, donor):
    two = digits_recipe(CRT)
    scratch = train(two, tmp_path / "scratch", quiet=True)
    if donor == "single-phase run":
        train(digits_recipe(), tmp_path / "donor", quiet=True)
        source = tmp_path / "donor"
    else:
        source = tmp_path / "scratch"  # the joint weights of a finished longer run
    reused = train(two, tmp_path / "reused", quiet=True, start=reused_start(source, two))
    assert trained(reused) == trained(scratch)
    for phase in ("joint", "crt"):
        assert same_weights(tmp_path / "scratch" / f"model-{phase}.pt",
                            tmp_path / "reused" / f"model-{phase}.pt")
    assert reused["reused"]["phase"] == "joint"
    assert reused["reused"]["from"] == str(source.resolve())
    assert reused["epochs"] == scratch["epochs"] == 5
    log = [json.loads(line)
           for line in (tmp_path / "reused" / "log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in log] == [(r["phase"], r["epoch"])
                                                       for r in scratch["history"]]


@pytest.mark.long
def test_a_reused_run_interrupted_later_resumes_without_its_donor(tmp_path):
    two = digits_recipe(CRT)
    scratch = train(two, tmp_path / "scratch", quiet=True)
    train(digits_recipe(), tmp_path / "donor", quiet=True)
    start = reused_start(tmp_path / "donor", two)
    with pytest.raises(KeyboardInterrupt):
        train(two, tmp_path / "reused", logger=StopAfter(1), start=start)
    import shutil
    shutil.rmtree(tmp_path / "donor")  # the run holds its own checkpoint by now
    resumed = train(two, tmp_path / "reused", resume=True, quiet=True)
    assert trained(resumed) == trained(scratch)


def test_reuse_refuses_what_it_cannot_reuse(tmp_path):
    two = digits_recipe(CRT)
    train(digits_recipe("train.epochs=2"), tmp_path / "short", quiet=True)
    with pytest.raises(ReuseError, match=r"another recipe \(.*train\.epochs"):
        reused_start(tmp_path / "short", two)
    with pytest.raises(ReuseError, match="one phase"):
        reused_start(tmp_path / "short", digits_recipe("train.epochs=2"))
    with pytest.raises(ReuseError, match="no such folder"):
        reused_start(tmp_path / "missing", two)
    with pytest.raises(KeyboardInterrupt):  # a donor whose first phase has not ended
        train(digits_recipe(), tmp_path / "unfinished", logger=StopAfter(1))
    with pytest.raises(ReuseError, match=r"has not ended \(epoch 1 done\).*--resume"):
        reused_start(tmp_path / "unfinished", two)


@pytest.mark.long
def test_lttrain_from_run_reuses_and_refuses_with_one_line(tmp_path):
    dump_recipe(digits_recipe(CRT), tmp_path / "two.yaml")
    dump_recipe(digits_recipe(), tmp_path / "one.yaml")

    def lttrain(*args):
        return subprocess.run([sys.executable, "-m", "lttoolbox.cli", *map(str, args), "--quiet"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)

    refused = lttrain(tmp_path / "two.yaml", "--from-run", tmp_path / "nothing", "--out",
                      tmp_path / "run")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: --from-run: {tmp_path / 'nothing'} is not a run directory (no such folder)"]
    assert not (tmp_path / "run").exists()  # nothing written
    assert lttrain(tmp_path / "one.yaml", "--out", tmp_path / "donor").returncode == 0
    done = lttrain(tmp_path / "two.yaml", "--from-run", tmp_path / "donor", "--out",
                   tmp_path / "run")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["reused"]["phase"] == "joint"
    assert [r["phase"] for r in results["history"]] == ["joint"] * 3 + ["crt"] * 2
