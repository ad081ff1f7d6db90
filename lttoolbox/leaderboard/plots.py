"""Optional PNG plots of a leaderboard (matplotlib: ``pip install -e .[plot]``).

Per setting: per-class accuracy against the class's training count for every finished row, and a
bar chart of the rows' top-1 (mean ± standard deviation over seeds, the baseline as a line, and the
paper's top-1 as a marker under the ``paper`` protocol only, where values are comparable). A
suite of another metric draws that metric instead (``mAP``: per-class average precision, and the
bars in ``<setting>_mAP.png``).
"""
from __future__ import annotations

from pathlib import Path

from .metrics import metric_spec


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(doc: dict, out: Path) -> dict[str, list[str]]:
    """Write the PNGs under ``out/plots``; returns setting id -> paths relative to ``out``.

    Raises:
        ImportError: matplotlib is not installed (check :func:`available` first).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = metric_spec(doc.get("metric", "top1"))
    key = spec.key
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    for setting in doc["settings"]:
        rows = [r for r in setting["rows"] if r.get("n")]
        if not rows:
            continue
        names = []
        colours = plt.get_cmap("tab20")
        styles = ["-", "--", ":", "-."]

        fig, ax = plt.subplots(figsize=(9, 5.5))
        for i, row in enumerate(rows):
            counts, accs = row.get("train_class_counts") or [], row.get(spec.per_class) or []
            pairs = sorted((n, a) for n, a in zip(counts, accs) if a is not None and n)
            if not pairs:
                continue
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", markersize=3,
                    linestyle=styles[(i // 20) % len(styles)], color=colours(i % 20),
                    label=row["label"])
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel(spec.per_class_axis)
        ax.set_title(f"{doc['title']} — {setting['label']} ({doc['protocol']['name']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        name = f"plots/{setting['id']}_per_class.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)

        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 5))
        rows = [r for r in rows if (r.get("metrics") or {}).get(key)]
        if not rows:
            written[setting["id"]] = names
            continue
        means = [r["metrics"][key]["mean"] for r in rows]
        errs = [r["metrics"][key]["std"] or 0.0 for r in rows]
        xs = range(len(rows))
        ax.bar(xs, means, yerr=errs, capsize=3, color=[colours(i % 20) for i in xs])
        base = next((r for r in rows if r["id"] == doc.get("baseline")), None)
        if base is not None:
            ax.axhline(base["metrics"][key]["mean"], color="black", linewidth=0.8,
                       linestyle="--", label=f"{base['label']} (baseline)")
        if doc["protocol"]["name"] == "paper":
            px = [i for i, r in enumerate(rows) if r.get("paper")]
            ax.scatter(px, [rows[i]["paper"][key] for i in px], marker="x", color="black",
                       zorder=3, label="paper")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["label"] for r in rows], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(spec.axis)
        ax.set_ylim(0.0, min(100.0, max(m + e for m, e in zip(means, errs)) + 5.0))
        ax.set_title(f"{doc['title']} — {setting['label']} ({doc['protocol']['name']})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"plots/{setting['id']}_{key}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
        written[setting["id"]] = names
    return written
