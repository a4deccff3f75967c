"""Stage `warmstart`: SFT of the base model on ToolWorld expert paths -> data/models/sft (the SFT baseline too).

The paths are played on data/tasks/warmstart.parquet (ToolWorld's train tasks, whatever tasks.source is)."""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.agent.prompts import ChatRenderer
from pipeline.config import Params
from pipeline.devices import Processes, resolve_device, resolve_precision
from pipeline.fsutil import write_json
from pipeline.models import load_tokenizer
from pipeline.runner import run_stage
from pipeline.sft import expert_dataset, link_or_copy_model, train_sft
from pipeline.task_files import load_task_file
from pipeline.toolworld.world import ToolWorld

ARGS = ()


def run(params: Params, root: Path = Path(".")) -> str:
    ws = params.warmstart
    base, out, metrics_file = root / layout.BASE_MODEL, root / layout.SFT_MODEL, root / layout.metrics_file("warmstart")
    device = resolve_device(params.agent.device)
    main = Processes(device).main  # under warmstart.launcher's processes, only the main one writes
    if not ws.enabled:
        if main:
            link_or_copy_model(base, out)
            write_json(metrics_file, {"enabled": False})
        return f"warmstart: disabled, {layout.SFT_MODEL} is the base model"
    world = ToolWorld.from_catalog(root / layout.CATALOG)
    tasks = load_task_file(root / layout.WARMSTART_TASKS, ws.max_tasks, f"warmstart-tasks:{ws.seed}")
    renderer = ChatRenderer(load_tokenizer(str(base)), params.agent.prompt_format)
    rows, stats = expert_dataset(tasks, world, renderer, paths_per_task=ws.paths_per_task, error_rate=ws.error_rate,
                                 max_length=ws.max_length, seed=ws.seed,
                                 max_observation_length=params.toolworld.max_observation_length,
                                 tool_descriptions=world.tool_descriptions())
    metrics = train_sft(base, rows, out, epochs=ws.epochs, learning_rate=ws.learning_rate,
                        batch_size=ws.batch_size, seed=ws.seed, lora=ws.lora, lora_r=ws.lora_r,
                        device=device, max_length=ws.max_length, bf16=resolve_precision(ws.precision, device) == "bf16",
                        report_to=ws.report_to, root=root, gradient_checkpointing=ws.gradient_checkpointing)
    if main:
        write_json(metrics_file, {"enabled": True, **stats, **metrics})
    return (f"warmstart: {stats['paths']} expert paths ({stats['mistakes']} recoverable mistakes, "
            f"{stats['tokens']} tokens), loss {metrics['first_loss']} -> {metrics['last_loss']} in "
            f"{metrics['steps']} steps -> {layout.SFT_MODEL}")


def main(argv: list[str] | None = None) -> int:
    return run_stage("warmstart", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
