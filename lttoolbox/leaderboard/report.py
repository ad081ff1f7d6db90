"""Aggregate the runs' ``results.json`` into the leaderboard: ``leaderboard.{json,csv,md}``.

Per row and column: mean and sample standard deviation (``ddof=1``; none for a single seed) over
the seeds that finished with exactly the planned recipe, of the suite's metric and its group
columns (``top1``: top-1, mean per-class accuracy and the many/medium/few-shot accuracies;
``mAP``: mAP and the head/medium/tail mAP; :mod:`lttoolbox.leaderboard.metrics`); the difference
of the metric's mean to the suite's baseline row; the paper's number with its source; training
time, wall time and images/s. Every number is the final epoch's: ``lttrain`` never selects an
epoch on the test set, and neither does this. The examples below speak of top-1.

One column is the exception, and says so: for runs trained with ``eval.every``, whose
``log.jsonl`` holds test metrics of earlier epochs, the *best test epoch* column shows the highest
test top-1 over those epochs and the final one, which is how the papers' CIFAR numbers are
selected (LDAM-DRW's and Bag of Tricks' codes keep their best test-set epoch). It is there to be
read beside the paper's number, never as a result: choosing an epoch on the test set is not a
valid model selection.

The comparison with the paper depends on the protocol. Under ``paper`` it is the difference in
top-1 (ours minus the paper's, in points). Under any shortened protocol only the direction is
compared: whether the row beats the baseline here as it does in the paper (the paper's own
baseline of the same table).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable

from ..engine.provenance import git_commit
from ..errors import ConfigError
from ..rundir import RunDir, atomic_write_text
from ..upgrade import upgrade_record

from .metrics import MetricSpec, metric_spec
from .references import Reference, References
from .runner import matching_results, read_attempts, started_attempts
from .suite import Planner, Suite

METRICS = metric_spec("top1").numbers  # a top-1 suite's numbers (see csv_columns)
COSTS = ("train_seconds", "wall_seconds", "images_per_second")


def csv_columns(spec: MetricSpec) -> list[str]:
    """The CSV header of a suite of this metric (``paper_head_mAP``, ... for the reference
    groups a metric has)."""
    m = spec.key
    return [
        "suite", "protocol", "setting", "row", "label", "status", "n_seeds", "seeds", "epochs",
        "epochs_as_written", *[f"{n}_{s}" for n in spec.numbers for s in ("mean", "std")],
        f"delta_{m}_vs_baseline", f"best_test_{m}_mean", f"best_test_{m}_std",
        "best_test_evaluated_epochs", "best_test_n_seeds", f"paper_{m}",
        *[f"paper_{key}" for key, _ in spec.reference_groups], "paper_printed",
        "paper_approximate", "paper_source", "paper_table", "paper_delta_vs_baseline",
        "paper_delta_epochs", "direction_vs_paper", "difference_vs_paper",
        "train_seconds_mean", "wall_seconds_mean", "wall_seconds_lower_bound",
        "images_per_second_mean", "reason",
    ]


CSV_COLUMNS = csv_columns(metric_spec("top1"))


def stats(values: Iterable[float | None]) -> dict | None:
    """Mean and sample standard deviation (``ddof=1``; None for a single value) of the values
    that are not None.

    Example:
        >>> s = stats([70.0, 72.0, None])
        >>> s["mean"], round(s["std"], 4), s["n"]
        (71.0, 1.4142, 2)
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    mean = sum(vals) / len(vals)
    std = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
           if len(vals) > 1 else None)
    return {"mean": mean, "std": std, "n": len(vals), "values": vals}


def _data_key(recipe: dict) -> dict:
    data = recipe.get("data", {})
    return {"dataset": data.get("name"), "imbalance_type": data.get("imbalance_type"),
            "imbalance_ratio": data.get("imbalance_ratio")}


def _log_rows(run_dir: Path, results: dict) -> list[dict]:
    """The run's epochs: ``log.jsonl``, else the same rows in ``results.json``'s ``history``
    (rows written before phases were called so are read in today's spelling)."""
    try:
        text = (run_dir / RunDir.LOG).read_text()
    except OSError:
        return [r for r in results.get("history") or [] if isinstance(r, dict)]
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(upgrade_record(row))
    return rows


