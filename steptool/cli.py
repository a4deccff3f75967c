"""The `steptool` command: one subcommand per DVC stage, named as in `dvc.yaml` (`steptool train steptool`
runs what `dvc repro train@steptool` runs), plus tools (serve-tools, play, params, describe, ...).

The stage subcommands are built from `STAGES` with the same argparse path as `python -m stages.<name>`
(`pipeline.runner`). Every user error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from pipeline import layout, variants
from pipeline.registry import ANNOTATORS, ENVIRONMENTS, SHAPINGS, STRATEGIES
from pipeline.errors import SteptoolError
from pipeline.runner import add_common, add_stage_arguments, guard, setup_logging
from pipeline.task import SPLITS

# Every stage of dvc.yaml, in pipeline order (tests/test_architecture.py checks it against dvc.yaml).
STAGES = ("tasks", "base_model", "warmstart", "collect", "annotate", "advantages", "train", "evaluate", "report",
          "view")


def _serve_tools(args: argparse.Namespace) -> int:
    from pipeline.config import load_params
    from pipeline.toolworld.server import make_server
    from pipeline.toolworld.world import ToolWorld

    if args.replay:
        from pipeline.replay import ReplayCache

        if not Path(args.replay).exists():
            raise SteptoolError(f"{args.replay}: no such file or folder")
        world = ReplayCache.load(args.replay)
        what = f"recorded StableToolBench responses ({len(world)} calls of {len(world.apis)} functions)"
    else:
        world = ToolWorld.from_config(load_params(args.params).toolworld)
        what = f"ToolWorld ({len(world.apis)} APIs, world {world.fingerprint()})"
    server = make_server(world, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving {what} on http://{host}:{port}/virtual (Ctrl-C stops)", flush=True)
    return _serve_until_interrupted(server.serve_forever, server.server_close)


def _serve_until_interrupted(serve, close) -> int:
    try:
        serve()
    except KeyboardInterrupt:
        pass
    finally:
        close()
    return 0


def _play(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pipeline.agent.play import play
    from pipeline.config import load_params
    from pipeline.task_files import load_tasks

    params = load_params(args.params)
    if args.env:
        params = dataclasses.replace(params, env=dataclasses.replace(params.env, kind=args.env))
    root = Path(args.root)
    model = Path(args.model)
    if not (model / "config.json").exists():
        raise SteptoolError(f"{model}: not a checkpoint directory (no config.json)")
    if args.queries:
        from pipeline.formats.stabletoolbench import load_solvable_queries

        if ENVIRONMENTS.has(params.env.kind, "toolworld"):
            others = [k for k in ENVIRONMENTS.names() if not ENVIRONMENTS.has(k, "toolworld")]
            raise SteptoolError("StableToolBench queries need their own tools: pass "
                                + " or ".join(f"--env {k}" for k in others))
        tasks = load_solvable_queries(args.queries, args.max_tasks)
    else:
        tasks = load_tasks(root, args.split, args.max_tasks)
    out = Path(args.out)
    summary = play(params, root, tasks, model, out, strategy=args.strategy, n_samples=args.n_samples,
                   temperature=args.temperature, top_p=1.0, seed=0, chunk_size=16, policy_name=model.name)
    if args.queries or args.converted:
        from pipeline.formats.stabletoolbench import converted_answers
        from pipeline.fsutil import write_json
        from pipeline.replay import MISS_ERROR
        from pipeline.schema import STEPS, TRAJECTORIES, read_table

        trajs = read_table(out / "trajectories.parquet", TRAJECTORIES).to_pylist()
        steps = read_table(out / "steps.parquet", STEPS).to_pylist()
        path = Path(args.converted) if args.converted else out / "converted_answers.json"
        write_json(path, converted_answers({t.task_id: t for t in tasks}, trajs, steps))
        summary["converted_answers"] = str(path)
        calls = [s for s in steps if not s["is_finish"] and s["env_status"] == "ok"]
        if ENVIRONMENTS.has(params.env.kind, "counts_misses"):
            miss = MISS_ERROR.split("{name}")[0]
            misses = sum(miss in (s["observation"] or "") for s in calls)
            summary["replay"] = {"calls": len(calls), "misses": misses,
                                 "hit_rate": round(1 - misses / len(calls), 4) if calls else None}
    print(json.dumps(summary))
    return 0


def _audit_rewards(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from pipeline import audit_table, reward_audit
    from pipeline.config import load_params
    from pipeline.fsutil import atomic_path

    settable = ("alpha", "gamma", "step_scale", "call_cost", "failed_call_cost", "normalize")

    params = load_params(args.params)
    root = Path(args.root)
    changes = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in settable:
            raise SteptoolError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(settable)}")
        try:
            changes[key] = value if key == "normalize" else float(value)
        except ValueError:
            raise SteptoolError(f"--set {item!r}: {value!r} is not a number") from None
    shapings = list(SHAPINGS.names()) if args.shaping == ["all"] else (args.shaping or [params.rewards.shaping])
    if not ANNOTATORS.has(params.annotate.annotator, "gives_progress"):
        # a shaping that needs the oracle's progress is left out; the others still say what they pay for
        shapings = [s for s in shapings if not SHAPINGS.has(s, "needs_progress")]
    tasks = reward_audit.audit_tasks(params, root, args.max_tasks)
    gold = [t for t in tasks if t.has_gold and t.gold_calls]
    if not gold:
        raise SteptoolError(f"{root / layout.tasks_file('train')}: no train task with a gold plan to script "
                            "archetypes from (the audit needs ToolWorld tasks)")
    labelled = reward_audit.label(params, root, gold)
    summaries = []
    for shaping in shapings:
        spec = dataclasses.replace(params.rewards, shaping=shaping, **changes)
        spec.check("--set rewards")  # one line naming the key (ConfigError)
        for variant in args.variant or params.variants:
            summaries.append(reward_audit.run(params, root, variant, spec, gold, labelled)[0])
    if args.json:
        print("\n".join(json.dumps(s) for s in summaries))
    else:
        print(audit_table.table_markdown(summaries))
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(audit_table.table_markdown(summaries) + "\n", encoding="utf-8")
    return 0


def _study_save(args: argparse.Namespace) -> int:
    from pipeline.study import save_piece

    files = save_piece(Path(args.root), Path(args.dest))
    print(f"study piece: {len(files)} files -> {args.dest}")
    return 0


def _study_check(args: argparse.Namespace) -> int:
    from pipeline.config import load_params
    from pipeline.devices import cpu_amx_kernels, resolve_device
    from pipeline.study import check_answers, check_machine, run_precision

    if args.answers:
        pieces = sorted(p for p in Path(args.pieces).glob("s*") if p.is_dir())
        compared = check_answers(Path(args.answers), pieces)
        print(f"study-check: {args.answers} judges the same answers as the pieces ("
              f"{'; '.join(compared) if compared else 'nothing to compare yet'})")
        return 0
    params = load_params(Path(args.params))
    precision = run_precision(params)
    cpu = resolve_device(params.agent.device) == "cpu"
    check_machine(Path(args.pieces), precision, amx=cpu_amx_kernels() if cpu else None)
    print(f"- precision: {precision}")
    return 0


def _study_val(args: argparse.Namespace) -> int:
    from pipeline.val_grid import run_grid, write_selection

    if not args.table_only:
        run_grid(Path(args.grid), Path(args.workspace), Path(args.out), dvc=args.dvc)
    chosen = write_selection(Path(args.grid), Path(args.out))  # also when every candidate was already done
    print(f"study-val: {Path(args.out) / 'selection.md'}; chosen: {chosen['candidate'] if chosen else 'none yet'}")
    return 0


def _study_merge(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.study import merge_pieces

    root = Path(args.root)
    seeds = merge_pieces([Path(p) for p in args.pieces], root)
    trained = sorted({s for v in seeds.values() for s in v})
    params = root / "params.yaml"
    raw = yaml.safe_load(params.read_text(encoding="utf-8")) if params.exists() else {}
    raw.setdefault("train", {})["seeds"] = trained  # the report reads every merged seed, no other
    params.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    print(f"study: {len(args.pieces)} pieces merged into {root / layout.DATA}; seeds {trained}; "
          + ", ".join(f"{k}: {v or 'no seed'}" for k, v in sorted(seeds.items())))
    return 0


def _build_replay(args: argparse.Namespace) -> int:
    import json

    from pipeline.replay import build_table, leave_one_method_out
    from pipeline.schema import REPLAY_RESPONSES, write_table

    table, stats = build_table(args.folder)
    write_table(table, args.out, REPLAY_RESPONSES)
    rows = table.to_pylist()
    report = {"out": args.out, **stats, "distinct_calls": len({(r["function_name"], r["args_key"]) for r in rows}),
              "leave_one_method_out": leave_one_method_out(rows),
              "leave_one_method_out_per_query": leave_one_method_out(rows, per_query=True)}
    lomo = report["leave_one_method_out"].values()
    report["leave_one_method_out_hit_rate"] = round(sum(v["hits"] for v in lomo) / max(sum(v["calls"] for v in lomo), 1), 4)
    print(json.dumps(report, indent=2))
    return 0


def _import_annotations(args: argparse.Namespace) -> int:
    from pipeline.annotate.importer import import_reference_annotations
    from pipeline.schema import ANNOTATED_STEPS, TRAJECTORIES, write_table

    trajs, rows = import_reference_annotations(args.file, policy=args.policy)
    out = Path(args.out)
    write_table(trajs, out / "trajectories.parquet", TRAJECTORIES)
    write_table(rows, out / "steps.parquet", ANNOTATED_STEPS)
    print(f"imported {len(trajs)} trajectories, {len(rows)} annotated steps -> {out}/{{trajectories,steps}}.parquet")
    return 0


REFERENCE_EXAMPLES = "../shared/external/steptool/reward_annotation/qwen2_G123_example_5.json"


def _judge_agreement(args: argparse.Namespace) -> int:
    import dataclasses

    import json

    from pipeline.annotate import agreement
    from pipeline.config import load_params
    from pipeline.fsutil import atomic_path

    params = load_params(args.params)
    path = Path(args.examples)
    if not path.is_file():
        raise SteptoolError(f"{path}: no such file (the StepTool reference's reward_annotation JSON)")
    cfg = dataclasses.replace(params.annotate, annotator="openai",
                              **({"n_votes": args.votes} if args.votes else {}))
    cfg.check("annotate")
    cache = Path(cfg.cache_path)
    result = agreement.run(path, cfg, str(cache if cache.is_absolute() else Path(args.root) / cache))
    table = agreement.markdown(result)
    print(table, end="")
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def _serve_judge(args: argparse.Namespace) -> int:
    from pipeline.annotate.scripted_judge_server import Faults, JudgeServer

    server = JudgeServer(Faults(latency_s=args.latency, p_429=args.p_429, p_500=args.p_500, p_timeout=args.p_timeout,
                                p_malformed=args.p_malformed, p_wrong_length=args.p_wrong_length, seed=args.seed),
                         port=args.port)
    print(f"serving a test judge on {server.url} (POST /chat/completions; Ctrl-C stops)", flush=True)
    return _serve_until_interrupted(server._thread.join, server.close)


def _plan(args: argparse.Namespace) -> int:
    import json

    from pipeline.config import load_params
    from pipeline.plan import find_config, plan, render

    params = load_params(args.profile or args.params)
    root = Path(args.root)
    config = Path(args.model_config) if args.model_config else find_config(params.base_model.source, root)
    if config is None or not config.is_file():
        raise SteptoolError(f"base_model.source {params.base_model.source}: no config.json here or in the local "
                            "Hugging Face cache: give one with --model-config (the model's config.json; nothing is "
                            "downloaded)")
    result = plan(params, root, config, args.gpu_memory_gb)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _params(args: argparse.Namespace) -> int:
    from pipeline.config import describe, load_params, overrides, render_params
    from pipeline.fsutil import atomic_path

    source = args.profile or args.params
    params = load_params(source) if args.profile or Path(args.params).exists() else None
    if args.write:
        if params is None:
            raise SteptoolError(f"{source}: no such file")
        with atomic_path(Path(args.write)) as tmp:
            tmp.write_text(render_params(params), encoding="utf-8")
        changed = sorted(_leaves(overrides(params)))
        print(f"{args.write}: written from {source} ({len(changed)} keys differ from the defaults"
              f"{': ' + ', '.join(changed) if changed else ''})")
        return 0
    if params is not None:
        print(f"{source}: valid")
    elif args.check:
        raise SteptoolError(f"{source}: no such file")
    if args.check:
        return 0
    for key, help_, default in describe():
        print(f"{key} (default {default!r})\n    {help_}")
    return 0


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def _number(lo: float, hi: float):
    """An argparse type: a finite number in [lo, hi] (argparse turns the ValueError into one usage line)."""
    import math

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(text)
        return value

    parse.__name__ = f"number in [{lo:g}, {hi:g}]"
    return parse


def _port(text: str) -> int:
    """argparse type of a TCP port: 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _describe(args: argparse.Namespace) -> int:
    from pipeline.schema import describe

    path = Path(args.file)
    if not path.exists():
        raise SteptoolError(f"{path}: no such file")
    print(describe(path))
    return 0


