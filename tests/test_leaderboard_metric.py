"""Tests of a leaderboard suite's primary metric (``metric: top1 | mAP``).

A multi-label suite reads ``mAP`` and its head/medium/tail groups wherever a top-1 suite reads
top-1: the table's columns, the Δ to the baseline, the best test epoch, the paper comparison,
the CSV/JSON, the plots and the checks of a merged archive. The expected numbers are computed
here with numpy from the values written into the runs' files. Only the test marked ``long``
trains (two one-epoch runs on 300 mosaics).
"""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from lttoolbox.errors import ConfigError
from lttoolbox.leaderboard.archive import ArchiveError, merge, read_archive
from lttoolbox.leaderboard.metrics import METRICS, metric_spec
from lttoolbox.leaderboard.references import References
from lttoolbox.leaderboard.report import collect, csv_rows, markdown
from lttoolbox.leaderboard.suite import Planner, load_suite

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ML_RECIPE = ROOT / "configs" / "multilabel" / "digits_bce.yaml"
SHIPPED = ROOT / "benchmarks" / "suites" / "digits_mlt_core.yaml"


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ml_copy(tmp_path: Path) -> Path:
    """digits_bce.yaml without ``data.imbalance_ratio`` (the data set's default, 20): a column
    whose recipe names no imbalance, like VOC-MLT's, matches the reference entries that name
    none."""
    recipe = yaml.safe_load(ML_RECIPE.read_text())
    recipe["data"].pop("imbalance_ratio")
    return write_yaml(tmp_path / "digits_bce_copy.yaml", recipe)


def ml_refs(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "refs.yaml", {
        "sources": {"toy": {"paper": "Toy et al. A multi-label paper. 2020.",
                            "selection": "its final epoch", "final_epoch": True}},
        "entries": [
            {"method": "bce", "source": "toy", "table": "Table 1", "dataset": "digits_mlt",
             "imbalance_type": None, "imbalance_ratio": None, "map": 30.0},
            {"method": "db", "source": "toy", "table": "Table 1", "dataset": "digits_mlt",
             "imbalance_type": None, "imbalance_ratio": None, "map": 35.0, "head_map": 40.0,
             "medium_map": 33.0, "tail_map": 25.5},
            # a top-1 number of the same row and data set: never read by a mAP suite
            {"method": "db", "source": "toy", "table": "Table 2", "dataset": "digits_mlt",
             "imbalance_type": None, "imbalance_ratio": None, "top1_accuracy": 90.0}]})


def ml_suite(tmp_path: Path, **extra) -> Path:
    ml_refs(tmp_path)
    recipe = str(ml_copy(tmp_path))
    suite = {
        "name": "digits_ml", "title": "Digits multi-label", "metric": "mAP", "baseline": "bce",
        "references": "refs.yaml",
        "protocols": {"smoke": {"epochs": 1, "overlay": {"data": {"num_train": 300,
                                                                   "num_test": 200}}}},
        "settings": [{"id": "asis", "label": "As given", "overlay": {}}],
        "rows": [
            {"id": "bce", "label": "BCE", "recipe": recipe},
            {"id": "db", "label": "DB", "recipe": recipe, "overlay": {"optim": {"lr": 0.1}}},
            {"id": "cb", "label": "CB", "recipe": None, "status": "not yet available"},
            {"id": "single", "label": "Single-label", "recipe": str(QUICKSTART)},
        ],
        **extra,
    }
    return write_yaml(tmp_path / "suite.yaml", suite)


GROUPS = ("head_mAP", "medium_mAP", "tail_mAP")


def write_ml_run(run, protocol: str, values: dict, per_class: list, evals: dict | None = None,
                 epochs: int = 3) -> None:
    """A finished multi-label run as ``lttrain`` writes it; ``evals``: epoch -> logged test mAP."""
    run.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for epoch in range(epochs):
        row = {"phase": "main", "epoch": epoch, "loss": 0.5, "lr": 0.05, "seconds": 2.0}
        if epoch in (evals or {}):
            row["eval"] = {"mAP": evals[epoch], **{g: 10.0 for g in GROUPS}}
        rows.append(row)
    (run.dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run.dir / "results.json").write_text(json.dumps(
        {"recipe_hash": run.hash, "protocol": protocol, **values, "per_class_ap": per_class,
         "train_class_counts": [50, 20, 5], "test_class_counts": [30, 28, 31],
         "seconds": 6.0, "images_per_second": 100.0,
         "phases": [{"name": "main", "epochs": epochs}], "history": rows}))


def stat_cell(values: list[float]) -> str:
    a = np.array(values)
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


