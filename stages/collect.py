"""Stage `collect`: the warm-started policy plays the train tasks -> data/trajectories/{trajectories,steps,tokens}.parquet.

Resumable: a killed run keeps its finished chunks and the rerun goes on from there.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.agent.play import play
from pipeline.config import Params
from pipeline.fsutil import write_json
from pipeline.runner import run_stage
from pipeline.task_files import load_tasks

ARGS = ()


def run(params: Params, root: Path = Path(".")) -> str:
    c = params.collect
    tasks = load_tasks(root, "train", c.max_tasks, f"collect-tasks:{c.seed}")
    summary = play(params, root, tasks, root / layout.SFT_MODEL, root / layout.TRAJECTORIES, strategy=c.strategy,
                   n_samples=c.n_samples, temperature=c.temperature, top_p=c.top_p, seed=c.seed,
                   chunk_size=c.chunk_size, policy_name="sft")
    write_json(root / layout.metrics_file("collect"), summary)
    return (f"collect: {summary['trajectories']} trajectories, {summary['steps']} steps, parse success "
            f"{summary['parse_success']:.1%}, rule pass rate {summary['pass_rate']:.1%} "
            f"({summary['trajectories_per_min']} traj/min) -> {layout.TRAJECTORIES}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("collect", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