def _dvc_deps(args: argparse.Namespace) -> int:
    from pipeline.depgraph import closure, differences, rewrite
    from pipeline.fsutil import atomic_path

    dvc_yaml = Path(args.dvc_yaml)
    if not dvc_yaml.is_file():
        raise SteptoolError(f"{dvc_yaml}: no such file")
    if args.module:
        print("\n".join(closure(args.module, dvc_yaml.parent)))
        return 0
    if args.write:
        with atomic_path(dvc_yaml) as tmp:
            tmp.write_text(rewrite(dvc_yaml), encoding="utf-8")
    lines = differences(dvc_yaml)
    if lines:
        raise SteptoolError("the code deps are not the stages' imports:\n" + "\n".join(lines)
                            + "\n(`steptool dvc-deps --write` rewrites them)")
    print(f"{dvc_yaml}: every stage's code deps are its import closure")
    return 0


def _pass_rate(args: argparse.Namespace) -> int:
    import json

    from pipeline.evaluate.passrate import method_pass_rates

    print(json.dumps(method_pass_rates(args.folder), indent=None if args.compact else 2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steptool",
        description="StepTool: step-grained RL for tool-using LLM agents. The first commands are the pipeline's "
                    "stages, named as in dvc.yaml (`dvc repro` runs them in order); the rest are tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGES:
        module = importlib.import_module(f"stages.{name}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=" ".join(doc.split("\n\n")[0].split()), description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_stage_arguments(p, module.run, module.ARGS)
    p = sub.add_parser("serve-tools", help="serve ToolWorld over StableToolBench's HTTP contract (POST /virtual)",
                       description="Serve the ToolWorld of params.yaml over HTTP, as a StableToolBench server does.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--params", default="params.yaml", help="params file whose toolworld section to serve")
    p.add_argument("--replay", help="serve recorded real StableToolBench responses instead (a pass_rate_results "
                                    "folder or a build-replay Parquet table); unrecorded calls answer with an error")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    p.set_defaults(func=_serve_tools)
    p = sub.add_parser("play", help="run the agent on a split and print parse-success and rule pass rate",
                       description="Play ToolWorld tasks with a model (the agent and env of params.yaml) and write "
                                   "trajectories to --out; prints the summary as JSON. A quick check before the "
                                   "evaluate stage.")
    add_common(p)
    p.add_argument("--model", default=str(layout.SFT_MODEL), help=f"checkpoint directory (default {layout.SFT_MODEL})")
    p.add_argument("--split", default="test", choices=list(SPLITS))
    p.add_argument("--out", required=True, help="output directory for trajectories/steps/tokens.parquet")
    p.add_argument("--max-tasks", type=int, default=0, help="play the first N tasks only (0: all)")
    p.add_argument("--strategy", default="cot", choices=list(STRATEGIES.names()))
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--n-samples", type=int, default=1)
    p.add_argument("--env", choices=list(ENVIRONMENTS.names()), help="override env.kind of the params file")
    p.add_argument("--queries", help="play a StableToolBench solvable-query file (e.g. .../G1_instruction.json) "
                                     "instead of a ToolWorld split; needs --env replay or http")
    p.add_argument("--converted", help="also write the trajectories in StableToolBench's converted-answer format "
                                       "here (default with --queries: OUT/converted_answers.json)")
    p.set_defaults(func=_play)
    p = sub.add_parser("audit-rewards", help="what a reward pays for: scripted archetypes' returns per shaping",
                       description="The reward audit (docs/architecture.md, \"Reward audit\"): for every train task, "
                                   "script a direct gold solve, one redundant repeat, one irrelevant call, calls until "
                                   "the action budget ends, a partial answer and an early give-up; play them through "
                                   "ToolWorld (data/tools/catalog.json), label them with the configured annotator "
                                   "(an LLM judge through its cache and cost estimate) and score them by the reward "
                                   "of params.yaml, or of each --shaping with --set changes. Prints one row per "
                                   "shaping and variant: the share of tasks where padding or never answering "
                                   "earns more than the direct solve, and where Finish beats one more call right "
                                   "after the gold plan. Needs the tasks stage's outputs (dvc repro tasks).")
    add_common(p)
    p.add_argument("--variant", action="append", choices=list(variants.names()),
                   help="a training variant (repeatable; default: params.yaml's variants)")
    p.add_argument("--shaping", action="append", choices=[*SHAPINGS.names(), "all"],
                   help="rewards.shaping to audit (repeatable; 'all': every one; default: params.yaml's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a rewards key for the audit, e.g. --set step_scale=0.2 --set call_cost=0.05")
    p.add_argument("--max-tasks", type=int, default=None,
                   help="the first N train tasks of each level (default rewards.audit_max_tasks; 0: all)")
    p.add_argument("--json", action="store_true", help="one JSON summary per line instead of the table")
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.set_defaults(func=_audit_rewards)
    p = sub.add_parser("study-save", help="keep a finished study piece's report inputs (make study-piece)",
                       description="Copy what the report stage reads (evaluation results, round tables, metrics, "
                                   "training curves, greedy replays; no models or trajectories) from a finished "
                                   "run's workspace to DEST, replacing it whole (pipeline/study.py).")
    p.add_argument("dest", help="e.g. reports/study/pieces/s0")
    p.add_argument("--root", default=".", help="the run's workspace (default: the current folder)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_study_save)
    p = sub.add_parser("study-check", help="refuse a study piece this machine would make in another precision",
                       description="Resolve the run's precision keys on this machine and compare them with what the "
                                   "pieces under PIECES recorded (their RUN.md); exits 2 naming the first piece that "
                                   "differs, else prints the RUN.md line (make study-piece runs it first). With "
                                   "--answers WORKSPACE: compare the results WORKSPACE shares with the pieces (sft's "
                                   "evaluation, the seed's greedy replay before training) with theirs, and exit 2 "
                                   "naming the first that differs (make study-piece runs it before training).")
    p.add_argument("pieces", help="the pieces' folder, e.g. reports/study/pieces")
    p.add_argument("--params", default="params.yaml", help="the piece's params (default: params.yaml)")
    p.add_argument("--answers", metavar="WORKSPACE", default=None,
                   help="a half-made piece's workspace whose shared results to compare with the pieces'")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_study_check)
    p = sub.add_parser("study-val", help="choose the study's settings on val: run a grid of candidates (make study-val)",
                       description="Run every candidate of a grid file (configs/study-val.yaml: a base profile, the "
                                   "keys all share, each candidate's changes; always evaluate.split val) through "
                                   "`dvc repro` in WORKSPACE, a clone of this repository, one after the other so DVC's "
                                   "cache there reuses what they share; keep each one's report inputs in "
                                   "OUT/<candidate>/ with RUN.md (a finished candidate is skipped: rerun to resume) "
                                   "and write OUT/selection.md and selection.json, the candidate chosen by the grid's "
                                   "rule once all have run (pipeline/val_grid.py).")
    p.add_argument("grid", help="the grid file, e.g. configs/study-val.yaml")
    p.add_argument("--workspace", default="build/study-val", help="the clone the candidates run in")
    p.add_argument("--out", default=str(layout.STUDY_VAL), help="where the candidates' results and the table go")
    p.add_argument("--dvc", default="dvc", help="the dvc executable")
    p.add_argument("--table-only", action="store_true", help="only rewrite the selection table from OUT")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_study_val)
    p = sub.add_parser("study-merge", help="lay several study pieces out as one run, for the report stage",
                       description="Copy the pieces' files into ROOT/data side by side (one training seed each), "
                                   "concatenate their evaluation results (sft once: the pieces must agree on it) "
                                   "and set ROOT/params.yaml's train.seeds to the merged seeds; then "
                                   "`python -m stages.report` there reports over every seed (make study-report).")
    p.add_argument("pieces", nargs="+", help="piece folders (reports/study/pieces/s<k>)")
    p.add_argument("--root", default=".", help="the workspace to merge into (default: the current folder)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_study_merge)
    p = sub.add_parser("build-replay", help="index real StableToolBench responses for the replay environment",
                       description="Read every call in a pass_rate_results folder (<method>/<subset>.json answer_steps) "
                                   "into a Parquet table for env.kind=replay, and print how many calls of each "
                                   "method a table built from the other methods answers (leave-one-method-out).")
    p.add_argument("folder", help="a pass_rate_results folder (<method>/<subset>.json), or StableToolBench's "
                                  "tool_response_cache (<category>/<tool>_for_<category>/<api>.json)")
    p.add_argument("--out", default=str(layout.REPLAY_TABLE))
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_build_replay)
    p = sub.add_parser("import-annotations", help="import the StepTool reference's reward-annotation JSON",
                       description="Read a reward-annotation file of the StepTool reference (e.g. "
                                   "qwen2_G123_example_5.json) into trajectories.parquet and annotated steps.parquet, "
                                   "votes averaged as the openai annotator does.")
    p.add_argument("file")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--policy", default="reference", help="name recorded as the acting policy")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_import_annotations)
    p = sub.add_parser("judge-agreement", help="our judge prompt vs the reference's, against its released labels",
                       description="Label the StepTool reference's released annotation examples (default: "
                                   f"{REFERENCE_EXAMPLES}, 5 trajectories x 3 GPT-4 runs) with the openai "
                                   "annotator of params.yaml twice, with our prompt (annotate.prompt ours) and "
                                   "the reference's verbatim (reference), and print how far each agrees with the "
                                   "released labels and with the other: SuccCalling agreement, Contribution mean "
                                   "absolute difference and correlation, status agreement, and the released runs "
                                   "with each other as a ceiling (pipeline/annotate/agreement.py). The endpoint, "
                                   "model, key variable, cache and cost cap are annotate's; nothing is paid twice.")
    add_common(p)
    p.add_argument("examples", nargs="?", default=REFERENCE_EXAMPLES,
                   help="a reward_annotation JSON of the reference (query, answer_steps, final_step, process_reward, "
                        "is_solved per record)")
    p.add_argument("--votes", type=int, default=0, help="judge calls per trajectory (default annotate.n_votes)")
    p.add_argument("--out", help="also write the comparison as JSON to this file")
    p.set_defaults(func=_judge_agreement)
    p = sub.add_parser("serve-judge", help="serve a scripted OpenAI-compatible judge (tests, demos, benchmarks)",
                       description="An OpenAI-compatible /v1/chat/completions judge on 127.0.0.1 that answers "
                                   "evaluate_process_reward (the annotator), check_answer_status and "
                                   "parse_answer_status (the pass-rate judge) from the request, with injectable faults.")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--latency", type=_number(0.0, 600.0), default=0.0, help="seconds added to every answer (0-600)")
    for name in ("429", "500", "timeout", "malformed", "wrong-length"):
        p.add_argument(f"--p-{name}", type=_number(0.0, 1.0), default=0.0, dest=f"p_{name.replace('-', '_')}",
                       help=f"probability of a {name} fault per call (0-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_serve_judge)
    p = sub.add_parser("pass-rate", help="pass rate of a StableToolBench pass_rate_results/<method> folder, as JSON",
                       description="Read every <subset>.json of a pass_rate_results/<method> folder (judged answers, "
                                   "'is_solved' per run) and print one JSON object: each subset's pass rate in percent "
                                   "(mean and population std over the judging runs, (#Solved + 0.5 #Unsure) / "
                                   "#queries) and the groups I1, I2, I3 (mean of their subsets).")
    p.add_argument("folder")
    p.add_argument("--compact", action="store_true", help="one line instead of indented JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_pass_rate)
    p = sub.add_parser("plan", help="memory per device and disk a params file needs, before anything runs",
                       description="Estimate, for the params (or a profile) and the base model's config.json, the GPU "
                                   "memory per device of the warm start, the PPO update and the round's precompute "
                                   "(weights, gradients, optimizer, activations, logits) under train.launcher's "
                                   "engine (one process, DDP, ZeRO-2/3, FSDP), and the disk for checkpoints and "
                                   "models; says which stage does not fit and what to change (pipeline/plan.py has "
                                   "the formulas).")
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument("--profile", help="a profile instead (e.g. profiles/gpu.yaml), on top of the defaults")
    p.add_argument("--model-config", help="the base model's config.json (default: data/models/base/, a local folder "
                                          "or the local HF cache of base_model.source)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one device, GB (default 80)")
    p.add_argument("--root", default=".", help="directory that holds data/ and configs/ (default: the current one)")
    p.add_argument("--json", action="store_true", help="the numbers as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_plan)
    p = sub.add_parser("params", help="list every knob of params.yaml with its help and default; validate the file",
                       description="Validate the params file and list every key with its default and help. "
                                   "With --write, write a complete params file (every key, helps as comments) for "
                                   "the file given, e.g. `steptool params --profile profiles/gpu.yaml --write "
                                   "params.yaml` before `dvc repro` at the paper's scale: a profile holds only "
                                   "the keys it changes, DVC needs them all.")
    p.add_argument("--params", default="params.yaml", help="the params file to validate (default: params.yaml)")
    p.add_argument("--profile", help="a profile (e.g. profiles/gpu.yaml): only the keys that differ from the "
                                     "defaults; validated on top of the defaults")
    p.add_argument("--write", metavar="FILE", help="write the complete params (defaults + --profile, or --params) "
                                                   "to FILE")
    p.add_argument("--check", action="store_true", help="only validate (one line; exit 2 naming the key when "
                                                        "invalid): `make repro` runs it before DVC can remove outputs")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_params)
    p = sub.add_parser("dvc-deps", help="check (or write) that each dvc.yaml stage lists exactly the code it imports",
                       description="A stage's code deps in dvc.yaml must be exactly the repository files its process "
                                   "may import: the static import closure of stages/<name>.py, every import counted "
                                   "(module level or inside a function), packages' __init__.py included "
                                   "(pipeline/depgraph.py). Without options, check and name every difference (exit "
                                   "2); --write rewrites the code part of each stage's deps first (data and config "
                                   "deps stay as written); --module prints one module's closure (the import graph).")
    p.add_argument("--dvc-yaml", default="dvc.yaml", help="the pipeline file (default: dvc.yaml)")
    p.add_argument("--write", action="store_true", help="rewrite the code deps, then check")
    p.add_argument("--module", help="print this module's import closure instead, e.g. stages.collect")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_dvc_deps)
    p = sub.add_parser("describe", help="what each column of a Parquet artifact means")
    p.add_argument("file")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_describe)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    return guard(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