def best_test_epoch(run_dir: Path, results: dict, metric: str = "top1") -> dict | None:
    """The papers' practice: the best test top-1 (or the suite's ``metric``) over the evaluated
    epochs of the last phase.

    ``eval.every`` logs test metrics under ``eval`` in the epoch rows of ``log.jsonl``; the last
    epoch is not among them (its evaluation is ``results.json`` itself), so the final result is
    one of the candidates. Only the last phase counts: an earlier phase trained another model (a
    cRT run's joint phase is not a cRT model). A selection on the test set: never a result.

    A last phase of no epochs (tau-norm: a post-hoc change of the classifier) has one model,
    evaluated once: its best test epoch is the final result, *of 1*, when the run evaluated its
    epochs at all (``eval.every``), so that the column is not left empty for it alone.

    Returns:
        None when the last phase has no evaluated epoch in the log (and is not such a post-hoc
        phase of an evaluated run), else ``top1`` (the ``metric``'s name), ``epoch`` (0-based,
        in the phase; None for a post-hoc phase), ``evaluated`` (epochs compared, the final one
        included) and ``phase``.

    Example:
        >>> import tempfile
        >>> rows = [{"phase": "main", "epoch": 0, "eval": {"top1": 50.0}},
        ...         {"phase": "main", "epoch": 1, "eval": {"top1": 64.0}},
        ...         {"phase": "main", "epoch": 2}]
        >>> res = {"top1": 61.0, "phases": [{"name": "main", "epochs": 3}], "history": rows}
        >>> best_test_epoch(Path(tempfile.mkdtemp()), res)
        {'top1': 64.0, 'epoch': 1, 'evaluated': 3, 'phase': 'main'}
    """
    phases = [s for s in results.get("phases") or [] if isinstance(s, dict)]
    phase = phases[-1].get("name") if phases else None
    last = phases[-1].get("epochs") if phases else None
    evaluated, any_phase = [], False
    for row in _log_rows(run_dir, results):
        ev = row.get("eval")
        value = ev.get(metric) if isinstance(ev, dict) else None
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)):
            continue
        any_phase = True
        if phase is None or row.get("phase") == phase:
            evaluated.append((float(value), row.get("epoch")))
    if not evaluated:
        if last == 0 and any_phase:
            return {metric: float(results[metric]), "epoch": None, "evaluated": 1,
                    "phase": phase}
        return None
    final = (float(results[metric]), last - 1 if isinstance(last, int) and last > 0 else None)
    value, epoch = max(evaluated + [final], key=lambda c: c[0])  # the first best on a tie
    return {metric: value, "epoch": epoch, "evaluated": len(evaluated) + 1, "phase": phase}


def _best_test_doc(runs: list[dict], metric: str) -> dict | None:
    best = [r for r in runs if r.get("best_test")]
    if not best:
        return None
    return {metric: stats(r["best_test"][metric] for r in best),
            "evaluated_epochs": sorted({r["best_test"]["evaluated"] for r in best}),
            "n": len(best),
            "seeds": [{"seed": r["seed"], **r["best_test"]} for r in best]}


def _mean_per_class(results: list[dict], key: str = "per_class_acc") -> list[float | None]:
    if not results:
        return []
    width = max(len(r.get(key) or []) for r in results)
    out = []
    for c in range(width):
        s = stats((r.get(key) or [None] * width)[c] for r in results)
        out.append(s["mean"] if s else None)
    return out


def _reference_dict(ref: Reference | None, base: Reference | None,
                    spec: MetricSpec) -> dict | None:
    """The paper's number under the metric's name (``top1``, ``delta_top1``, ...), with the
    groups the metric has (``head_mAP``, ...; None where the source gives none)."""
    if ref is None:
        return None
    m, groups = spec.key, dict(ref.groups)
    doc = {m: ref.value, **{key: groups.get(key) for key, _ in spec.reference_groups},
           "printed": ref.printed, "approximate": ref.approximate,
           "source": ref.source, "paper": ref.paper, "table": ref.table, "url": ref.url,
           "note": ref.note, "selection": ref.selection,
           "baseline_table": base.table if base else None,
           f"baseline_{m}": base.value if base else None,
           f"delta_{m}": ref.value - base.value if base else None}
    if ref.final_epoch:  # only where it is so: a top-1 table's record stays as it was
        doc["final_epoch"] = True
    return doc


def phase_costs(results: list[dict]) -> list[dict]:
    """Per-phase costs of a multi-phase row over its seeds (empty for a single phase).

    Each phase's training time is the sum of its epochs' ``seconds`` in the run's ``history``
    (so it counts every checkpointed epoch, resumed or not); ``generation_seconds`` is the time a
    component took to grow the training set at the phase's start (``phases[i].generated``), kept
    apart because no epoch contains it. Runs whose phase names differ from the first run's are
    left out rather than mixed.

    Example:
        >>> run = {"phases": [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 2,
        ...        "generated": {"images": 7, "seconds": 3.0}}],
        ...        "history": [{"phase": "a", "seconds": 10.0}, {"phase": "b", "seconds": 4.0},
        ...                    {"phase": "b", "seconds": 6.0}]}
        >>> [(s["name"], s["train_seconds"]["mean"]) for s in phase_costs([run])]
        [('a', 10.0), ('b', 10.0)]
    """
    if not results:
        return []
    names = [s.get("name") for s in results[0].get("phases") or []]
    if len(names) < 2:
        return []
    runs = [r for r in results if [s.get("name") for s in r.get("phases") or []] == names]
    out = []
    for i, name in enumerate(names):
        generated = [r["phases"][i].get("generated") or {} for r in runs]
        out.append({
            "name": name,
            "epochs": runs[0]["phases"][i].get("epochs"),
            "train_seconds": stats(sum(h.get("seconds") or 0.0 for h in r.get("history") or []
                                       if h.get("phase") == name) for r in runs),
            "generated_images": stats(g.get("images") for g in generated),
            "generation_seconds": stats(g.get("seconds") for g in generated),
        })
    return out


