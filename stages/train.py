"""Stage `train VARIANT SEED` (one per variant and seed): `train.rounds` rounds of step-grained PPO from the
warm-started policy -> data/models/<VARIANT>/s<SEED>, the run's metrics and training log, and per round
data/rounds/<VARIANT>/s<SEED>/r<k>/ (round.parquet: per step, the reward, baseline and advantage as trained;
metrics.json; history.json; replay/ with `collect.replay`; from round 2 the round's annotated steps).

Round 1 trains on collect@SEED's trajectories with advantages@VARIANT-SEED's rewards. Round k >= 2 first
collects the same train tasks with round k-1's policy, annotates them and computes the variant's rewards
(pipeline/collection.py, pipeline/annotate/run.py and pipeline/advantages.py: the code of those stages), then
trains from that policy.

Resumable: the run's work lives in data/checkpoints/<VARIANT>/s<SEED> until it is done (each finished round's
data and model; the running round's trainer checkpoints every `train.save_steps` optimizer steps, optimizer,
scheduler and RNG state included). A rerun with the same inputs skips finished rounds, resumes the running one
and ends with the weights an uninterrupted run would have; other inputs start over.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import variants
from pipeline.config import Params
from pipeline.runner import run_stage
from trainer.rounds import train_run

ARGS = (("variant", dict(nargs="?", default=variants.DEFAULT, choices=list(variants.names()),
                         help="training variant: " + variants.describe())),
        ("seed", dict(nargs="?", type=int, default=0, help="the training seed (one of train.seeds)")))


def run(params: Params, root: Path = Path("."), variant: str = variants.DEFAULT, seed: int = 0) -> str:
    return train_run(params, root, variant, seed)


def main(argv: list[str] | None = None) -> int:
    return run_stage("train", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
