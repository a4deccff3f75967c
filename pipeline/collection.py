"""A round's collection on folders: the policy plays the run's train tasks (sampled), and the greedy replay of
them that the learning-signal readout compares before and after training.

Round 1 is the `collect@<seed>` stage; rounds 2..`train.rounds` happen inside `train@<variant>-<seed>`, which
calls the same functions on the round's work folder with the previous round's policy (docs/architecture.md,
"Seeds and rounds"). The round's annotation is `pipeline/annotate/run.py`'s `annotate_folder`, its rewards
`pipeline/advantages.py`: one code path per phase, so a round-2 table means what a round-1 one means, and each
stage's code deps (its import closure, `steptool dvc-deps`) hold only its own phase.
"""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.errors import ConfigError, SteptoolError
from pipeline.schema import EVAL_RESULTS, STEPS, TRAJECTORIES, read_table, write_table
from pipeline.task import Task
from pipeline.task_files import load_tasks


def collect_tasks(params, root: Path, seed: int) -> list[Task]:
    """The train tasks a run with `seed` plays in every round: `collect.max_tasks` of them, sampled by the seed."""
    return load_tasks(root, "train", params.collect.max_tasks, f"collect-tasks:{seed}")


def collect(params, root: Path, model_dir: Path, out_dir: Path, seed: int, policy_name: str,
            replay: bool = True) -> dict:
    """Play the run's train tasks with the model at `model_dir` (sampling per `collect`, seeded by `seed`) into
    `out_dir`; with `collect.replay` (and `replay`), also the greedy replay into `out_dir`/replay. Returns the
    summary."""
    from pipeline.agent.play import load_policy, play

    c = params.collect
    tasks = collect_tasks(params, root, seed)
    if not tasks:
        raise SteptoolError(f"{root / layout.tasks_file('train')}: no train task to play (tasks.train sizes)")
    policy = load_policy(params, root, model_dir, policy_name)  # once for the collection and the replay
    summary = play(params, root, tasks, model_dir, out_dir, strategy=c.strategy, n_samples=c.n_samples,
                   temperature=c.temperature, top_p=c.top_p, seed=seed, chunk_size=c.chunk_size,
                   policy_name=policy_name, policy=policy)
    if c.replay and replay:
        summary["replay"] = replay_tasks(params, root, tasks, model_dir, layout.replay_dir(out_dir), policy_name,
                                         policy)
    return summary


def replay_tasks(params, root: Path, tasks: list[Task], model_dir: Path, out_dir: Path, policy_name: str,
                 policy=None) -> dict:
    """Play `tasks` greedily (CoT, one sample) with the model at `model_dir` (or `policy`, loaded from it),
    judge them with the rule (the ToolWorld's gold facts) and write results.parquet (EVAL_RESULTS rows) into
    `out_dir`; returns `replay_summary` of them."""
    from pipeline.agent.play import play
    from pipeline.evaluate.results import replay_summary, result_rows

    if not all(t.has_gold for t in tasks):
        raise ConfigError("collect.replay judges the replayed train tasks with the ToolWorld's gold facts; these "
                          "tasks have none (env.kind http/replay): set collect.replay to false")
    play(params, root, tasks, model_dir, out_dir, strategy="cot", n_samples=1, temperature=0.0, top_p=1.0,
         seed=0, chunk_size=params.collect.chunk_size, policy_name=policy_name, policy=policy)
    trajs = read_table(layout.table(out_dir, "trajectories"), TRAJECTORIES).to_pylist()
    steps = read_table(layout.table(out_dir, "steps"), STEPS).to_pylist()
    rows = result_rows(policy_name, "cot", trajs, steps, {t.task_id: t for t in tasks})
    write_table(rows, layout.table(out_dir, "results"), EVAL_RESULTS)
    return replay_summary(rows)