def choices(runs: list[dict], results: list[dict]) -> list[str]:
    """The post-hoc choices each run made (``results.json``'s ``selection``: tau-norm's tau,
    ...), one line per component and seed, without the grids they were chosen from.

    Example:
        >>> choices([{"seed": 0}], [{"selection": {"tau_norm": {"tau": 1.2, "grid": [],
        ...     "chosen_on": "validation split (top-1)"}}}])
        ['tau_norm: tau 1.2, seed 0, chosen on validation split (top-1)']
    """
    out = []
    for run, res in zip(runs, results):
        for name, choice in sorted((res.get("selection") or {}).items()):
            values = ", ".join(f"{k} {v}" for k, v in choice.items()
                               if k not in ("grid", "chosen_on"))
            where = f", chosen on {choice['chosen_on']}" if choice.get("chosen_on") else ""
            out.append(f"{name}: {values}, seed {run['seed']}{where}")
    return out


def collect(suite: Suite, planner: Planner, refs: References, seeds_requested: list[int],
            selected_rows: set[str], selected_settings: set[str]) -> dict:
    """Build the leaderboard document from what is on disk.

    Args:
        suite: The suite.
        planner: Plans (and caches) each run's recipe, so matches are checked against the plan.
        refs: Reference numbers.
        seeds_requested: The seeds asked for in this invocation.
        selected_rows: Rows this invocation was asked to run (their missing seeds are "pending").
        selected_settings: Settings this invocation was asked to run.
    """
    protocol = planner.protocol
    proto = suite.protocol(protocol)
    spec = suite.metric
    machines: dict[str, dict] = {}
    precision: dict[str, set] = {}
    commits, finished, warnings = set(), [], []
    settings_doc = []
    for setting in suite.settings:
        rows_doc, test_counts = [], []
        data_key = None
        for row in suite.rows:  # the data set of this column, for the reference numbers
            if row.available and row.runs_in(setting.id):
                plan = planner.plan(row.id, setting.id, seeds_requested[0])
                if not isinstance(plan, ConfigError):
                    data_key = _data_key(plan.recipe)
                    if row.id == suite.baseline:
                        break
        for row in suite.rows:
            if not row.runs_in(setting.id):
                continue
            doc: dict[str, Any] = {"id": row.id, "label": row.label,
                                   "recipe": str(row.recipe) if row.recipe else None,
                                   "note": row.note}
            method = row.reference or row.id
            ref = base_ref = None
            if data_key:
                ref = refs.lookup(method, data_key["dataset"], data_key["imbalance_type"],
                                  data_key["imbalance_ratio"], suite.reference_priority,
                                  spec.key)
                if ref is not None and suite.baseline:
                    base_method = suite.row(suite.baseline).reference or suite.baseline
                    base_ref = refs.baseline_for(ref, base_method)
            doc["paper"] = _reference_dict(ref, base_ref, spec)
            doc["epochs"] = _epochs_doc(planner.plan(row.id, setting.id, seeds_requested[0])
                                        if row.available else None)
            reason = row.unavailable_reason
            if reason:
                doc.update(status="not available", reason=reason, n=0, seeds=[])
                rows_doc.append(doc)
                continue
            wanted = set(seeds_requested) if (row.id in selected_rows
                                              and setting.id in selected_settings) else set()
            seeds = sorted(wanted | set(planner.seeds_on_disk(row.id, setting.id)))
            done, runs, failures, pending, invalid = [], [], [], [], None
            for seed in seeds:
                plan = planner.plan(row.id, setting.id, seed)
                if isinstance(plan, ConfigError):
                    invalid = str(plan)
                    continue
                warnings += [f"{row.id}/{setting.id}: {w}" for w in plan.warnings
                             if f"{row.id}/{setting.id}: {w}" not in warnings]
                results = matching_results(plan, protocol)
                recorded = read_attempts(plan.dir)
                attempts = [a for a in recorded if a.get("recipe_hash") == plan.hash]
                wall = sum(a.get("wall_seconds") or 0.0 for a in attempts) or None
                wall_complete = started_attempts(plan.dir) <= len(recorded)
                if results is not None:
                    done.append(results)
                    if results.get("test_class_counts"):
                        test_counts.append(results["test_class_counts"])
                    device = str((results.get("machine") or {}).get("device", ""))
                    precision.setdefault(_precision(plan.recipe, device), set()).add(row.label)
                    runs.append({"seed": seed, "dir": str(plan.dir), "recipe_hash": plan.hash,
                                 "finished": results.get("finished"),
                                 "commit": results.get("commit"), "wall_seconds": wall,
                                 "wall_complete": wall_complete,
                                 "best_test": best_test_epoch(plan.dir, results, spec.key)})
                    machine = dict(results.get("machine") or {})
                    # Threads differ with --jobs; the machine does not.
                    threads = machine.pop("torch_threads", None)
                    entry = machines.setdefault(json.dumps(machine, sort_keys=True),
                                                {**machine, "torch_threads": []})
                    if threads is not None and threads not in entry["torch_threads"]:
                        entry["torch_threads"].append(threads)
                    # every commit a run trained on (several when it was resumed on another)
                    commits.update(c for c in results.get("commits") or [results.get("commit")]
                                   if c)
                    if results.get("finished"):
                        finished.append(results["finished"])
                elif attempts and attempts[-1].get("error"):
                    failures.append({"seed": seed, "dir": str(plan.dir),
                                     "returncode": attempts[-1].get("returncode"),
                                     "error": attempts[-1]["error"]})
                elif seed in wanted:
                    pending.append(seed)
            doc["seeds"] = [r["seed"] for r in runs]
            doc["n"] = len(done)
            doc["metrics"] = {m: stats(r.get(m) for r in done) for m in spec.numbers}
            doc["best_test"] = _best_test_doc(runs, spec.key)
            doc["costs"] = {
                "train_seconds": stats(r.get("seconds") for r in done),
                "wall_seconds": stats(r["wall_seconds"] for r in runs),
                "wall_seconds_lower_bound": not all(r["wall_complete"] for r in runs),
                "images_per_second": stats(r.get("images_per_second") for r in done)}
            doc["phases"] = phase_costs(done)
            doc["choices"] = choices(runs, done)
            doc[spec.per_class] = _mean_per_class(done, spec.per_class)
            doc["train_class_counts"] = (done[0].get("train_class_counts") if done else None)
            doc["class_names"] = (done[0].get("class_names") if done else None)
            doc["runs"], doc["failures"], doc["pending_seeds"] = runs, failures, pending
            if invalid and not done:
                doc.update(status="invalid recipe", reason=invalid)
            elif done and (failures or pending):
                doc["status"] = "partial"
            elif done:
                doc["status"] = "done"
            elif failures:
                doc.update(status="failed", reason=failures[-1]["error"])
            else:
                doc["status"] = "pending"
            rows_doc.append(doc)
        _add_comparisons(rows_doc, suite.baseline, protocol, spec.key)
        settings_doc.append({"id": setting.id, "label": setting.label, "data": data_key,
                             "test_split": _test_split(test_counts), "rows": rows_doc})
    return {
        "suite": suite.name, "title": suite.title, "suite_file": str(suite.path),
        "metric": spec.key,
        "protocol": {"name": protocol, **{k: v for k, v in proto.items() if k != "overlay"},
                     "overlay": proto["overlay"]},
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "generated_at_commit": git_commit(),
        "run_commits": sorted(commits),
        "machines": list(machines.values()),
        "finished_range": [min(finished), max(finished)] if finished else None,
        "seeds_requested": list(seeds_requested),
        "overrides": list(planner.extra_overrides),
        "baseline": suite.baseline,
        "notes": suite.notes,
        "warnings": warnings,
        "precision": {k: sorted(v) for k, v in precision.items()},
        "settings": settings_doc,
    }


