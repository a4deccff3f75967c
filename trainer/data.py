"""Training examples: a trajectory rendered to token ids with an action mask and step boundaries, its
per-step rewards, and (when recorded) the behaviour log-prob of every action token.

The ids are the ones generation saw (ChatRenderer segments: the step-0 prompt text, then each action's
own ids, then each observation segment). Truncation to `max_length` keeps the system prompt and the
query and shortens the oldest observations first; a trajectory that still does not fit is dropped whole
(counted by its number of steps). Its end is never cut: the last step carries IsSolved, and a trajectory
without it would teach that stopping early earns a terminal reward of 0 for the wrong reason.
"""
from __future__ import annotations

import ast
import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.agent.name_constraint import NameConstraint
from pipeline.agent.policy import NameSlot
from pipeline.agent.prompts import ChatRenderer
from pipeline.errors import SchemaError

if TYPE_CHECKING:
    import polars as pl  # imported where the tables are read: the trainer itself runs without it (bench/gpu.py)

CUT_OBSERVATION = "(observation removed to fit the context)"


@dataclass
class Example:
    traj_id: str
    input_ids: list[int]
    action_mask: list[int]  # 1 on action tokens
    step_bounds: list[tuple[int, int]]  # [start, end) of each kept action
    rewards: list[float]  # one per kept step
    behaviour_logprobs: list[float] | None = None  # one per action token (kept steps), when usable
    truncated: bool = False  # some observations were shortened to fit
    group: str = ""  # the task it attempts (samples of one task share it; '' = its own group)
    extra: dict = field(default_factory=dict)
    # action token (0..N-1, over the kept steps) -> the ids the name constraint allowed there (attach_name_constraints)
    allowed: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        if not self.group:
            self.group = self.traj_id

    @property
    def token_step(self) -> list[int]:
        """Step index of each token (−1 outside actions)."""
        out = [-1] * len(self.input_ids)
        for k, (a, b) in enumerate(self.step_bounds):
            out[a:b] = [k] * (b - a)
        return out


def attach_name_constraints(examples: list[Example], slots: dict[str, NameSlot], names: NameConstraint) -> dict:
    """Set each example's `allowed`: the sets the name constraint allowed at its action tokens, recomputed from the
    action ids with the slot of its task (`slots`, by task id = `Example.group`). Returns the counts (constrained
    tokens, forced ones: a single allowed id). An action token outside its set was not sampled under this
    constraint (collected without it, or imported): an error naming the trajectory, step and token."""
    constrained = forced = 0
    for ex in examples:
        slot = slots.get(ex.group)
        if slot is None:
            raise SchemaError(f"trajectory {ex.traj_id}: task {ex.group!r} is not among the train tasks, where "
                              "the function names come from")
        allowed: dict[int, list[int]] = {}
        n = 0
        for k, (a, b) in enumerate(ex.step_bounds):
            ids = ex.input_ids[a:b]
            for j, ok in names.per_action_token(ids, slot).items():
                if ids[j] not in ok:
                    raise SchemaError(
                        f"trajectory {ex.traj_id}, step {k}: action token {j} ({names.token_text[ids[j]]!r}) is not "
                        "one the function-name constraint allows there, so this action was not sampled under it: "
                        "use train.name_logprobs: model for trajectories collected without agent.constrain_names")
                allowed[n + j] = ok
                forced += len(ok) == 1
            n += b - a
        ex.allowed = allowed
        constrained += len(allowed)
    return {"name_tokens_constrained": constrained, "name_tokens_forced": forced}


def render_truncated(renderer: ChatRenderer, prefix: str, actions: list[list[int]], observations: list[str],
                     ended: list[bool], max_length: int):
    """(Rendered, observations blanked), or None when the trajectory does not fit even with every observation
    shortened (the caller drops it whole: never its final steps)."""
    obs = list(observations[: len(actions) - 1])
    rendered = renderer.render_from_prefix(prefix, actions, obs, ended)
    blanked = 0
    while len(rendered.input_ids) > max_length and blanked < len(obs):
        obs[blanked] = CUT_OBSERVATION
        blanked += 1
        rendered = renderer.render_from_prefix(prefix, actions, obs, ended)
    if len(rendered.input_ids) > max_length:
        return None
    return rendered, blanked


