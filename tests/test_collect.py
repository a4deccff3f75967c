"""Collection: Parquet that polars and datasets open, and a run killed with SIGKILL that resumes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.agent.play import collect
from pipeline.agent.prompts import ChatRenderer
from pipeline.schema import STEPS, TOKENS, TRAJECTORIES, read_table
from tests.conftest import REPO

def run_collect(model_dir, out, delay: float) -> None:
    """Collect 6 train tasks x 2 samples in parts of 2, sleeping `delay` s before each prefill (so a kill lands
    mid-run). Run in a subprocess by the kill test, and in this process for its resume."""
    from pipeline.agent.backends import HFPolicy, SamplingConfig
    from pipeline.envs import ToolWorldEnv
    from pipeline.toolworld.tasks import generate_tasks
    from pipeline.toolworld.world import ToolWorld

    class Slow(HFPolicy):
        def _prefill(self, prompts, count=True):  # every admission of prompts into the batch
            time.sleep(delay)
            return super()._prefill(prompts, count)

    world = ToolWorld(1234, 40, 0.03)
    tasks = generate_tasks(world, 7, {"train": {"I1": 6}})["train"]
    policy = Slow.from_pretrained(str(model_dir), SamplingConfig(max_new_tokens=8), batch_size=2)
    policy.name = "tiny"
    collect(tasks, policy, ChatRenderer(policy.tok), lambda: ToolWorldEnv(world), str(out), "run-1",
            n_samples=2, max_steps=2, chunk_size=2, progress=False)


SCRIPT = "import sys\nfrom tests.test_collect import run_collect\nrun_collect(sys.argv[1], sys.argv[2], float(sys.argv[3]))\n"


def _run_script(tmp_path, model_dir, out, delay):
    script = tmp_path / "collect_job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(script), str(model_dir), str(out), str(delay)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_then_resume_loses_nothing_and_repeats_nothing(tmp_path, tiny_model_dir):
    out = tmp_path / "traj"
    proc = _run_script(tmp_path, tiny_model_dir, out, delay=0.4)
    parts = out / ".parts" / "run-1"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("trajectories-*.parquet"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = sorted(parts.glob("trajectories-*.parquet"))
    assert 2 <= len(committed) < 6, "the kill should land mid-run"
    before = pl.concat([pl.read_parquet(f) for f in committed])
    before_steps = pl.concat([pl.read_parquet(f) for f in sorted(parts.glob("steps-*.parquet"))
                              if f.name.replace("steps", "trajectories") in {c.name for c in committed}])

    run_collect(tiny_model_dir, out, 0.0)  # the rerun, in this process (the kill needed a process of its own)
    assert not (out / ".parts").exists()
    trajs = pl.read_parquet(out / "trajectories.parquet")
    assert trajs.height == 12 and trajs["traj_id"].n_unique() == 12
    # parts hold trajectories in the order they ended (continuous batching); the file keeps the jobs' order
    from pipeline.toolworld.tasks import generate_tasks
    from pipeline.toolworld.world import ToolWorld

    tasks = generate_tasks(ToolWorld(1234, 40, 0.03), 7, {"train": {"I1": 6}})["train"]
    assert trajs.select("task_id", "sample_idx").rows() == [(t.task_id, k) for t in tasks for k in range(2)]
    kept = trajs.filter(pl.col("traj_id").is_in(before["traj_id"].to_list()))
    assert kept.sort("traj_id").equals(before.sort("traj_id")), "finished trajectories were not regenerated"
    steps = pl.read_parquet(out / "steps.parquet")
    old = steps.filter(pl.col("traj_id").is_in(before["traj_id"].to_list()))
    assert old.sort(["traj_id", "step_idx"]).equals(before_steps.sort(["traj_id", "step_idx"]))
    for name, schema in (("trajectories", TRAJECTORIES), ("steps", STEPS), ("tokens", TOKENS)):
        read_table(out / f"{name}.parquet", schema)


def test_outputs_open_in_polars_and_datasets(tmp_path, tokenizer, world, splits):
    import datasets

    from pipeline.agent.backends import HFPolicy, SamplingConfig
    from pipeline.envs import ToolWorldEnv
    from tests.support.tiny_model import make_tiny_model

    policy = HFPolicy(make_tiny_model(tokenizer), tokenizer, SamplingConfig(max_new_tokens=6), name="tiny")
    summary = collect(splits["train"][:3], policy, ChatRenderer(tokenizer), lambda: ToolWorldEnv(world),
                      tmp_path, "k", n_samples=1, max_steps=2, progress=False)
    assert summary["trajectories"] == 3 and summary["steps"] == 6 and summary["parse_success"] == 0.0
    steps = pl.read_parquet(tmp_path / "steps.parquet")
    tokens = pl.read_parquet(tmp_path / "tokens.parquet")
    joined = steps.join(tokens, on=["traj_id", "step_idx"])
    assert joined.height == 6
    assert (joined["action_tokens"] == joined["action_ids"].list.len()).all()
    sums = joined["logprobs"].list.sum()
    assert all(abs(a - b) < 1e-3 for a, b in zip(sums, joined["behaviour_logprob"]))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "steps.parquet"), split="train")
    assert ds.num_rows == 6 and "prompt_text" in ds.column_names
    assert pq.read_schema(tmp_path / "steps.parquet").field("parse_error").metadata
