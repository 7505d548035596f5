"""PNG plots of the e2e results, drawn only when matplotlib is installed (it is an optional extra)."""

from pathlib import Path

LATENCY_PNG = "e2e_latency.png"
THROUGHPUT_PNG = "e2e_throughput.png"


def _series(report: dict) -> dict[str, list[dict]]:
    """Rows grouped per 'target/protocol', in concurrency order."""
    series: dict[str, list[dict]] = {}
    for row in sorted(report["results"], key=lambda row: row["concurrency"]):
        series.setdefault(f"{row['target']}/{row['protocol']}", []).append(row)
    return series


def _axes(plt: object, report: dict, ylabel: str) -> tuple:
    """A figure with concurrency on a log2 x axis labelled with the levels that ran."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    levels = sorted({row["concurrency"] for row in report["results"]})
    axes.set_xscale("log", base=2)
    axes.set_xticks(levels, labels=[str(level) for level in levels])
    axes.minorticks_off()
    axes.set_xlabel("concurrent requests")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    settings = report["settings"]
    axes.set_title(f"{settings['model']} ({settings['engine']}), {settings['workers']} workers × "
                   f"{settings['threads']} threads")
    return figure, axes


def _latency(plt: object, report: dict, path: Path) -> None:
    """p50 (solid) and p99 (dashed) latency per protocol."""
    figure, axes = _axes(plt, report, "latency (ms)")
    for name, rows in _series(report).items():
        levels = [row["concurrency"] for row in rows]
        (line,) = axes.plot(levels, [row["p50_ms"] for row in rows], marker="o", label=f"{name} p50")
        axes.plot(levels, [row["p99_ms"] for row in rows], marker="x", linestyle="--", color=line.get_color(),
                  label=f"{name} p99")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _throughput(plt: object, report: dict, path: Path) -> None:
    """Requests/s per protocol, with the in-process ceiling (in requests/s) as a horizontal line."""
    figure, axes = _axes(plt, report, "requests/s")
    for name, rows in _series(report).items():
        axes.plot([row["concurrency"] for row in rows], [row["requests_per_s"] for row in rows], marker="o",
                  label=name)
    budgets = [measured[0]["images_per_s"] for measured in report["ceilings"].values()]
    ceiling = sum(budgets) / len(budgets) / report["settings"]["images_per_request"]
    axes.axhline(ceiling, color="grey", linestyle=":", label="in-process ceiling (mean of the run's)")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def write_plots(report: dict, out: Path) -> list[Path] | None:
    """e2e_latency.png and e2e_throughput.png in `out`; None when matplotlib is not importable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paths = [out / LATENCY_PNG, out / THROUGHPUT_PNG]
    _latency(plt, report, paths[0])
    _throughput(plt, report, paths[1])
    return paths
