"""A training run of one variant and seed: `train.rounds` rounds of step-grained PPO from the warm-started policy,
resumable, with each round's data written beside its model (the `train` stage runs `train_run`; docs/architecture.md,
"Seeds and rounds").

Round 1 trains on collect@SEED's trajectories with advantages@VARIANT-SEED's rewards. Round k >= 2 first
collects the same train tasks with round k-1's policy, annotates them and computes the variant's rewards
(pipeline/collection.py, pipeline/annotate/run.py and pipeline/advantages.py: the code of those stages), then
trains from that policy (`train_round`: the model with its value head, the round's examples, the PPO trainer of
trainer/step_ppo.py, whose round starts in trainer/ppo_round.py).

The run's work lives in data/checkpoints/<VARIANT>/s<SEED> until it is done (each finished round's data and model;
the running round's trainer checkpoints every `train.save_steps` optimizer steps, optimizer, scheduler and RNG
state included). A rerun with the same inputs skips finished rounds, resumes the running one and ends with the
weights an uninterrupted run would have; other inputs start over.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl

from pipeline import advantages, collection, layout
from pipeline.agent.name_constraint import NameConstraint, function_name_slot
from pipeline.agent.prompts import ChatRenderer
from pipeline.annotate.run import annotate_folder
from pipeline.apidoc import function_specs
from pipeline.config import Params, to_dict
from pipeline.devices import Processes, resolve_device, resolve_precision, training_dtype
from pipeline.errors import SteptoolError
from pipeline.fsutil import atomic_path, write_json
from pipeline.schema import ADVANTAGES, ROUND_STEPS, STEPS, TOKENS, read_table, write_table
from pipeline.task_files import load_tasks
from pipeline.tracking import reporting

LOGGED = ("policy_loss", "value_loss", "approx_kl", "clipfrac", "explained_variance", "reward_mean",
          "advantage_mean", "kl_ref", "kl_ref_token", "entropy", "tokens_per_s", "loss", "grad_norm", "learning_rate")


def _run_key(params: Params, variant: str, seed: int, files: list[Path]) -> str:
    """What the run's work depends on: the params that shape any round, and the round-1 inputs' contents."""
    p = params
    train = {k: v for k, v in to_dict(p.train).items() if k != "seeds"}  # adding a seed keeps the others' work
    h = hashlib.sha256(json.dumps([variant, seed, train, to_dict(p.collect), to_dict(p.annotate),
                                   to_dict(p.rewards), to_dict(p.agent), to_dict(p.env)], sort_keys=True).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        h.update(f.read_bytes()[:1 << 20])
    return h.hexdigest()[:16]


def task_name_slots(root: Path, fmt: str) -> dict:
    """{task id: its function-name slot} for the train tasks, the functions as the environment offers them
    (`ApiListEnv.functions`: the task's API list) and the collection's slot (pipeline/agent/rollout.py)."""
    return {t.task_id: function_name_slot(fmt, [f["name"] for f in function_specs(t.api_list)])
            for t in load_tasks(root, "train")}


def train_round(params: Params, root: Path, variant: str, seed: int, start: Path, trajectories: Path,
                adv_file: Path, work: Path, ref: Path | None = None) -> tuple[dict, list[dict]]:
    """One PPO round from the checkpoint `start` on the trajectories in `trajectories` with the rewards of
    `adv_file`, with the KL to `ref` (default: `start`): the model -> `work`/model, the round table ->
    `work`/round.parquet. Returns (metrics, history)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import StepPPOConfig
    from trainer.data import attach_name_constraints, examples_from_tables
    from trainer.model import PolicyWithValue
    from trainer.ppo_round import round_table
    from trainer.step_ppo import StepPPOTrainer

    t = params.train
    steps = pl.from_arrow(read_table(layout.table(trajectories, "steps"), STEPS))
    tokens = pl.from_arrow(read_table(layout.table(trajectories, "tokens"), TOKENS))
    rewards = pl.from_arrow(read_table(adv_file, ADVANTAGES))
    tok = AutoTokenizer.from_pretrained(start)
    examples, stats = examples_from_tables(steps, tokens, rewards, ChatRenderer(tok, params.agent.prompt_format),
                                           t.max_length)
    if t.name_logprobs == "constrained":  # the log-probs the agent sampled from (docs/architecture.md)
        stats.update(attach_name_constraints(examples, task_name_slots(root, params.agent.prompt_format),
                                             NameConstraint(tok)))
    if not examples:
        raise SteptoolError(f"{adv_file}: no trajectory to train on ({stats['trajectories']} read, "
                            f"{stats['too_long']} longer than train.max_length = {t.max_length} even with every "
                            f"observation shortened)")
    device = resolve_device(params.agent.device)
    ref_model = None
    if ref is not None and ref.resolve() != start.resolve():  # rounds 2+: the KL's reference stays the SFT policy
        # loaded whole before the training arguments exist: under ZeRO-3 a model loaded after them is partitioned
        # (zero.Init) and only a DeepSpeed engine could run it; the reference only runs forward, in the precompute
        ref_model = PolicyWithValue(AutoModelForCausalLM.from_pretrained(
            ref, dtype=training_dtype(t.precision, device, trains=False)))
    ckpt = work / "trainer"
    whole = complete_checkpoints(ckpt)
    resume = bool(whole)
    # the section as is (its keys are TrainingArguments' names), plus what the stage decides
    procs = Processes(device)
    tracking, callbacks = reporting(t.report_to, root, "train", f"{layout.run_name(variant, seed)}/{work.name}",
                                    main=procs.main, resume=resume)
    cfg = StepPPOConfig(
        **{**to_dict(t), **tracking}, gamma=params.rewards.gamma, variant=variant, seed=seed, output_dir=str(ckpt), use_cpu=device == "cpu",
        bf16=resolve_precision(t.precision, device) == "bf16", lr_scheduler_type="constant", warmup_steps=0,
        data_seed=seed, save_strategy="steps", logging_steps=1, disable_tqdm=False, dataloader_num_workers=0,
        train_sampling_strategy="group_by_length")  # similar lengths: less padding
    # the policy after the training arguments: under ZeRO-3 they make transformers load it partitioned across the
    # processes (deepspeed.zero.Init) instead of a full fp32 copy in every process's host memory
    wrapped = PolicyWithValue(load_policy(start, t, device, sft=root / layout.SFT_MODEL),
                              value_grad_to_trunk=t.value_grad_to_trunk)
    trainer = StepPPOTrainer(wrapped, cfg, examples, pad_id=tok.pad_token_id, callbacks=callbacks,
                             ref_model=ref_model)
    result = trainer.train(resume_from_checkpoint=str(whole[-1]) if whole else None)
    trainer.save_policy(work / "model", tok)  # gathered from every process, written by the main one
    ratios = trainer.step_ratios()  # collective
    after = trainer.logprobs_after()  # collective: one more forward pass over the round
    if trainer.accelerator.is_main_process:
        write_table(round_table(examples, trainer.train_dataset.items, variant, ratios, after), work / "round.parquet",
                    ROUND_STEPS)
    history = [{k: h[k] for k in ("step", *LOGGED) if k in h} for h in trainer.state.log_history if "policy_loss" in h]
    last = history[-1] if history else {}
    metrics = {"variant": variant, "seed": seed, **stats, "examples": len(examples),
               "optimizer_steps": trainer.state.global_step,
               "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1), "resumed": resume,
               **{k: round(v, 6) if isinstance(v, float) else v for k, v in trainer.round_stats.items()},
               **{f"final_{k}": last[k] for k in LOGGED if k in last}}
    for k in ("reward_mean", "approx_kl", "clipfrac", "explained_variance", "kl_ref"):
        vals = [h[k] for h in history if k in h and h[k] == h[k]]
        if vals:
            metrics[f"mean_{k}"] = round(sum(vals) / len(vals), 6)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        shutil.rmtree(ckpt, ignore_errors=True)
    return metrics, history


def load_policy(start: Path, t, device: str, sft: Path | None = None):
    """The policy to train, from the checkpoint `start`: every weight in fp32, or under `t.lora` LoRA adapters
    (fp32: peft keeps adapters in fp32 over a bf16 base) on a frozen base in the forward dtype (`training_dtype`).
    A LoRA checkpoint of an earlier round (`start` holds its adapter) is continued on the SFT model `sft`, not
    stacked on the merged weights: every round's policy stays the SFT model plus one adapter, which is what a
    server with the SFT model loaded (vLLM) can serve."""
    from transformers import AutoModelForCausalLM

    from trainer.model import trainable_in_fp32, with_lora

    dtype = training_dtype(t.precision, device, trains=not t.lora)
    adapter = Path(start) / layout.LORA_ADAPTER
    if t.lora and adapter.is_dir():
        from peft import PeftModel

        if sft is None:
            raise SteptoolError(f"{start}: a LoRA checkpoint continues on the SFT model: give its folder")
        return trainable_in_fp32(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft, dtype=dtype),
                                                           adapter, is_trainable=True))
    model = AutoModelForCausalLM.from_pretrained(start, dtype=dtype)
    return with_lora(model, t.lora_r) if t.lora else model