# ------------------------------------------------------------------------------ the key
@pytest.mark.parametrize("value", ["accuracy", None, 5, ["mAP"]])
def test_a_bad_metric_names_the_key(tmp_path, value):
    path = ml_suite(tmp_path, metric=value)
    with pytest.raises(ConfigError, match=r"^metric: unknown metric"):
        load_suite(path)


def test_the_cli_refuses_a_bad_metric_in_one_line(tmp_path, capsys):
    from lttoolbox.leaderboard.cli import main

    code = main([str(ml_suite(tmp_path, metric="map")), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: metric: unknown metric 'map'; known: mAP, top1"]


def test_a_suite_without_metric_is_a_top1_suite(tmp_path):
    suite = yaml.safe_load(ml_suite(tmp_path).read_text())
    del suite["metric"]
    assert load_suite(write_yaml(tmp_path / "s.yaml", suite)).metric.key == "top1"


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_a_run_of_the_other_kind_is_refused_before_it_runs(tmp_path, metric):
    """A single-label data set reports no mAP, a multi-label one no top-1: the planner refuses
    such a run, naming the suite's metric, and the table says why."""
    spec = metric_spec(metric)
    other = QUICKSTART if spec.multilabel else ML_RECIPE
    suite = load_suite(ml_suite(tmp_path, metric=metric, rows=[
        {"id": "bce", "recipe": str(other)}]))
    plan = Planner(suite, "smoke", tmp_path / "lb").plan("bce", "asis", 0)
    assert isinstance(plan, ConfigError) and plan.key == "metric"
    kind = "single-label" if spec.multilabel else "multi-label"
    assert f"is {kind} and reports no {metric}" in str(plan)
    doc = collect(suite, Planner(suite, "smoke", tmp_path / "lb"), References.empty(), [0],
                  {"bce"}, {"asis"})
    assert doc["settings"][0]["rows"][0]["status"] == "invalid recipe"


# ------------------------------------------------------------------------------ the table
def test_a_multilabel_suite_reads_map_everywhere(tmp_path):
    """Columns, Δ, best test epoch, paper number and direction, CSV and JSON of a mAP suite,
    from the values written into the runs' files (means and deviations by numpy)."""
    suite = load_suite(ml_suite(tmp_path))
    planner = Planner(suite, "paper", tmp_path / "lb")
    values = {  # (row, seed) -> mAP, head, medium, tail
        ("bce", 0): (30.0, 40.0, 28.0, 12.0), ("bce", 1): (34.0, 44.0, 30.0, 20.0),
        ("db", 0): (40.0, 45.0, 38.0, 30.0), ("db", 1): (38.0, 41.0, 37.0, None)}
    per_class = {("bce", 0): [50.0, 30.0, 10.0], ("bce", 1): [52.0, 34.0, None],
                 ("db", 0): [55.0, 40.0, 25.0], ("db", 1): [57.0, 38.0, 19.0]}
    for (row, seed), v in values.items():
        write_ml_run(planner.plan(row, "asis", seed), "paper", dict(zip(("mAP", *GROUPS), v)),
                     per_class[(row, seed)],
                     evals={0: 36.0, 1: 31.0} if (row, seed) == ("bce", 0) else None)
    refs = References.load(tmp_path / "refs.yaml")
    doc = collect(suite, planner, refs, [0, 1], {"bce", "db", "single"}, {"asis"})
    assert doc["metric"] == "mAP"
    rows = {r["id"]: r for r in doc["settings"][0]["rows"]}
    mean = {row: np.mean([values[(row, s)][0] for s in (0, 1)]) for row in ("bce", "db")}
    assert rows["db"]["metrics"]["mAP"]["mean"] == pytest.approx(mean["db"])
    assert rows["db"]["metrics"]["tail_mAP"]["n"] == 1  # a group without a class: left out
    assert rows["db"]["delta_mAP"] == pytest.approx(mean["db"] - mean["bce"])
    assert rows["bce"]["per_class_ap"] == pytest.approx([51.0, 32.0, 10.0])
    assert "per_class_acc" not in rows["bce"]
    assert rows["db"]["paper"]["mAP"] == 35.0 and rows["db"]["paper"]["head_mAP"] == 40.0
    assert rows["db"]["paper"]["delta_mAP"] == pytest.approx(5.0)
    cmp = rows["db"]["vs_paper"]
    assert cmp["direction"] == "same" and cmp["difference"] == pytest.approx(mean["db"] - 35.0)
    best = rows["bce"]["best_test"]
    assert best["seeds"] == [{"seed": 0, "mAP": 36.0, "epoch": 0, "evaluated": 3,
                              "phase": "main"}]

    md = markdown(doc)
    header = ("| Method | Seeds | Epochs | mAP | Head mAP | Medium mAP | Tail mAP | Δ mAP vs BCE "
              "| Best test epoch § | Paper mAP | Paper Δ | vs paper (ours − paper) | Train min | "
              "Wall min | img/s |")
    assert header in md
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({ln.count("|") for ln in table}) == 1, table  # every line has every cell
    db = [values[("db", s)] for s in (0, 1)]
    assert (f"| DB | 2 | 20 | {stat_cell([v[0] for v in db])} | {stat_cell([v[1] for v in db])} "
            f"| {stat_cell([v[2] for v in db])} | {stat_cell([30.0])} | "
            f"+{mean['db'] - mean['bce']:.2f} |  | 35.00 [1] | +5.00 | "
            f"+{mean['db'] - 35.0:.2f}, same direction |") in md
    assert "| 36.00 (of 3; 1 of 2 seeds) | 30.00 [1] |" in md
    assert "| CB | 0 |  | *not yet available* |" in md
    assert "- Single-label: metric: data set 'digits_lt' is single-label" in md
    assert "highest test mAP" in md and "papers' practice" not in md
    assert "*Paper mAP* is a final-epoch number, as this table's own: [1]: its final epoch." in md
    assert "not a final-epoch number" not in md
    assert "*Paper mAP* is the published mean average precision" in md
    assert "Test split of the 4 finished runs (`results.json`'s `test_class_counts`): 28 to 31 " \
           "positive images per class, 3 classes." in md
    for word in ("Top-1", "top-1", "Many", "Few", "Mean/class", "Accuracies"):
        assert word not in md, word

    records = {r["row"]: r for r in csv_rows(doc)}
    assert float(records["db"]["mAP_mean"]) == pytest.approx(mean["db"])
    assert float(records["db"]["mAP_std"]) == pytest.approx(np.std([40.0, 38.0], ddof=1))
    assert float(records["db"]["delta_mAP_vs_baseline"]) == pytest.approx(
        mean["db"] - mean["bce"])
    assert float(records["db"]["paper_mAP"]) == 35.0
    assert float(records["db"]["paper_tail_mAP"]) == 25.5
    assert records["bce"]["paper_head_mAP"] == ""  # the source gives no group numbers for it
    assert float(records["bce"]["best_test_mAP_mean"]) == 36.0
    assert not any(k.startswith("top1") or "top1" in k for k in records["db"])
    from lttoolbox.leaderboard.report import write_all

    md_path = write_all(doc, tmp_path / "out")[1]
    header_line = md_path.read_text().splitlines()[0].split(",")
    assert header_line[10:12] == ["mAP_mean", "mAP_std"] and "paper_tail_mAP" in header_line
    json.dumps(doc)


def test_a_top1_suite_never_reads_a_map_reference(tmp_path):
    refs = References.load(ml_refs(tmp_path))
    assert refs.lookup("db", "digits_mlt", None, None).top1 == 90.0
    assert refs.lookup("db", "digits_mlt", None, None, metric="mAP").value == 35.0
    assert refs.lookup("db", "digits_mlt", "exp", 20, metric="mAP") is None
    assert refs.lookup("db", "digits_mlt", None, 20, metric="mAP") is None


def test_plots_of_a_map_suite(tmp_path):
    pytest.importorskip("matplotlib")
    from lttoolbox.leaderboard.plots import write_plots

    row = {"id": "bce", "label": "BCE", "n": 1, "metrics": {"mAP": {"mean": 30.0, "std": None}},
           "per_class_ap": [50.0, 30.0, 10.0], "train_class_counts": [50, 20, 5], "paper": None}
    doc = {"title": "T", "baseline": "bce", "protocol": {"name": "quick"}, "metric": "mAP",
           "settings": [{"id": "asis", "label": "As given", "rows": [row]}]}
    assert write_plots(doc, tmp_path) == {"asis": ["plots/asis_per_class.png",
                                                   "plots/asis_mAP.png"]}


# ------------------------------------------------------------------------------ references
REF_BASE = {"method": "db", "source": "toy", "table": "T1", "dataset": "voc_mlt",
            "imbalance_type": None, "imbalance_ratio": None}


@pytest.mark.parametrize("entry, message", [
    ({"map": 78.94, "top1_accuracy": 80.0}, "exactly one of top1_error, top1_accuracy, map"),
    ({"head_map": 73.22}, "exactly one of"),
    ({"map": 120.0}, r"map: a percentage must lie in \[0, 100\]"),
    ({"map": 78.94, "tail_map": -1}, r"tail_map: a percentage must lie in \[0, 100\]"),
    ({"map": "78.94"}, r"a percentage must lie in \[0, 100\], got '78.94'"),
    ({"top1_accuracy": 80.0, "head_map": 73.22}, "'head_map' is a number of mAP"),
    ({"map": 78.94, "imbalance_type": "exp"}, "or null for both"),
    ({"map": 78.94, "imbalance_ratio": 20}, "or null for both"),
    ({"map": 78.94, "mAP": 78.94}, "unknown key 'mAP'"),
])
def test_bad_map_entries_are_rejected(tmp_path, entry, message):
    path = write_yaml(tmp_path / "refs.yaml", {"sources": {"toy": {"paper": "P"}},
                                              "entries": [{**REF_BASE, **entry}]})
    with pytest.raises(ConfigError, match=message):
        References.load(path)


@pytest.mark.parametrize("missing", ["imbalance_type", "imbalance_ratio"])
def test_an_entry_states_its_imbalance_even_when_null(tmp_path, missing):
    entry = {k: v for k, v in {**REF_BASE, "map": 78.94}.items() if k != missing}
    path = write_yaml(tmp_path / "refs.yaml", {"sources": {"toy": {"paper": "P"}},
                                              "entries": [entry]})
    with pytest.raises(ConfigError, match=f"'{missing}' is required"):
        References.load(path)


def test_shipped_distribution_balanced_numbers():
    """The DB loss's released numbers: README.md lines 52 (COCO-MLT) and 58 (VOC-MLT) of
    wutong16/DistributionBalancedLoss at 14460d0, Total / Head / Medium / Tail."""
    refs = References.load(ROOT / "benchmarks" / "reference_numbers.yaml")
    readme = {"coco_mlt": (53.55, 51.13, 57.05, 51.06), "voc_mlt": (78.94, 73.22, 84.18, 79.30)}
    for dataset, (total, head, medium, tail) in readme.items():
        ref = refs.lookup("db", dataset, None, None, metric="mAP")
        assert (ref.value, dict(ref.groups)) == (
            total, {"head_mAP": head, "medium_mAP": medium, "tail_mAP": tail})
        assert ref.printed == f"{total:g} % mAP" and ref.final_epoch
        assert "14460d0acda6a3e77a8a6a5999b9746243cb1535/README.md" in ref.url
        assert "epoch_8" in ref.selection
        assert refs.lookup("db", dataset, None, None) is None  # no top-1 number


# ------------------------------------------------------------------------------ archives
def ml_results(**extra) -> bytes:
    return json.dumps({"recipe_hash": "abc", "protocol": "smoke", "mAP": 30.0,
                       "head_mAP": 35.0, "medium_mAP": None, "tail_mAP": 20.0,
                       "per_class_ap": [50.0, None, 10.0], **extra}).encode()


def ml_archive(path: Path, results: bytes, log: bytes = b'{"eval": {"mAP": 28.0}}\n') -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("results.json", results), ("log.jsonl", log)):
            info = tarfile.TarInfo(f"runs/asis/bce/seed0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_an_archive_is_checked_for_the_suites_metric(tmp_path):
    good = ml_archive(tmp_path / "good.tar.gz", ml_results())
    assert list(read_archive(good, metric="mAP")) == ["runs/asis/bce/seed0"]
    with pytest.raises(ArchiveError, match="'top1' must be a number from 0 to 100, got None"):
        read_archive(good)  # a top-1 suite's report would find no top-1
    cases = [(ml_results(mAP="high"), None, "'mAP' must be a number from 0 to 100, got 'high'"),
             (ml_results(tail_mAP="x"), None, "'tail_mAP' must be a number or null"),
             (ml_results(per_class_ap=["x"]), None, "'per_class_ap' must be a list of numbers"),
             (ml_results(), b'{"eval": {"top1": 28.0}}\n',
              "line 1: 'eval' must be an object with a numeric 'mAP'")]
    for i, (results, log, message) in enumerate(cases):
        bad = ml_archive(tmp_path / f"bad{i}.tar.gz", results, *([log] if log else []))
        with pytest.raises(ArchiveError, match=re.escape(message)):
            read_archive(bad, metric="mAP")
    assert merge(good, tmp_path / "home", metric="mAP") == 1


def test_the_cli_merges_a_map_archive_into_a_map_suite(tmp_path, capsys):
    from lttoolbox.leaderboard.cli import main

    suite = ml_suite(tmp_path)
    archive = ml_archive(tmp_path / "r.tar.gz", ml_results())
    code = main([str(suite), "--protocol", "smoke", "--merge", str(archive), "--report-only",
                 "--no-plots", "--rows", "bce", "db", "--out", str(tmp_path / "lb")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "lb" / "runs" / "asis" / "bce" / "seed0" / "results.json").is_file()


# ------------------------------------------------------------------------------ shipped suite
def test_shipped_multilabel_suite(tmp_path):
    """digits_mlt_core: mAP, the four losses' recipes and BCE with DB's sampler, BCE as the
    baseline, the recipes as written under paper and quick, a smoke protocol digits_mlt accepts;
    no paper number."""
    suite = load_suite(SHIPPED)
    assert suite.metric.key == "mAP" and suite.baseline == "bce" and suite.references is None
    assert [(r.id, r.recipe.name) for r in suite.rows] == [
        (name, f"digits_{name}.yaml") for name in ("bce", "bce_cas", "focal", "cb", "db")]
    assert all(r.recipe.parent.resolve() == ML_RECIPE.parent for r in suite.rows)
    assert [s.id for s in suite.settings] == ["ratio20"]
    written = yaml.safe_load(ML_RECIPE.read_text())
    for protocol in ("paper", "quick"):
        run = Planner(suite, protocol, tmp_path / protocol).plan("bce", "ratio20", 0)
        assert run.epochs == [written["train"]["epochs"]], protocol
        assert run.recipe["schedule"]["warmup_epochs"] == written["schedule"]["warmup_epochs"]
        assert run.recipe["data"]["imbalance_ratio"] == written["data"]["imbalance_ratio"]
    smoke = Planner(suite, "smoke", tmp_path / "smoke").plan("bce", "ratio20", 0)
    assert smoke.epochs == [1] and smoke.recipe["data"]["num_train"] == 300
    from lttoolbox.registry import DATASETS

    DATASETS.build({k: v for k, v in smoke.recipe["data"].items()})  # no unknown key
    doc = collect(suite, Planner(suite, "paper", tmp_path / "paper"), References.empty(), [0],
                  {"bce"}, {"ratio20"})
    md = markdown(doc)
    assert "digits_mlt is synthetic" in md and "no paper reports a number" in md
    assert "| mAP | Head mAP | Medium mAP | Tail mAP | Δ mAP vs BCE |" in md


# ------------------------------------------------------------------------------ end to end
@pytest.mark.long
def test_a_multilabel_suite_end_to_end(tmp_path):
    """Two one-epoch runs of a mAP suite through ``lttrain``: the table's mAP columns are the
    runs' results.json, packed and merged into another folder they give the same table."""
    suite = ml_suite(tmp_path)
    out, home = tmp_path / "lb", tmp_path / "home"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "leaderboard.py"),
                          str(suite), "--protocol", "smoke", "--seeds", "0", "--no-plots",
                          "--out", str(out), "--pack", str(tmp_path / "r.tar.gz")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr  # the single-label row is refused
    assert re.search(r"asis/bce/seed0: done in [\d.]+ min, mAP \d+\.\d\d", run.stdout)
    md = (out / "leaderboard.md").read_text()
    for row, label in (("bce", "BCE"), ("db", "DB")):
        res = json.loads((out / "runs" / "asis" / row / "seed0" / "results.json").read_text())
        assert res["epochs"] == 1 and len(res["per_class_ap"]) == 10
        cells = [f"{res[k]:.2f}" if res[k] is not None else "—" for k in ("mAP", *GROUPS)]
        assert f"| {label} | 1 | 1 | {' | '.join(cells)} |" in md
    records = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    bce = json.loads((out / "runs" / "asis" / "bce" / "seed0" / "results.json").read_text())
    assert float(records[0]["mAP_mean"]) == bce["mAP"]
    code = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "leaderboard.py"),
                           str(suite), "--protocol", "smoke", "--seeds", "0", "--no-plots",
                           "--out", str(home), "--merge", str(tmp_path / "r.tar.gz"),
                           "--report-only"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert code.returncode in (0, 1), code.stderr
    merged = (home / "leaderboard.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| BCE") or ln.startswith("| DB")]
    for line in table:  # the same numbers; the wall time is not packed
        assert line.rsplit("|", 4)[0] in merged


def test_every_reference_source_is_described_in_the_guide():
    """docs/leaderboard_guide.md's sources table has a row for every source of the reference
    file (a number shown in a table must say where it comes from)."""
    import yaml

    sources = yaml.safe_load((ROOT / "benchmarks" / "reference_numbers.yaml").read_text())
    sources = sources["sources"]
    guide = (ROOT / "docs" / "leaderboard_guide.md").read_text()
    assert sources and [k for k in sources if f"| `{k}` |" not in guide] == []
