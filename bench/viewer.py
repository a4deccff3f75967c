"""The trajectory viewer at scale (pipeline/viewer.py): build time, size on disk, and the time headless Chromium
takes to open the index and one trajectory, for a synthetic paper-scale run (20,000 trajectories: 10,000 collected
with labels and a round table, 10,000 evaluated) and, when the current folder holds a run (`data/eval`), for that
run. The baseline is the same browser opening a blank page from disk in the same session: the ratio says what the
viewer adds to a browser's own start. Needs Debian's chromium and chromium-driver (tests/support/browser.py)."""
from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from pipeline import layout, variants
from pipeline.config import load_params, parse_params
from pipeline.schema import ANNOTATED_STEPS, EVAL_RESULTS, ROUND_STEPS, STEPS, TASKS, TRAJECTORIES, write_table
from pipeline.viewer import build_viewer, read_data_file
from tests.support.browser import row

N_TRAJECTORIES = 20_000
STEPS_PER_TRAJECTORY = 5


def synthetic_run(root: Path, n: int, seed: int = 0) -> None:
    """Half collected (seed 0, round 1, with labels and the default variant's round table), half evaluated by sft."""
    rng = random.Random(seed)
    n_tasks = max(1, n // 20)
    tasks = {split: [row(TASKS, task_id=f"{split}-{i}", split=split, level=f"I{i % 3 + 1}",
                          query=f"What is the value {i}? " * 4, api_list="[]",
                          gold={"calls": [], "facts": [str(i)]}, source="toolworld", intent="attr", tools=[])
                     for i in range(n_tasks)] for split in ("train", "test")}
    for split, rows in tasks.items():
        write_table(rows, root / layout.tasks_file(split), TASKS)
    write_table([], root / layout.tasks_file("val"), TASKS)

    def play(tid, task, policy, split):
        k = STEPS_PER_TRAJECTORY
        steps = [row(STEPS, traj_id=tid, task_id=task, step_idx=i, thought="I call the API. " * 3,
                      api_name="Finish" if i == k - 1 else f"get_{rng.randrange(8)}_for_tool",
                      arguments_json=json.dumps({"id": rng.randrange(100)}), parse_ok=True,
                      observation="" if i == k - 1 else json.dumps({"error": "", "response": "x" * rng.randrange(100, 600)}),
                      is_finish=i == k - 1, finish_type="give_answer" if i == k - 1 else None,
                      final_answer="the answer" if i == k - 1 else None, parse_error="",
                      env_status="finish" if i == k - 1 else "ok") for i in range(k)]
        traj = row(TRAJECTORIES, traj_id=tid, task_id=task, policy=policy, strategy="cot", sample_idx=0, seed=0,
                    n_steps=k, finish_type="give_answer", final_answer="the answer", split=split, level="I1",
                    actions_generated=k)
        return traj, steps

    half = n // 2
    trajs, steps = zip(*(play(f"c{i}", f"train-{i % n_tasks}", "sft", "train") for i in range(half)))
    steps = [s for ss in steps for s in ss]
    folder = layout.trajectories_dir(0)
    write_table(list(trajs), root / layout.table(folder, "trajectories"), TRAJECTORIES)
    write_table(steps, root / layout.table(folder, "steps"), STEPS)
    labels = []
    for s in steps:
        last = s["is_finish"]
        labels.append({**row(ANNOTATED_STEPS), **s, "succ_calling": None if last else 1.0,
                       "contribution": None if last else float(rng.randrange(6)), "sc_rule": 1,
                       "sc_reason": "finish" if last else "", "is_solved": "Solved" if last else None,
                       "is_solved_score": 1.0 if last else None, "annotator": "oracle", "votes": 1})
    write_table(labels, root / layout.table(layout.annotated_dir(0), "steps"), ANNOTATED_STEPS)
    write_table([row(ROUND_STEPS, traj_id=s["traj_id"], task_id=s["task_id"], step_idx=s["step_idx"],
                      reward=rng.random(), baseline=rng.random(), advantage=rng.gauss(0, 1), variant=variants.DEFAULT,
                      **{"return": rng.random()}) for s in steps],
                root / layout.round_dir(variants.DEFAULT, 0, 1) / "round.parquet", ROUND_STEPS)
    trajs, steps = zip(*(play(f"e{i}", f"test-{i % n_tasks}", "sft", "test") for i in range(n - half)))
    out = root / layout.eval_dir("sft", "cot")
    write_table(list(trajs), layout.table(out, "trajectories"), TRAJECTORIES)
    write_table([s for ss in steps for s in ss], layout.table(out, "steps"), STEPS)
    write_table([row(EVAL_RESULTS, model="sft", strategy="cot", task_id=t["task_id"], level="I1", sample_idx=0,
                      traj_id=t["traj_id"], judge="rule", statuses=["Solved"], pass_score=1.0,
                      finish_type="give_answer", final_answer="the answer", n_steps=t["n_steps"], n_calls=4,
                      n_calls_ok=4, facts_stated=1, n_facts=1, actions_generated=t["n_steps"]) for t in trajs],
                layout.table(out, "results"), EVAL_RESULTS)


def _open(driver, url: str, view: str) -> float:
    """Seconds from navigation to the viewer's `view` rendered (the page's own clock)."""
    from tests.support.browser import wait_view

    driver.get(url)
    wait_view(driver, view, timeout=60)
    return driver.execute_script("return window.STEPTOOL_READY") / 1000.0


def _blank(driver, folder: Path) -> float:
    page = folder / "blank.html"
    page.write_text("<!DOCTYPE html><html><body><script>window.STEPTOOL_READY = performance.now();"
                    "document.body.setAttribute('data-view', 'index');</script></body></html>")
    return _open(driver, page.as_uri(), "index")


def measure(name: str, params, root: Path, driver, scratch: Path) -> None:
    site = scratch / f"site-{name}"
    t0 = time.perf_counter()
    summary = build_viewer(params, root, site)
    build_s = time.perf_counter() - t0
    index_mb = (site / "js" / "index.js").stat().st_size / 1e6
    largest = max(p.stat().st_size for p in (site / "js").glob("chunk-*.js")) / 1e6
    url = (site / "index.html").as_uri()
    first_id = read_data_file(site / "js" / "index.js")["values"][-1][0]
    blank = min(_blank(driver, scratch) for _ in range(3))
    index_s = min(_open(driver, url, "index") for _ in range(3))
    traj_s = min(_open(driver, f"{url}#t/{first_id}", "trajectory") for _ in range(3))
    print(f"viewer {name}: {summary['trajectories']} trajectories, build {build_s:.1f} s, {summary['bytes'] / 1e6:.2f} MB "
          f"({summary['chunks']} chunk files, the largest {largest:.2f} MB; index {index_mb:.2f} MB); open: index "
          f"{index_s:.2f} s, a trajectory {traj_s:.2f} s, a blank page {blank:.2f} s -> index/blank "
          f"{index_s / blank:.1f}x")


def main() -> None:
    from tests.support.browser import browser, missing

    why = missing()
    if why:
        print(f"viewer: skipped ({why})")
        return
    with tempfile.TemporaryDirectory() as tmp, browser() as driver:
        scratch = Path(tmp)
        if Path(layout.EVAL).is_dir() and Path("params.yaml").is_file():
            measure("this run", load_params("params.yaml"), Path("."), driver, scratch)
        root = scratch / "synthetic"
        t0 = time.perf_counter()
        synthetic_run(root, N_TRAJECTORIES)
        print(f"viewer: synthetic run of {N_TRAJECTORIES} trajectories written in {time.perf_counter() - t0:.1f} s")
        params = parse_params({"variants": [variants.DEFAULT], "train": {"seeds": [0]},
                               "evaluate": {"models": ["sft"], "strategies": ["cot"]}})
        measure(f"synthetic {N_TRAJECTORIES}", params, root, driver, scratch)


if __name__ == "__main__":
    main()