def complete_checkpoints(folder: Path) -> list[Path]:
    """The trainer checkpoints under `folder` that a kill left whole, oldest first. transformers writes
    trainer_state.json last, so a checkpoint without it (or with half of it) was cut short: it is removed,
    and the run resumes from the one before instead of failing to load it."""
    whole = []
    for d in folder.glob("checkpoint-*"):
        try:
            json.loads((d / "trainer_state.json").read_text())
            whole.append(d)
        except (OSError, ValueError):
            shutil.rmtree(d, ignore_errors=True)
    return sorted(whole, key=lambda d: int(d.name.rsplit("-", 1)[1]))


def run_round(params: Params, root: Path, variant: str, seed: int, k: int, start: Path, work: Path,
              procs: Processes) -> dict:
    """Round k of the run in its work folder: (from round 2) collect, annotate and the rewards with the policy
    at `start`, then the PPO round, then (with `collect.replay`) the trained policy's greedy replay. Under a
    multi-process launcher only the training runs on every process; the rest runs on the main one while the
    others poll for its result files (`Processes.wait_for`: no collective's timeout on an hours-long wait)."""
    work.mkdir(parents=True, exist_ok=True)
    extra: dict = {"round": k}
    if k == 1:
        trajectories, adv_file = root / layout.trajectories_dir(seed), root / layout.advantages_file(variant, seed)
        annotated = root / layout.annotated_dir(seed)
    else:
        trajectories, annotated, adv_file = work / "trajectories", work / "annotated", work / "advantages.parquet"
        ready = work / "inputs.json"  # the main process's sign that this round's inputs are written
        if procs.main:
            ready.unlink(missing_ok=True)  # an earlier attempt's
        procs.wait()
        if procs.main:
            extra["collect"] = collection.collect(params, root, start, trajectories, seed, f"{variant}-r{k - 1}",
                                              replay=False)  # the previous round's replay is this policy's
            extra["annotate"] = annotate_folder(params, root, trajectories, annotated, work / "annotate.json")
            extra["advantages"] = advantages.write_advantages(params, layout.table(annotated, "steps"), adv_file, variant)
            write_json(ready, extra)
        procs.wait_for(ready)  # hours of collection and annotation: no barrier's timeout
    check_rewards_match(adv_file, layout.table(annotated, "steps"), layout.table(trajectories, "steps"))
    metrics, history = train_round(params, root, variant, seed, start, trajectories, adv_file, work,
                                   ref=root / layout.SFT_MODEL)  # the KL's reference in every round
    metrics = {**extra, **metrics}
    if procs.main:
        if params.collect.replay:
            metrics["replay"] = collection.replay_tasks(params, root, collection.collect_tasks(params, root, seed),
                                                    work / "model", layout.replay_dir(work), f"{variant}-r{k}")
        write_json(work / "history.json", history)
        write_json(work / layout.ROUND_DONE, metrics)
    procs.wait_for(work / layout.ROUND_DONE)  # the replay may take long too
    return metrics