def _test_split(counts: list[list[int]]) -> dict | None:
    """The test split the finished runs of a column evaluated on (``results.json``'s
    ``test_class_counts``), so the table states what was measured rather than what the data set
    holds in full (the smoke protocol caps it).

    Example:
        >>> _test_split([[20, 20, 20], [20, 20, 20]])
        {'classes': [3], 'per_class': [20, 20], 'images': [60, 60], 'runs': 2}
    """
    if not counts:
        return None
    per_class = [c for run in counts for c in run]
    return {"classes": sorted({len(run) for run in counts}),
            "per_class": [min(per_class), max(per_class)],
            "images": [min(sum(run) for run in counts), max(sum(run) for run in counts)],
            "runs": len(counts)}


def _epochs_doc(plan) -> dict | None:
    """A row's training budget: the epochs of each phase as run under this protocol, and as the
    recipe writes them (the budget its paper trained, which the paper's Δ compares)."""
    if plan is None or isinstance(plan, ConfigError):
        return None
    return {"phases": plan.epochs, "total": sum(plan.epochs),
            "written_phases": plan.written_epochs, "written_total": sum(plan.written_epochs)}


def _precision(recipe: dict, device: str) -> str:
    """What ``train.amp`` meant for a run on ``device`` (the trainer's ``auto`` rule)."""
    amps = {s["train"]["amp"] for s in (recipe.get("phases") or [recipe])}
    amps.add(recipe["train"]["amp"])
    on_cuda = device.startswith("cuda")
    names = set()
    for amp in amps:
        if amp == "auto":
            names.add("bf16/fp16 autocast (auto on CUDA)" if on_cuda else "fp32")
        elif amp == "off":
            names.add("fp32")
        else:
            names.add(f"{amp} autocast")
    return " + ".join(sorted(names))


