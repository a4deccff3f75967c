"""The report's figures (reports/figures/): pass rate per level with its 95% CI, win/tie/loss against the
reference, and the training curves (reward, KL to the reference, approx_kl); each PNG written atomically."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import LEVELS
from pipeline.fsutil import atomic_path


def figures(metrics: dict, reference: str, train_logs: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.legend(ncol=4, fontsize=8)
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
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    _save(fig, out / "win_rate.png")
    plt.close(fig)

    if train_logs:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        for v, log in train_logs.items():
            for ax, k in zip(axes, ("reward_mean", "kl_ref", "approx_kl")):
                pts = [(h["step"], h[k]) for h in log if k in h and h[k] == h[k]]
                if pts:
                    ax.plot(*zip(*pts), label=v, marker=".")
                ax.set_title(k)
                ax.set_xlabel("optimizer step")
                if k != "reward_mean":  # a KL spike spans orders of magnitude
                    ax.set_yscale("symlog", linthresh=1e-3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        _save(fig, out / "training.png")
        plt.close(fig)
    else:  # the folder persists across runs (dvc.yaml): no stale curves of an earlier run
        (out / "training.png").unlink(missing_ok=True)


def _save(fig, path: Path) -> None:
    """A figure, written atomically (a kill leaves the previous one or the new one, never half a PNG)."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