def examples_from_tables(steps: pl.DataFrame, tokens: pl.DataFrame, rewards: pl.DataFrame, renderer: ChatRenderer,
                         max_length: int) -> tuple[list[Example], dict]:
    """steps (steps.parquet), tokens (tokens.parquet), rewards (traj_id, step_idx, reward) -> examples, stats."""
    joined = (steps.select("traj_id", "task_id", "step_idx", "prompt_text", "observation")
              .join(tokens.select("traj_id", "step_idx", "action_ids", "logprobs", "ended"), on=["traj_id", "step_idx"],
                    how="inner")
              .join(rewards.select("traj_id", "step_idx", "reward"), on=["traj_id", "step_idx"], how="inner")
              .sort("traj_id", "step_idx"))
    examples, stats = [], {"trajectories": 0, "truncated": 0, "too_long": 0, "too_long_by_steps": {}}
    for (tid,), g in joined.group_by(["traj_id"], maintain_order=True):
        rows = g.to_dicts()
        if [r["step_idx"] for r in rows] != list(range(len(rows))):
            raise SchemaError(f"trajectory {tid}: steps {[r['step_idx'] for r in rows]} are not 0..n-1 "
                              "(steps, tokens and rewards must cover the same steps)")
        actions = [list(r["action_ids"]) for r in rows]
        out = render_truncated(renderer, rows[0]["prompt_text"], actions, [r["observation"] or "" for r in rows],
                               [bool(r["ended"]) for r in rows], max_length)
        stats["trajectories"] += 1
        if out is None:
            stats["too_long"] += 1
            by = stats["too_long_by_steps"]
            by[str(len(rows))] = by.get(str(len(rows)), 0) + 1
            continue
        rendered, blanked = out
        behaviour = None
        if not blanked:
            behaviour = [float(x) for r in rows for x in r["logprobs"]]
        stats["truncated"] += bool(blanked)
        examples.append(Example(tid, rendered.input_ids, rendered.action_mask, rendered.step_bounds,
                                [float(r["reward"]) for r in rows], behaviour, bool(blanked),
                                group=rows[0]["task_id"]))
    return examples, stats


def examples_from_reference_csv(path: str | Path, renderer: ChatRenderer, max_length: int = 1 << 30) -> list[Example]:
    """The reference implementation's PPO input (tab-separated; `prompt`, `response`, `reward` are Python list
    literals read with `ast.literal_eval`). prompt[0] is the system prompt, the query and the first assistant
    header; prompt[i] (i ≥ 1) is what came after response[i−1]: the function's answer and the next header. So the
    trajectory is prompt[0] + response[0] + prompt[1] + response[1] + ..., response[i] the action with reward[i]."""
    path = Path(path)
    csv.field_size_limit(1 << 30)
    examples = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f, delimiter="\t")):
            where = f"{path}: record {n}"
            try:
                prompts, responses, rewards = (ast.literal_eval(row[k]) for k in ("prompt", "response", "reward"))
            except (KeyError, ValueError, SyntaxError) as e:
                raise SchemaError(f"{where}: prompt/response/reward must be Python list literals ({e})") from None
            if not (len(prompts) == len(responses) == len(rewards)) or not prompts:
                raise SchemaError(f"{where}: {len(prompts)} prompts, {len(responses)} responses, {len(rewards)} rewards")
            actions = [renderer.encode(r) for r in responses]
            between, context = [], prompts[0]
            for i in range(len(prompts) - 1):
                context += responses[i]
                # the reference writes each later prompt as the text since the last action (observation + next
                # header); a cumulative prompt (the whole context so far) is accepted too
                nxt = prompts[i + 1][len(context):] if prompts[i + 1].startswith(context) else prompts[i + 1]
                between.append(nxt)
                context += nxt
            ids, mask, bounds = renderer.encode(prompts[0]), [], []
            mask = [0] * len(ids)
            for i, act in enumerate(actions):
                bounds.append((len(ids), len(ids) + len(act)))
                ids += act
                mask += [1] * len(act)
                if i < len(between):
                    seg = renderer.encode(between[i])
                    ids += seg
                    mask += [0] * len(seg)
            if len(ids) > max_length:
                continue
            # no task id in the file: samples of one task share the first prompt (system prompt and query)
            examples.append(Example(f"{path.stem}-{n}", ids, mask, bounds, [float(x) for x in rewards],
                                    group=hashlib.sha256(prompts[0].encode()).hexdigest()[:16]))
    return examples