def check_rewards_match(adv_file: Path, annotated: Path, collected: Path) -> None:
    """The rewards to train on are those of this round's annotation, every trajectory of it and nothing else, and
    every one was collected: a stale or hand-made advantages table is refused before any training."""
    import pyarrow.parquet as pq

    def ids(path: Path) -> set[str]:
        if not path.exists():
            raise SteptoolError(f"{path}: no such file (run the stages before train: dvc repro)")
        return set(pq.read_table(path, columns=["traj_id"]).column("traj_id").to_pylist())

    have, labelled, played = ids(adv_file), ids(annotated), ids(collected)
    for name, extra in (("not collected", sorted(have - played)), ("not annotated", sorted(have - labelled)),
                        ("annotated but missing here", sorted(labelled - have))):
        if extra:
            raise SteptoolError(f"{adv_file}: {len(extra)} trajectories {name} ({', '.join(extra[:3])}"
                                f"{', ...' if len(extra) > 3 else ''}; {annotated} has {len(labelled)}): the "
                                "rewards do not belong to this round's annotation; rerun the advantages stage")


def publish_round(work: Path, out: Path) -> None:
    """The small artifacts of a finished round -> `out` (data/rounds/<variant>/s<seed>/r<k>); weights stay behind."""
    out.mkdir(parents=True, exist_ok=True)
    for name in layout.ROUND_FILES:
        shutil.copy2(work / name, out / name)
    for sub in ("annotated", "replay"):
        for name in ("steps.parquet", layout.ANNOTATION_FAILURES, "results.parquet"):
            if (work / sub / name).exists():
                (out / sub).mkdir(exist_ok=True)
                shutil.copy2(work / sub / name, out / sub / name)