def _add_comparisons(rows: list[dict], baseline: str | None, protocol: str,
                     metric: str = "top1") -> None:
    """Δ of ``metric`` to the baseline and the verdict against the paper, per row.

    A direction is flagged ``unequal_budgets`` when the paper's Δ compares recipes of different
    lengths (their epochs summed over phases, as the recipes write them: input mixup's 400 with
    CE's 200): part of that Δ is the longer training, so agreeing or not with it says little
    about the trick alone. ``budgets`` keeps both pairs, the paper's and this run's.
    """
    delta = f"delta_{metric}"
    base = next((r for r in rows if r["id"] == baseline), None)
    base_value = ((base or {}).get("metrics") or {}).get(metric)
    base_epochs = (base or {}).get("epochs")
    for row in rows:
        value = (row.get("metrics") or {}).get(metric)
        row[delta] = (value["mean"] - base_value["mean"]
                      if value and base_value and row is not base else None)
        paper = row.get("paper")
        cmp: dict[str, Any] = {"difference": None, "direction": None, "unequal_budgets": False,
                               "budgets": None}
        epochs = row.get("epochs")
        if epochs and base_epochs and row is not base:
            cmp["budgets"] = {"paper": [epochs["written_total"], base_epochs["written_total"]],
                              "here": [epochs["total"], base_epochs["total"]]}
        if paper and value:
            if protocol == "paper":
                cmp["difference"] = value["mean"] - paper[metric]
            if row[delta] is not None and paper.get(delta) is not None and row is not base:
                if row[delta] == 0.0 or paper[delta] == 0.0:
                    cmp["direction"] = "no change"
                else:
                    same = (row[delta] > 0) == (paper[delta] > 0)
                    cmp["direction"] = "same" if same else "opposite"
                budgets = cmp["budgets"]
                cmp["unequal_budgets"] = bool(budgets and budgets["paper"][0]
                                              != budgets["paper"][1])
        row["vs_paper"] = cmp


# ------------------------------------------------------------------------------------ writers
def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _direction(value: str | None) -> str:
    return {"same": "same direction", "opposite": "opposite direction",
            "no change": "no change here"}.get(value or "", "")


def _phases(epochs: list[int] | None) -> str:
    """Epochs per phase: ``60``, or ``30+4`` for two phases."""
    return "+".join(str(e) for e in epochs) if epochs else ""


def _verdict(cmp: dict) -> str:
    """The direction as a CSV value: ``opposite (unequal budgets)`` when flagged."""
    direction = cmp.get("direction") or ""
    return f"{direction} (unequal budgets)" if direction and cmp.get("unequal_budgets") \
        else direction


def _minutes(s: dict | None) -> str:
    return f"{s['mean'] / 60:.1f}" if s else ""


def _best_cell(row: dict, metric: str = "top1") -> str:
    """``74.10 ± 0.31 (of 200)``: the best test epoch's top-1 (``metric``) and how many epochs
    it is the best of; the seeds it covers when fewer than the row's."""
    best = row.get("best_test")
    if not best:
        return ""
    counts = best["evaluated_epochs"]
    of = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    seeds = f"; {best['n']} of {row['n']} seeds" if best["n"] != row.get("n") else ""
    return f"{_fmt_stat(best[metric])} (of {of}{seeds})"


def _fmt_stat(s: dict | None) -> str:
    if not s:
        return "—"
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s.get("std") is not None else f"{s['mean']:.2f}"


def _spec(doc: dict) -> MetricSpec:
    """The metric of a leaderboard document (one written before suites declared theirs: top1)."""
    return metric_spec(doc.get("metric", "top1"))


