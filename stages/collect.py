"""Stage `collect`: the warm-started policy plays the train tasks -> data/trajectories/{trajectories,steps,tokens}.parquet.

Resumable: a killed run keeps its finished chunks and the rerun goes on from there.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.agent.backends import HFPolicy, SamplingConfig
from pipeline.agent.collect import collect
from pipeline.agent.prompts import ChatRenderer
from pipeline.config import Params, to_dict
from pipeline.devices import resolve_device, weights_dtype
from pipeline.envs import make_env
from pipeline.fsutil import write_json
from pipeline.task import Task
from pipeline.toolworld.world import ToolWorld
from stages.tasks import CATALOG, load_tasks

MODEL = Path("data/models/sft")
OUT = Path("data/trajectories")
METRICS = Path("data/metrics/collect.json")


def model_fingerprint(model_dir: Path) -> str:
    """Hash of the checkpoint's files (names, sizes, and the config/weights headers)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 16))
    return h.hexdigest()[:16]


def play(params: Params, root: Path, tasks: list[Task], model_dir: Path, out_dir: Path, *, strategy: str,
         n_samples: int, temperature: float, top_p: float, seed: int, chunk_size: int, policy_name: str) -> dict:
    """Run the agent of `params` over `tasks` with the model at `model_dir`; used by collect and evaluate."""
    a = params.agent
    world = ToolWorld.from_catalog(root / CATALOG) if params.env.kind == "toolworld" else None
    device = resolve_device(a.device)
    policy = HFPolicy.from_pretrained(str(model_dir), SamplingConfig(a.max_new_tokens, temperature, top_p),
                                      a.batch_size, device, kv_cache_tokens=a.kv_cache_tokens,
                                      dtype=weights_dtype(a.precision, device))
    policy.name = policy_name
    agent_key = {k: v for k, v in to_dict(a).items() if k != "kv_cache_tokens"}  # speed only: same trajectories
    run_key = hashlib.sha256(json.dumps([model_fingerprint(model_dir), agent_key, strategy, n_samples, temperature,
                                         top_p, seed, [t.task_id for t in tasks]]).encode()).hexdigest()[:16]
    return collect(tasks, policy, ChatRenderer(policy.tok, a.prompt_format), lambda: make_env(params.env, params.toolworld, world),
                   out_dir, run_key, strategy=strategy, n_samples=n_samples, seed=seed, constrain_names=a.constrain_names,
                   max_steps=a.max_steps, width=a.dfsdt_width, budget=a.dfsdt_budget,
                   backtrack_on_error=a.backtrack_on_error, chunk_size=chunk_size,
                   tool_descriptions=world.tool_descriptions() if world else None)


def run(params: Params, root: Path = Path(".")) -> str:
    c = params.collect
    tasks = load_tasks(root, "train", c.max_tasks, f"collect-tasks:{c.seed}")
    summary = play(params, root, tasks, root / MODEL, root / OUT, strategy=c.strategy, n_samples=c.n_samples,
                   temperature=c.temperature, top_p=c.top_p, seed=c.seed, chunk_size=c.chunk_size, policy_name="sft")
    write_json(root / METRICS, summary)
    return (f"collect: {summary['trajectories']} trajectories, {summary['steps']} steps, parse success "
            f"{summary['parse_success']:.1%}, rule pass rate {summary['pass_rate']:.1%} "
            f"({summary['trajectories_per_min']} traj/min) -> {OUT}")


def main(argv: list[str] | None = None) -> int:
    from pipeline.cli import run_stage

    return run_stage("collect", __doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