def train_run(params: Params, root: Path, variant: str, seed: int) -> str:
    """The whole run of `variant` from `seed` (the train stage): every round, resumable, then the model, round
    tables, training log and metrics in their places under `root`; the one-line summary."""
    t = params.train
    if seed not in t.seeds:
        raise SteptoolError(f"seed {seed} is not one of train.seeds {t.seeds}")
    sft, work = root / layout.SFT_MODEL, root / layout.checkpoint_dir(variant, seed)
    key = _run_key(params, variant, seed, [sft / "model.safetensors",
                                          root / layout.table(layout.trajectories_dir(seed), "tokens"),
                                          root / layout.advantages_file(variant, seed)])
    key_file = work / "run_key.txt"
    procs = Processes(resolve_device(params.agent.device))
    if procs.main:
        if work.exists() and (not key_file.exists() or key_file.read_text() != key):
            shutil.rmtree(work)  # the work of other inputs: start over
        work.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key)
    procs.wait()
    start, per_round, history, resumed = sft, [], [], []
    for k in range(1, t.rounds + 1):
        rwork = work / f"r{k}"
        if (rwork / layout.ROUND_DONE).exists():
            metrics = json.loads((rwork / layout.ROUND_DONE).read_text())
            resumed.append(k)
        else:
            metrics = run_round(params, root, variant, seed, k, start, rwork, procs)
        offset = history[-1]["step"] if history else 0  # one x axis over the rounds
        history += [{**h, "step": h["step"] + offset, "round": k}
                    for h in json.loads((rwork / "history.json").read_text())]
        per_round.append(metrics)
        start = rwork / "model"
    if not procs.main:
        return f"train ({variant}, seed {seed}): process {procs.rank} of {procs.world} done"
    with atomic_path(root / layout.rounds_dir(variant, seed)) as tmp:
        for k in range(1, t.rounds + 1):
            publish_round(work / f"r{k}", tmp / f"r{k}")
    with atomic_path(root / layout.model_dir(variant, seed)) as tmp:
        shutil.copytree(start, tmp)
    write_json(root / layout.train_plot(variant, seed), history)
    last = per_round[-1]
    summary = {k: v for k, v in last.items() if k not in ("collect", "annotate", "advantages", "replay")}
    summary.update(rounds=t.rounds, resumed_rounds=resumed, optimizer_steps=sum(m["optimizer_steps"] for m in per_round),
                   train_runtime_s=round(sum(m["train_runtime_s"] for m in per_round), 1))
    write_json(root / layout.metrics_file("train", layout.run_name(variant, seed)), summary)
    shutil.rmtree(work, ignore_errors=True)  # done: the model is in data/models/<variant>/s<seed>
    return (f"train ({variant}, seed {seed}): {t.rounds} round(s), {last['examples']} trajectories in the last, "
            f"{summary['optimizer_steps']} optimizer steps{f' (rounds {resumed} were done)' if resumed else ''}, "
            f"{summary['train_runtime_s']} s -> {layout.model_dir(variant, seed)}")
