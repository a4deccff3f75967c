"""The report's figures (reports/figures/): pass rate per level with its 95% CI, win/tie/loss against the
reference, and the training curves (reward, KL to the reference, approx_kl); each PNG written atomically."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import LEVELS
from pipeline.fsutil import atomic_path

# a legend above the axes, outside them (the figure is saved with a tight bounding box)
_ABOVE = {"loc": "lower center", "bbox_to_anchor": (0.5, 1.0), "frameon": False}
# a training run's dash and marker by its place among its variant's seeds (`line_styles`)
_DASHES = ("-", "--", ":", "-.")
_MARKERS = (".", "x", "^", "s")
_CURVES = ("reward_mean", "kl_ref", "approx_kl")  # the training figure's panels, left to right


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def figures(metrics: dict, reference: str, train_logs: dict[str, list[dict]], out: Path) -> None:
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    keys = list(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4))
    width = 0.2
    for i, lv in enumerate((*LEVELS, "average")):
        cells = [metrics[k]["pass_rate_ci"].get(lv) or {"mean": 0.0, "lo": 0.0, "hi": 0.0} for k in keys]
        ys = [c["mean"] for c in cells]
        es = [[c["mean"] - c["lo"] for c in cells], [c["hi"] - c["mean"] for c in cells]]  # the 95% CI
        ax.bar([j + (i - 1.5) * width for j in range(len(keys))], ys, width, yerr=es, capsize=2, label=lv)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_ylabel("pass rate (%), 95% CI over tasks")
    ax.legend(ncol=4, fontsize=8, **_ABOVE)  # inside, it hid the tallest bars' intervals
    fig.tight_layout()
    _save(fig, out / "pass_rate.png")
    plt.close(fig)

    wr = [(k, metrics[k][f"win_rate_vs_{reference}"]) for k in keys if metrics[k][f"win_rate_vs_{reference}"]]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(wr) + 1)))
    left = [0.0] * len(wr)
    for part, color in (("win", "tab:green"), ("tie", "tab:gray"), ("loss", "tab:red")):
        vals = [(w[part] or 0.0) * 100 for _, w in wr]
        ax.barh([k for k, _ in wr], vals, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel(f"% of tasks vs {reference}")
    ax.set_xlim(0, 100)
    ax.invert_yaxis()  # the runs top to bottom in the order of the report's tables
    ax.legend(ncol=3, fontsize=8, **_ABOVE)  # inside, it covered a bar
    fig.tight_layout()
    _save(fig, out / "win_rate.png")
    plt.close(fig)

    if train_logs:
        fig = training_figure(train_logs)
        _save(fig, out / "training.png")
        plt.close(fig)
    else:  # the folder persists across runs (dvc.yaml): no stale curves of an earlier run
        (out / "training.png").unlink(missing_ok=True)


def training_figure(train_logs: dict[str, list[dict]]):
    """The training curves (reward_mean, kl_ref, approx_kl per optimizer step) of runs named <variant>/s<seed>
    (`layout.run_name`), each drawn in `line_styles`' style, with one legend right of the panels."""
    fig, axes = _pyplot().subplots(1, len(_CURVES), figsize=(12, 3.5))
    styles = line_styles(list(train_logs))
    for run, log in train_logs.items():
        for ax, k in zip(axes, _CURVES):
            pts = [(h["step"], h[k]) for h in log if k in h and h[k] == h[k]]
            if pts:
                ax.plot(*zip(*pts), label=run, markersize=4, **styles[run])
    for ax, k in zip(axes, _CURVES):
        ax.set_title(k)
        ax.set_xlabel("optimizer step")
        if k != "reward_mean":  # a KL spike spans orders of magnitude
            ax.set_yscale("symlog", linthresh=1e-3)
    fig.tight_layout()
    # beside the panels: inside the first one, a study's twelve runs covered its curves
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def line_styles(runs: list[str]) -> dict[str, dict]:
    """Matplotlib keyword arguments per training run named <variant>/s<seed> (`layout.run_name`): one colour per
    variant (in order of first appearance), one dash and marker per seed within it, so runs of one variant read as
    a family and no two runs look alike (matplotlib's own 10-colour cycle gave a study's 12 runs two pairs of equal
    lines). Distinct for up to 10 variants of up to 4 seeds each."""
    variants = list(dict.fromkeys(run.partition("/")[0] for run in runs))
    seen = {v: 0 for v in variants}
    styles = {}
    for run in runs:
        v = run.partition("/")[0]
        k = seen[v]
        seen[v] += 1
        styles[run] = {"color": f"C{variants.index(v) % 10}", "linestyle": _DASHES[k % len(_DASHES)],
                       "marker": _MARKERS[k % len(_MARKERS)]}
    return styles


def _save(fig, path: Path) -> None:
    """A figure, written atomically (a kill leaves the previous one or the new one, never half a PNG)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")  # legends outside the axes
