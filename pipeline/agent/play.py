"""Play many tasks with a policy and write trajectories, steps and per-token files; resumable. `play` builds
the policy, renderer and environments of the params (collect, evaluate and `steptool play` call it);
`collect` is the loop over chunks of tasks.

Finished rollouts are written in chunks under ``<out>/.parts/<run_key>/`` (tokens and steps first,
the trajectories part last: it marks the chunk as complete). A killed run leaves its finished
chunks; the rerun skips their trajectories and goes on. At the end the parts are merged into
``trajectories.parquet``, ``steps.parquet`` and ``tokens.parquet`` (atomically) and removed.
A different `run_key` (other model, params or tasks) never reuses parts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import layout
from pipeline.agent.prompts import ChatRenderer
from pipeline.agent.records import rollout_rows
from pipeline.agent.rollout import Search, traj_id
from pipeline.registry import ENVIRONMENTS, STRATEGIES
from pipeline.schema import STEPS, TOKENS, TRAJECTORIES, answer_counts, write_table
from pipeline.task import Task
from pipeline.toolworld.fact_judge import pass_score, rule_judge

log = logging.getLogger("steptool.collect")
FILES = {"trajectories": TRAJECTORIES, "steps": STEPS, "tokens": TOKENS}


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


def served_name(model_dir: Path, root: Path) -> str:
    """The name a server gives the checkpoint at `model_dir`: its path relative to the repository, as
    `vllm serve data/models/sft` (run from the repository) names it."""
    try:
        return str(Path(model_dir).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(model_dir)


def load_policy(params, root: Path, model_dir: Path, policy_name: str):
    """The agent backend of `params.agent` for the checkpoint at `model_dir` (weights loaded once: `play` can run
    it several times, e.g. the sampled collection then the greedy replay)."""
    from pipeline.agent.backends import HFPolicy, OpenAIPolicy, SamplingConfig
    from pipeline.devices import resolve_device, weights_dtype
    from pipeline.models import load_tokenizer

    a = params.agent
    device = resolve_device(a.device)
    sampling = SamplingConfig(a.max_new_tokens)  # `play` sets each run's temperature and top-p
    if a.backend == "openai":
        served = a.served_model or served_name(model_dir, root)
        adapter = Path(model_dir) / layout.LORA_ADAPTER
        if adapter.is_dir() and not a.served_model:  # a LoRA-trained checkpoint: the server loads its adapter
            from pipeline.agent.adapters import load_lora_adapter

            served = load_lora_adapter(a.base_url, served, adapter, a.api_key_env)
        policy = OpenAIPolicy(a.base_url, served, load_tokenizer(str(model_dir)),
                              sampling, concurrency=a.concurrency, api_key_env=a.api_key_env, name=policy_name,
                              constraint=a.server_constraint)
    else:
        policy = HFPolicy.from_pretrained(str(model_dir), sampling, a.batch_size, device,
                                          kv_cache_tokens=a.kv_cache_tokens, dtype=weights_dtype(a.precision, device))
    policy.name = policy_name
    return policy


def play(params, root: Path, tasks: list[Task], model_dir: Path, out_dir: Path, *, strategy: str,
         n_samples: int, temperature: float, top_p: float, seed: int, chunk_size: int, policy_name: str,
         policy=None) -> dict:
    """Run the agent of `params` (a pipeline.config.Params) over `tasks` with the model at `model_dir` (or
    `policy`, `load_policy`'s for that model), writing to `out_dir`; returns `collect`'s summary."""
    from pipeline.agent.backends import SamplingConfig
    from pipeline.config import to_dict
    from pipeline.envs import make_env
    from pipeline.toolworld.world import ToolWorld

    a = params.agent
    world = ToolWorld.from_catalog(root / layout.CATALOG) if ENVIRONMENTS.has(params.env.kind, "toolworld") else None
    if policy is None:
        policy = load_policy(params, root, model_dir, policy_name)
    policy.sampling = SamplingConfig(a.max_new_tokens, temperature, top_p)
    # speed only, same trajectories: the KV cache, the server's concurrency
    agent_key = {k: v for k, v in to_dict(a).items() if k not in ("kv_cache_tokens", "concurrency")}
    run_key = hashlib.sha256(json.dumps([model_fingerprint(model_dir), agent_key, strategy, n_samples, temperature,
                                         top_p, seed, [t.task_id for t in tasks]]).encode()).hexdigest()[:16]
    simulating = ENVIRONMENTS.has(params.env.kind, "counts_misses") and params.env.on_miss == "simulate"
    if simulating:
        from pipeline.envs import simulator_stats

        before = simulator_stats()
    summary = collect(tasks, policy, ChatRenderer(policy.tok, a.prompt_format),
                      lambda: make_env(params.env, params.toolworld, world), out_dir, run_key, strategy=strategy,
                      n_samples=n_samples, seed=seed, constrain_names=a.constrain_names, max_steps=a.max_steps,
                      width=a.dfsdt_width, budget=a.dfsdt_budget, backtrack_on_error=a.backtrack_on_error,
                      chunk_size=chunk_size, tool_descriptions=world.tool_descriptions() if world else None,
                      count_answers=ENVIRONMENTS.has(params.env.kind, "counts_misses"))
    if simulating:  # this play's simulator calls, cache hits and spend
        summary.update({k: round(v - before.get(k, 0), 6) for k, v in simulator_stats().items()})
    return summary


def _done_ids(parts: Path) -> set[str]:
    done: set[str] = set()
    for f in sorted(parts.glob("trajectories-*.parquet")):
        done.update(pq.read_table(f, columns=["traj_id"]).column("traj_id").to_pylist())
    return done


def collect(tasks: list[Task], policy, renderer: ChatRenderer, make_env, out_dir: str | Path, run_key: str, *,
            strategy: str = "cot", n_samples: int = 1, seed: int = 0, max_steps: int = 8, constrain_names: bool = False,
            width: int = 2, budget: int = 24, backtrack_on_error: bool = True, chunk_size: int = 16,
            tool_descriptions: dict | None = None, progress: bool = True, count_answers: bool = False) -> dict:
    """Returns a summary: trajectories, steps, parse-success rate, rule pass rate (tasks with gold), speed."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    parts = out_dir / ".parts" / run_key
    parts.mkdir(parents=True, exist_ok=True)
    done = _done_ids(parts)
    jobs = [(t, k) for t in tasks for k in range(n_samples)
            if traj_id(t.task_id, policy.name, strategy, k, seed) not in done]
    n_part = len(list(parts.glob("trajectories-*.parquet")))
    if done:
        log.info("resuming: %d trajectories already collected, %d to go", len(done), len(jobs))
    t0 = time.perf_counter()
    run = STRATEGIES.implementation(strategy)
    search = Search(strategy, max_steps=max_steps, seed=seed, constrain_names=constrain_names,
                    tool_descriptions=tool_descriptions, width=width, budget=budget,
                    backtrack_on_error=backtrack_on_error)
    bar = tqdm(total=len(jobs), desc=f"collect {strategy}", unit="traj", disable=not progress)
    ended: list = []

    def write_part() -> None:  # the rollouts ended since the last part
        nonlocal n_part
        rows = {"trajectories": [], "steps": [], "tokens": []}
        for r in ended:
            traj, steps, toks = rollout_rows(r, renderer)
            rows["trajectories"].append(traj)
            rows["steps"].extend(steps)
            rows["tokens"].extend(toks)
        for name in ("tokens", "steps", "trajectories"):  # trajectories last: it commits the part
            write_table(rows[name], parts / f"{name}-{n_part:05d}.parquet", FILES[name])
        n_part += 1
        bar.update(len(ended))
        ended.clear()
        stats = getattr(policy, "stats", None)
        if stats and stats["seconds"] > 0:
            bar.set_postfix(gen_tok_s=f"{stats['generated_tokens'] / stats['seconds']:.0f}",
                            prompt_tok_s=f"{stats['prompt_tokens'] / stats['seconds']:.0f}")

    def on_done(rollout) -> None:
        ended.append(rollout)
        if len(ended) >= chunk_size:
            write_part()

    if STRATEGIES.has(strategy, "streams"):  # every job at once: a row that ends makes room for the next job
        run(jobs, policy, renderer, make_env, search, on_done=on_done)
    else:
        for start in range(0, len(jobs), chunk_size):
            for r in run(jobs[start:start + chunk_size], policy, renderer, make_env, search):
                on_done(r)
    if ended:
        write_part()
    bar.close()
    # parts hold trajectories in the order they ended; the files keep the jobs' order
    order = {traj_id(t.task_id, policy.name, strategy, k, seed): i for i, (t, k) in
             enumerate((t, k) for t in tasks for k in range(n_samples))}
    tables = {}
    for name, schema in FILES.items():
        files = sorted(parts.glob(f"{name}-*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files]) if files else schema.empty_table()
        tables[name] = write_table(_in_job_order(table, order), out_dir / f"{name}.parquet", schema)
    shutil.rmtree(out_dir / ".parts", ignore_errors=True)
    return summarize(tables["trajectories"], tables["steps"], {t.task_id: t for t in tasks},
                     elapsed=time.perf_counter() - t0, count_answers=count_answers)


def _in_job_order(table: pa.Table, order: dict[str, int]) -> pa.Table:
    """The rows of `table` sorted by their trajectory's job (a stable sort: a trajectory's steps and tokens keep
    their order)."""
    import numpy as np

    if table.num_rows == 0:
        return table
    key = np.array([order.get(t, len(order)) for t in table.column("traj_id").to_pylist()])
    return table.take(pa.array(np.argsort(key, kind="stable")))


def summarize(trajectories: pa.Table, steps: pa.Table, tasks: dict[str, Task], elapsed: float = 0.0,
              count_answers: bool = False) -> dict:
    """Parse-success rate over steps, and the rule judge's pass rate over trajectories of tasks with gold."""
    trajs = trajectories.to_pylist()
    parse_ok = steps.column("parse_ok").to_pylist()
    calls = [s for s, fin in zip(steps.column("env_status").to_pylist(), steps.column("is_finish").to_pylist())
             if not fin]
    scores, solved = [], 0
    for t in trajs:
        task = tasks.get(t["task_id"])
        if task is None or not task.has_gold:
            continue
        status = rule_judge(task.gold_facts or [], t["final_answer"], t["finish_type"])
        scores.append(pass_score(status))
        solved += status == "Solved"
    return {
        "trajectories": len(trajs),
        "steps": len(parse_ok),
        "parse_success": round(sum(parse_ok) / len(parse_ok), 4) if parse_ok else 0.0,
        "finished": round(sum(t["finish_type"] == "give_answer" for t in trajs) / max(len(trajs), 1), 4),
        "tool_calls": len(calls),
        # env.kind replay: calls never recorded, answered with the miss error or by the simulator (env.on_miss);
        # 0 for the other kinds
        "replay_misses": sum(s == "replay_miss" for s in calls),
        "pass_rate": round(sum(scores) / len(scores), 4) if scores else None,
        "solved": round(solved / len(scores), 4) if scores else None,
        "trajectories_per_min": round(len(trajs) / elapsed * 60, 2) if elapsed > 0 else None,
        # an environment that can miss (replay): who answered the tool calls, a recording, the simulator, or an
        # error for a miss
        **({"simulated_answers": sum(s == "simulated" for s in calls), "answers": answer_counts(calls)}
           if count_answers else {}),
    }
