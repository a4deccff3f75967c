"""Tool-call throughput: the embedded ToolWorld and the same world over HTTP, per call, on the gold plans.

Prints calls/s of each and the ratio HTTP/embedded (what `env.kind: http` costs against in-process calls).
"""
from __future__ import annotations

import time

from pipeline.envs import HttpToolEnv, ToolWorldEnv
from pipeline.toolworld.server import serve_in_thread
from pipeline.toolworld.tasks import generate_tasks
from pipeline.toolworld.world import ToolWorld


def _rate(env, tasks, repeats: int) -> tuple[float, int]:
    n, t0 = 0, time.perf_counter()
    for r in range(repeats):
        for task in tasks:
            env.reset(task, f"bench-{r}")
            for call in task.gold_calls:
                env.step(call.function_name, call.arguments)
                n += 1
    return n / (time.perf_counter() - t0), n


def main() -> None:
    world = ToolWorld(1234, 40, 0.03)
    t0 = time.perf_counter()
    ToolWorld(1234, 40, 0.03)
    build_s = time.perf_counter() - t0
    tasks = generate_tasks(world, 7, {"train": {"I1": 120, "I2": 60, "I3": 60}})["train"]
    local, n_local = _rate(ToolWorldEnv(world), tasks, 5)
    server, url = serve_in_thread(world)
    try:
        remote, n_remote = _rate(HttpToolEnv(url), tasks, 1)
    finally:
        server.shutdown()
        server.server_close()
    print(f"toolworld: world build {build_s * 1000:.0f} ms; embedded {local:,.0f} calls/s ({n_local} calls); "
          f"http {remote:,.0f} calls/s ({n_remote} calls); ratio http/embedded {remote / local:.3f}")


if __name__ == "__main__":
    main()
