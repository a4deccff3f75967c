"""Stage `advantages VARIANT SEED` (one per variant and seed): the step rewards and returns-to-go of annotate@SEED's
steps -> data/advantages/<VARIANT>/s<SEED>.parquet, exactly what train@VARIANT-SEED trains on (the same reward and
return; its round table adds the baseline and advantage, which need the round's policy). First the reward audit
(pipeline/reward_audit.py): canonical trajectories of every train task (direct solve, a redundant repeat, an
irrelevant call, calls until the cut, a partial answer, a give-up) played through ToolWorld, labelled by the
configured annotator and scored by this reward; its numbers go to the stage metrics (`audit`), and with
`rewards.audit: strict` a reward that padding out-earns on more than `rewards.audit_max_share` of the tasks is
refused before anything is written. The input is checked against its schema's constraints first
(pipeline/schema.py): values in range and finite, no duplicated step, the outcome on each trajectory's last step
only; an empty table is an error."""
from __future__ import annotations

from pathlib import Path

from pipeline import advantages, audit_table, layout, reward_audit, variants
from pipeline.config import Params
from pipeline.fsutil import write_json
from pipeline.runner import run_stage
from pipeline.schema import ADVANTAGES, write_table

ARGS = (("variant", dict(nargs="?", default=variants.DEFAULT, choices=list(variants.names()),
                         help="training variant: " + variants.describe())),
        ("seed", dict(nargs="?", type=int, default=0, help="the training seed (one of train.seeds)")))


def run(params: Params, root: Path = Path("."), variant: str = variants.DEFAULT, seed: int = 0) -> str:
    out = layout.advantages_file(variant, seed)
    table, summary = advantages.reward_table(params, root / layout.table(layout.annotated_dir(seed), "steps"), variant)
    audit, _ = reward_audit.run(params, root, variant)
    reward_audit.enforce(audit, params, f"advantages ({variant}, seed {seed})")  # strict: before anything is written
    write_table(table.to_arrow(), root / out, ADVANTAGES)
    write_json(root / layout.metrics_file("advantages", layout.run_name(variant, seed)), {**summary, "audit": audit})
    said = "" if "skipped" in audit else "; audit: " + audit_table.one_line(audit)
    return (f"advantages ({variant}, seed {seed}): {summary['steps']} steps of {summary['trajectories']} "
            f"trajectories, mean reward {summary['reward_mean']}{said} -> {out}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("advantages", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
