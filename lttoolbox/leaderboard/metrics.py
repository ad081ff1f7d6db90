"""The primary metric of a suite, and what every table reads for it.

A suite declares ``metric:`` (``top1`` by default, ``mAP`` for a multi-label suite). Every part
of the leaderboard that reads a number of a run (the report's columns, the Δ to the baseline,
the *best test epoch* column, the comparison with the paper, the CSV/JSON/Markdown columns, the
plots and the checks of a merged archive) takes it from the :class:`MetricSpec` of that name,
never from a branch on the name.

``top1`` is what a single-label run writes into ``results.json`` (``top1``, ``mean_class_acc``,
``many``/``medium``/``few``, ``ece``, ``per_class_acc``); ``mAP`` what a multi-label run writes
(``mAP``, ``head_mAP``/``medium_mAP``/``tail_mAP``, ``per_class_ap``;
:func:`lttoolbox.engine.evaluate.multilabel_metrics`, docs/multilabel.md).

Example:
    >>> spec = metric_spec("mAP")
    >>> spec.key, [c.key for c in spec.columns], spec.per_class
    ('mAP', ['head_mAP', 'medium_mAP', 'tail_mAP'], 'per_class_ap')
    >>> metric_spec("top1").numbers
    ('top1', 'mean_class_acc', 'many', 'medium', 'few', 'ece')
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Column:
    """A number of ``results.json`` shown as a column beside the primary metric."""

    key: str
    label: str


@dataclass(frozen=True)
class MetricSpec:
    """Everything the leaderboard reads and writes for one primary metric.

    Attributes:
        key: The ``results.json`` key (and the ``eval`` key of ``log.jsonl``); also the stem of
            its CSV columns (``top1_mean``, ``delta_top1_vs_baseline``, ``paper_top1``).
        label: Its column header (``Top-1``).
        name: How running text calls it (``Δ top-1 vs CE``, ``Paper top-1``).
        columns: The group columns shown beside it, in order.
        hidden: Further ``results.json`` numbers kept in the CSV/JSON but not in the table.
        per_class: The ``results.json`` list of per-class values the plots draw.
        per_class_axis: The per-class plot's y label.
        axis: The bar chart's y label.
        multilabel: Whether its runs are multi-label (a suite refuses a data set of the other
            kind before anything runs).
        reference_groups: Group numbers a reference entry may give besides the metric, as
            (``results.json`` key, reference-file key).
        unit: The header's sentence on units.
        split_unit: What ``test_class_counts`` counts per class.
        split_total: Whether the counts sum to the number of test images (not for multi-hot
            labels, where an image counts once per label).
        best_test_header: The header's note on the *best test epoch* column.
        best_test_note: The note under a table that shows it.
        paper_note: The note under the sources of the paper numbers.
    """

    key: str
    label: str
    name: str
    columns: tuple[Column, ...]
    hidden: tuple[str, ...]
    per_class: str
    per_class_axis: str
    axis: str
    multilabel: bool
    reference_groups: tuple[tuple[str, str], ...]
    unit: str
    split_unit: str
    split_total: bool
    best_test_header: str
    best_test_note: str
    paper_note: str

    @property
    def numbers(self) -> tuple[str, ...]:
        """Every number read per run: the metric, its columns, then the hidden ones."""
        return (self.key, *(c.key for c in self.columns), *self.hidden)

    @property
    def paper_label(self) -> str:
        return f"Paper {self.name}"


METRICS: dict[str, MetricSpec] = {spec.key: spec for spec in (
    MetricSpec(
        key="top1", label="Top-1", name="top-1",
        columns=(Column("mean_class_acc", "Mean/class"), Column("many", "Many"),
                 Column("medium", "Medium"), Column("few", "Few")),
        hidden=("ece",), per_class="per_class_acc",
        per_class_axis="per-class test accuracy (%), mean over seeds",
        axis="top-1 accuracy (%), final epoch", multilabel=False,
        reference_groups=(), unit="Accuracies in %", split_unit="images per class",
        split_total=True,
        best_test_header=" (the *Best test epoch* column is the papers' practice, shown beside "
                         "their numbers and labelled as such under its table)",
        best_test_note="§ *Best test epoch*: the highest test top-1 over the evaluated epochs "
                       "of the last phase (`eval.every`, read from `log.jsonl`) and the final "
                       "one; *of N*: the number of epochs compared (*of 1*: a last phase of no "
                       "epochs, such as tau-norm, is one model). This is the papers' practice "
                       "(the codes of LDAM-DRW and Bag of Tricks keep their best test-set epoch), "
                       "shown only to be read beside *Paper top-1*: it selects on the test set, "
                       "so it is not a valid model selection and not this table's result, which "
                       "is *Top-1* (the final epoch). Empty for runs without evaluated epochs.",
        paper_note="*Paper top-1* is 100 − the published top-1 error where the source prints "
                   "an error; *Paper Δ* is that number minus the baseline's number from the same "
                   "source and table."),
    MetricSpec(
        key="mAP", label="mAP", name="mAP",
        columns=(Column("head_mAP", "Head mAP"), Column("medium_mAP", "Medium mAP"),
                 Column("tail_mAP", "Tail mAP")),
        hidden=(), per_class="per_class_ap",
        per_class_axis="per-class test average precision (%), mean over seeds",
        axis="mAP (%), final epoch", multilabel=True,
        reference_groups=(("head_mAP", "head_map"), ("medium_mAP", "medium_map"),
                          ("tail_mAP", "tail_map")),
        unit="mAP and AP in % (head/medium/tail: the classes' training images against "
             "`eval.many_threshold` and `eval.few_threshold`, docs/multilabel.md)",
        split_unit="positive images per class", split_total=False,
        best_test_header=" (the *Best test epoch* column selects on the test set and is "
                         "labelled as such under its table)",
        best_test_note="§ *Best test epoch*: the highest test mAP over the evaluated epochs of "
                       "the last phase (`eval.every`, read from `log.jsonl`) and the final one; "
                       "*of N*: the number of epochs compared (*of 1*: a last phase of no "
                       "epochs is one model). It selects on the test set, so it "
                       "is not a valid model selection and not this table's result, which is "
                       "*mAP* (the final epoch). Empty for runs without evaluated epochs.",
        paper_note="*Paper mAP* is the published mean average precision; *Paper Δ* is that "
                   "number minus the baseline's number from the same source and table."),
)}

DEFAULT = "top1"


def metric_spec(name: str = DEFAULT, key: str = "metric") -> MetricSpec:
    """The spec of a metric name.

    Raises:
        ConfigError: an unknown name (``null`` too: a suite that says ``metric:`` names one),
            naming ``key``.
    """
    if not isinstance(name, str) or name not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}",
                          key=key)
    return METRICS[name]
