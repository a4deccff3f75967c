"""Stage `collect SEED` (one per `train.seeds`): the warm-started policy plays the train tasks ->
data/trajectories/s<SEED>/{trajectories,steps,tokens}.parquet (and replay/ with `collect.replay`).

The seed picks the tasks (`collect.max_tasks` of the train split) and every sampling decision, so each seed's
run trains on its own collection. Resumable: a killed run keeps its finished chunks and the rerun goes on
from there.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import collection, layout
from pipeline.config import Params
from pipeline.fsutil import write_json
from pipeline.registry import ENVIRONMENTS
from pipeline.runner import run_stage

ARGS = (("seed", dict(nargs="?", type=int, default=0, help="the training seed (one of train.seeds)")),)


def run(params: Params, root: Path = Path("."), seed: int = 0) -> str:
    out = layout.trajectories_dir(seed)
    summary = collection.collect(params, root, root / layout.SFT_MODEL, root / out, seed, policy_name="sft")
    write_json(root / layout.metrics_file("collect", layout.seed_dir(seed)), summary)
    replay = summary.get("replay")
    extra = f"; greedy replay pass rate {replay['pass_rate']:.1f}%" if replay else ""
    rule = (f"rule pass rate {summary['pass_rate']:.1%}" if summary["pass_rate"] is not None else
            "no gold to judge by rule")
    if ENVIRONMENTS.has(params.env.kind, "counts_misses"):
        simulated = summary.get("simulated_answers", 0)
        extra += (f"; {summary['replay_misses'] + simulated} of {summary['tool_calls']} tool calls missed the "
                  "replay")
        if simulated:
            extra += (f", {simulated} answered by the simulator (${summary.get('simulator_cost_usd', 0):.4f} for "
                      f"{summary.get('simulator_calls', 0)} calls, {summary.get('simulator_cache_hits', 0)} from its "
                      "cache)")
    return (f"collect (seed {seed}): {summary['trajectories']} trajectories, {summary['steps']} steps, parse "
            f"success {summary['parse_success']:.1%}, {rule} ({summary['trajectories_per_min']} traj/min){extra} "
            f"-> {out}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("collect", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