def csv_rows(doc: dict) -> list[dict]:
    """One flat record per (setting, row)."""
    spec = _spec(doc)
    m = spec.key
    out = []
    for setting in doc["settings"]:
        for row in setting["rows"]:
            rec = {c: "" for c in csv_columns(spec)}
            metrics = row.get("metrics") or {}
            costs = row.get("costs") or {}
            paper = row.get("paper") or {}
            cmp = row.get("vs_paper") or {}
            rec.update(suite=doc["suite"], protocol=doc["protocol"]["name"], setting=setting["id"],
                       row=row["id"], label=row["label"], status=row["status"], n_seeds=row["n"],
                       seeds=" ".join(str(s) for s in row.get("seeds", [])),
                       epochs=_phases((row.get("epochs") or {}).get("phases")),
                       epochs_as_written=_phases((row.get("epochs") or {}).get("written_phases")),
                       reason=row.get("reason") or "")
            for n in spec.numbers:
                s = metrics.get(n)
                rec[f"{n}_mean"] = _num(s["mean"]) if s else ""
                rec[f"{n}_std"] = _num(s["std"]) if s and s["std"] is not None else ""
            rec[f"delta_{m}_vs_baseline"] = _num(row.get(f"delta_{m}"))
            best = row.get("best_test")
            if best:
                rec.update({f"best_test_{m}_mean": _num(best[m]["mean"]),
                            f"best_test_{m}_std": _num(best[m]["std"]),
                            "best_test_evaluated_epochs": " ".join(
                                str(n) for n in best["evaluated_epochs"]),
                            "best_test_n_seeds": best["n"]})
            if paper:
                rec.update({f"paper_{m}": _num(paper[m]),
                            **{f"paper_{k}": _num(paper.get(k)) for k, _ in
                               spec.reference_groups}})
                rec.update(paper_printed=paper["printed"],
                           paper_approximate=str(paper["approximate"]).lower(),
                           paper_source=paper["paper"], paper_table=paper["table"],
                           paper_delta_vs_baseline=_num(paper.get(f"delta_{m}")))
            if cmp.get("direction") and cmp.get("budgets"):
                rec["paper_delta_epochs"] = "{} vs {}".format(*cmp["budgets"]["paper"])
            rec["direction_vs_paper"] = _verdict(cmp)
            rec["difference_vs_paper"] = _num(cmp.get("difference"))
            for c in COSTS:
                s = costs.get(c)
                rec[f"{c}_mean"] = _num(s["mean"]) if s else ""
            if costs.get("wall_seconds"):
                rec["wall_seconds_lower_bound"] = str(
                    bool(costs.get("wall_seconds_lower_bound"))).lower()
            out.append(rec)
    return out


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def write_csv(doc: dict, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(_spec(doc)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(doc))
    atomic_write_text(path, buf.getvalue())


def _machine_line(m: dict) -> str:
    parts = [f"device {m.get('device', '?')}"]
    if m.get("gpu"):
        parts.append(m["gpu"])
    if m.get("cpu"):
        threads = "/".join(str(t) for t in sorted(m.get("torch_threads") or []))
        parts.append(f"{m['cpu']} ({m.get('cpu_count', '?')} cores"
                     + (f", {threads} torch threads per run" if threads else "") + ")")
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    if m.get("platform"):
        parts.append(m["platform"])
    return ", ".join(parts)


def _machine_name(m: dict) -> str:
    """A machine in a few words: its GPU, else its CPU model and cores."""
    if m.get("gpu"):
        return f"{m['gpu']} ({m.get('device', 'cuda')})"
    cpu = m.get("cpu") or "an unnamed CPU"
    return f"{cpu} ({m.get('cpu_count', '?')} cores)"


def _split_line(split: dict | None, spec: MetricSpec | None = None) -> str | None:
    """The column's test split as measured: ``Test split of the 3 finished runs: 1,000 images per
    class, 10 classes (10,000 images).`` A multi-label split counts the positive images of each
    class, which do not sum to the number of images."""
    if not split:
        return None
    spec = spec or metric_spec("top1")
    lo, hi = split["per_class"]
    per = f"{lo:,} {spec.split_unit}" if lo == hi else f"{lo:,} to {hi:,} {spec.split_unit}"
    classes = "/".join(str(c) for c in split["classes"])
    images = "/".join(f"{n:,}" for n in sorted(set(split["images"])))
    runs = split["runs"]
    return (f"Test split of the {runs} finished run{'s' if runs != 1 else ''} "
            f"(`results.json`'s `test_class_counts`): {per}, {classes} classes"
            + (f" ({images} images)." if spec.split_total else "."))


def _phase_table(rows: list[dict]) -> list[str]:
    """The phase timings of the multi-phase rows, one line per phase."""
    phased = [r for r in rows if r.get("phases")]
    if not phased:
        return []
    lines = ["", "Phase timings of the multi-phase rows (mean over the finished seeds; *Train min* "
             "sums the phase's epochs, *Generation s* is the time spent growing the training set "
             "before the phase's first epoch):", "",
             "| Method | Phase | Epochs | Train min | Generated images | Generation s |",
             "|" + "---|" * 6]
    for row in phased:
        for i, phase in enumerate(row["phases"]):
            images, gen = phase.get("generated_images"), phase.get("generation_seconds")
            lines.append(f"| {row['label'] if i == 0 else ''} | {phase['name']} | "
                         f"{phase.get('epochs', '')} | {_minutes(phase.get('train_seconds'))} | "
                         f"{format(images['mean'], ',.0f') if images else ''} | "
                         f"{_fmt(gen['mean'], 1) if gen else ''} |")
    return lines


def _selections(how: dict[str, set[int]]) -> str:
    """``[1], [3]: best test-set epoch ...; [2]: ...``: each source's selection, by footnote."""
    return "; ".join(f"{', '.join(f'[{m}]' for m in sorted(marks))}: {text.rstrip('.')}"
                     for text, marks in sorted(how.items(), key=lambda kv: min(kv[1])))


def _table_line(with_paper: bool, cells: list[str], paper: list[str]) -> str:
    """One line of a setting's table: ``paper`` (the three paper cells) goes in before the last
    three cells (the costs) when the setting shows paper columns."""
    return "| " + " | ".join(cells[:-3] + paper * with_paper + cells[-3:]) + " |"


def markdown(doc: dict, plots: dict[str, list[str]] | None = None) -> str:
    """The leaderboard as Markdown: provenance, caveats, one table per setting, sources."""
    proto = doc["protocol"]
    spec = _spec(doc)
    m_key = spec.key
    lines = [f"# Leaderboard: {doc['title']}", "",
             f"- **Protocol: `{proto['name']}`** — {proto.get('description', '')}."]
    if proto.get("caveat"):
        lines.append(f"- **{proto['caveat']}**")
    any_best = any(r.get("best_test") for s in doc["settings"] for r in s["rows"])
    lines.append("- Final-epoch numbers only: no epoch or checkpoint is ever selected on the test "
                 "set" + (spec.best_test_header if any_best else "") + f". {spec.unit}, "
                 "mean ± sample standard deviation over seeds (no ± with one seed).")
    for note in doc.get("notes") or []:
        lines.append(f"- {note}")
    if doc.get("overrides"):
        lines.append("- Overrides applied to every run: "
                     + ", ".join(f"`{o}`" for o in doc["overrides"]) + ".")
    precision = doc.get("precision") or {}
    if len(precision) == 1:
        lines.append(f"- Precision: {next(iter(precision))} for every run.")
    elif precision:
        lines.append("- Precision: " + "; ".join(f"{k} for {', '.join(v)}"
                                              for k, v in sorted(precision.items())) + ".")
    if doc.get("command"):
        lines.append(f"- Command (last invocation): `{doc['command']}`.")
    machines = doc.get("machines") or []
    if machines:
        lines.append("- Machine: " + "; ".join(_machine_line(m) for m in machines) + ".")
        lines.append("- Timing: *Train min*, *Wall min* and *img/s* are wall-clock times measured "
                     "on " + " and ".join(_machine_name(m) for m in machines) + "; they also "
                     "count any time the machine gave to other work or was suspended, so on a "
                     "shared machine they overstate the training cost. docs/throughput.md has "
                     "step rates measured in one process.")
    commits = doc.get("run_commits") or []
    lines.append(f"- Commit of the runs: {', '.join(f'`{c}`' for c in commits) or 'unknown'}; "
                 f"table written at commit `{doc.get('generated_at_commit') or 'unknown'}` on "
                 f"{doc['generated']}"
                 + (f"; runs finished {doc['finished_range'][0]} to {doc['finished_range'][1]}"
                    if doc.get("finished_range") else "") + ".")
    lines.append(f"- Seeds asked for in the last invocation: "
                 f"{' '.join(str(s) for s in doc['seeds_requested'])}; the *Seeds* column counts "
                 f"the finished runs of each cell.")
    lines.append(f"- Suite: `{doc['suite_file']}`; baseline row: `{doc.get('baseline')}`.")
    for w in doc.get("warnings") or []:
        lines.append(f"- Warning: {w}")
    footnotes: dict[tuple, int] = {}
    sources: dict[tuple, dict] = {}
    base_label = next((r["label"] for s in doc["settings"] for r in s["rows"]
                       if r["id"] == doc.get("baseline")), "baseline")
    for setting in doc["settings"]:
        data = setting.get("data") or {}
        what = ", ".join(f"{k} {v}" for k, v in data.items() if v is not None)
        lines += ["", f"## {setting['label']}" + (f" ({what})" if what else ""), ""]
        split = _split_line(setting.get("test_split"), spec)
        if split:
            lines += [split, ""]
        vs_head = ("vs paper (ours − paper)" if proto["name"] == "paper"
                   else "vs paper (direction)")
        with_best = any(r.get("best_test") for r in setting["rows"])
        # a setting no source reports (no reference numbers for any row) gets no paper columns
        with_paper = any(r.get("paper") for r in setting["rows"])
        head = ["Method", "Seeds", "Epochs", spec.label, *(c.label for c in spec.columns),
                f"Δ {spec.name} vs {base_label}", *(["Best test epoch §"] * with_best),
                *([spec.paper_label, "Paper Δ", vs_head] * with_paper),
                "Train min", "Wall min", "img/s"]

        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        problems, wall_bounds, wall_missing, shown, unequal, final = [], False, False, {}, [], {}
        for row in setting["rows"]:
            epochs = _phases((row.get("epochs") or {}).get("phases"))
            paper = row.get("paper")
            paper_cell = paper_delta = ""
            if paper:
                key = (paper["paper"], paper["table"])
                mark = footnotes.setdefault(key, len(footnotes) + 1)
                sources[key] = paper
                # a source that reports its final epoch is listed apart from the best-epoch ones
                (final if paper.get("final_epoch") else shown).setdefault(
                    paper.get("selection") or "not stated by the source", set()).add(mark)
                paper_cell = f"{'≈' if paper['approximate'] else ''}{paper[m_key]:.2f} [{mark}]"
                if row["id"] != doc.get("baseline"):
                    paper_delta = _fmt(paper.get(f"delta_{m_key}"), signed=True)
            status = row["status"]
            if status in ("not available", "invalid recipe", "failed", "pending"):
                text = {"not available": f"*{row.get('reason')}*",
                        "invalid recipe": "*invalid recipe* (see below)",
                        "failed": "*failed* (see below)", "pending": "*pending*"}[status]
                if status in ("invalid recipe", "failed"):
                    problems.append(f"- {row['label']}: {row.get('reason')}")
                lines.append(_table_line(
                    with_paper, [row["label"], "0", epochs, text,
                                 *[""] * (len(spec.columns) + 1 + with_best), "", "", ""],
                    [paper_cell, paper_delta, ""]))
                continue
            m, c, cmp = row["metrics"], row["costs"], row.get("vs_paper") or {}
            if proto["name"] == "paper" and cmp.get("difference") is not None:
                vs = f"{cmp['difference']:+.2f}"
                if cmp.get("direction"):
                    vs += f", {_direction(cmp['direction'])}"
            else:
                vs = _direction(cmp.get("direction"))
            if cmp.get("unequal_budgets"):
                # not a verdict on the trick: the paper's Δ includes the longer training
                vs += " ‡"
                paper_b, here_b = cmp["budgets"]["paper"], cmp["budgets"]["here"]
                unequal.append(f"{row['label']} {paper_b[0]} vs {paper_b[1]}"
                               + (f" (here {here_b[0]} vs {here_b[1]})"
                                  if here_b != paper_b else ""))
            elif cmp.get("direction") == "opposite":
                vs = f"**{vs}**"
            wall = _minutes(c.get("wall_seconds"))
            if wall and c.get("wall_seconds_lower_bound"):
                wall, wall_bounds = f"≥{wall}", True
            wall_missing = wall_missing or not wall
            seeds = str(row["n"])
            if status == "partial":
                seeds += "*"
                for f in row.get("failures", []):
                    problems.append(f"- {row['label']}, seed {f['seed']}: {f['error']}")
                if row.get("pending_seeds"):
                    problems.append(f"- {row['label']}: seeds "
                                    f"{' '.join(map(str, row['pending_seeds']))} still pending")
            lines.append(_table_line(
                with_paper,
                [row["label"], seeds, str(epochs), _fmt_stat(m.get(m_key)),
                 *(_fmt_stat(m.get(col.key)) for col in spec.columns),
                 _fmt(row.get(f"delta_{m_key}"), signed=True),
                 *([_best_cell(row, m_key)] * with_best), _minutes(c.get("train_seconds")),
                 wall, _fmt((c.get("images_per_second") or {}).get("mean"), 0)],
                [paper_cell, paper_delta, vs]))
        if problems:
            lines += ["", "Failures and gaps (* in *Seeds*):", ""] + problems
        if with_best:
            lines += ["", spec.best_test_note]
        if unequal:
            lines += ["", f"‡ Unequal budgets: the paper's Δ compares recipes of different "
                      f"lengths (epochs summed over phases, row vs {base_label}: "
                      + "; ".join(unequal) + "), so part of it is the longer training; the "
                      "direction beside it is no verdict on the trick alone."]
        if wall_bounds:
            lines += ["", "≥ in *Wall min*: an attempt of that run was stopped without its time "
                      "being recorded (the leaderboard process itself was killed), so the wall "
                      "time is a lower bound; *Train min* sums the time of every checkpointed "
                      "epoch."]
        if wall_missing:
            lines += ["", "A blank *Wall min* beside a finished row: no runner record of its "
                      "attempts exists (it was trained outside the leaderboard, or merged from "
                      "an archive written before archives carried that record); *Train min* "
                      "comes from the run's own results.json."]
        if shown:
            lines += ["", f"*{spec.paper_label}* is not a final-epoch number: "
                      + _selections(shown) + ". This table's own numbers are final-epoch."]
        if final:
            lines += ["", f"*{spec.paper_label}* is a final-epoch number, as this table's own: "
                      + _selections(final) + "."]
        lines += _phase_table(setting["rows"])
        picked = [f"- {r['label']}: {c}" for r in setting["rows"] for c in r.get("choices") or []]
        if picked:
            lines += ["", "Post-hoc choices (never made on the test set; the grids are in each "
                      "run's results.json):", ""] + picked
        notes = [f"- {r['label']}: {r['note']}" for r in setting["rows"] if r.get("note")]
        if notes:
            lines += ["", "Notes:", ""] + notes
        for name in (plots or {}).get(setting["id"], []):
            lines += ["", f"![{setting['label']}: {Path(name).stem}]({name})"]
    for text in doc.get("appendix") or []:  # --appendix: as given, before the sources
        lines += ["", text]
    if footnotes:
        lines += ["", "## Sources of the paper numbers", ""]
        for (paper, table), mark in sorted(footnotes.items(), key=lambda kv: kv[1]):
            url = sources[(paper, table)].get("url")
            lines.append(f"{mark}. {paper} — {table}." + (f" <{url}>" if url else ""))
        lines += ["", spec.paper_note]
    if doc.get("plots_note"):
        lines += ["", doc["plots_note"]]
    return "\n".join(lines) + "\n"


def write_all(doc: dict, out: Path, plots: dict[str, list[str]] | None = None) -> list[Path]:
    """Write ``leaderboard.json``, ``.csv`` and ``.md`` into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "leaderboard.json", out / "leaderboard.csv", out / "leaderboard.md"]
    atomic_write_text(paths[0], json.dumps(doc, indent=2, default=str) + "\n")
    write_csv(doc, paths[1])
    atomic_write_text(paths[2], markdown(doc, plots))
    return paths
