"""Judge throughput: the `openai` annotator against the local test judge with 200 ms latency per answer.

The ideal is concurrency / latency answers per second (every slot always busy, zero overhead); the
benchmark prints what the annotator reaches as a ratio of it (target >= 0.8 at concurrency 32), and
that a second run over the same trajectories is served from the cache (zero calls). The judge runs in
this process first (its threads share the interpreter with the client: the ratio measured since the
start), then in a process of its own, as a remote endpoint does, where the client's CPU time per call
is measured alone.
"""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from pipeline.agent.expert import expert_path
from pipeline.agent.parse import parse_react
from pipeline.annotate.scripted_judge_server import Faults, JudgeServer
from pipeline.annotate.run import label_trajectories
from pipeline.config import AnnotateConfig
from pipeline.envs import ToolWorldEnv
from pipeline.toolworld.tasks import generate_tasks
from pipeline.toolworld.world import ToolWorld

LATENCY_S = 0.2
CONCURRENCY = 32


def expert_trajectories(n: int):
    """`n` trajectories (rows as collect writes them, the fields the annotator reads) from expert paths."""
    world = ToolWorld(1234, 40, 0.0)
    tasks = generate_tasks(world, 7, {"train": {"I1": n // 2, "I2": n // 4, "I3": n - n // 2 - n // 4}})["train"]
    rng = random.Random(0)
    trajs, steps = [], []
    for k, task in enumerate(tasks):
        path = expert_path(task, ToolWorldEnv(world), world, rng)
        tid = f"bench-{k}"
        for i, action in enumerate(path.actions):
            p = parse_react(action)
            finish = i == len(path.actions) - 1
            steps.append({"traj_id": tid, "task_id": task.task_id, "step_idx": i, "api_name": p.api_name,
                          "arguments_json": p.arguments, "parse_ok": p.parse_ok, "is_finish": finish,
                          "observation": "" if finish else path.observations[i],
                          "env_status": "finish" if finish else "ok"})
        answer = json.loads(parse_react(path.actions[-1]).arguments)["final_answer"]
        trajs.append({"traj_id": tid, "task_id": task.task_id, "finish_type": "give_answer", "final_answer": answer})
    return trajs, steps, {t.task_id: t for t in tasks}


def main() -> None:
    trajs, steps, tasks = expert_trajectories(640)
    server = JudgeServer(Faults(latency_s=LATENCY_S))
    try:
        cfg = AnnotateConfig(annotator="openai", base_url=server.url, model="bench", n_votes=1,
                             concurrency=CONCURRENCY, timeout_s=30.0)
        with tempfile.TemporaryDirectory() as tmp:
            # warm-up (imports, the first connections), in a cache of its own: throughput, not start-up, is measured
            label_trajectories(trajs[:CONCURRENCY], steps, tasks, cfg, str(Path(tmp) / "warm.sqlite"), progress=False)
            cache = str(Path(tmp) / "judge.sqlite")
            t0 = time.perf_counter()
            labels, stats = label_trajectories(trajs, steps, tasks, cfg, cache, progress=False)
            seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            _, again = label_trajectories(trajs, steps, tasks, cfg, cache, progress=False)
            cached_s = time.perf_counter() - t1
    finally:
        server.close()
    rate = stats["judge_calls"] / seconds
    ideal = CONCURRENCY / LATENCY_S
    print(f"annotate: {stats['judge_calls']} judge calls in {seconds:.2f} s = {rate:.1f} calls/s; ideal at "
          f"concurrency {CONCURRENCY} and {LATENCY_S * 1000:.0f} ms latency {ideal:.0f} calls/s; ratio "
          f"{rate / ideal:.2f} (target >= 0.8); failed {sum(1 for lab in labels if lab.failed)}")
    print(f"annotate: rerun from the cache: {again['judge_calls']} calls, {again['cache_hits']} hits, {cached_s:.2f} s")
    calls, seconds, cpu = judge_in_its_own_process(trajs, steps, tasks)
    print(f"annotate: judge in its own process: {calls / seconds / ideal:.2f} of the ideal; the client's CPU "
          f"{cpu / calls * 1000:.2f} ms per call ({cpu:.2f} s for {calls} calls)")


def _serve_judge(conn) -> None:
    """The child process: the test judge until the parent says stop."""
    server = JudgeServer(Faults(latency_s=LATENCY_S))
    conn.send(server.url)
    conn.recv()
    server.close()


def judge_in_its_own_process(trajs, steps, tasks) -> tuple[int, float, float]:
    """(calls, wall seconds, this process's CPU seconds) of one annotation run against the test judge in a child
    process (spawned: this one has imported torch)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_serve_judge, args=(there,), daemon=True)
    child.start()
    try:
        cfg = AnnotateConfig(annotator="openai", base_url=here.recv(), model="bench", n_votes=1,
                             concurrency=CONCURRENCY, timeout_s=30.0)
        with tempfile.TemporaryDirectory() as tmp:
            label_trajectories(trajs[:CONCURRENCY], steps, tasks, cfg, str(Path(tmp) / "warm.sqlite"), progress=False)
            t0, c0 = time.perf_counter(), time.process_time()
            _, stats = label_trajectories(trajs, steps, tasks, cfg, str(Path(tmp) / "judge.sqlite"), progress=False)
            return stats["judge_calls"], time.perf_counter() - t0, time.process_time() - c0
    finally:
        here.send("stop")
        child.join(timeout=30)

if __name__ == "__main__":
    main()
