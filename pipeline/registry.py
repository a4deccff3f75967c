"""Registries of the parts chosen by name in params.yaml, as pipeline/variants.py is for the training variants
(docs/architecture.md, "How to add a part"): the annotators (`annotate.annotator`), the environment kinds
(`env.kind`), the search strategies (`collect.strategy`, `evaluate.strategies`), the reward shapings
(`rewards.shaping`) and the pass-rate judges (`evaluate.judge`).

An entry is data: its name, a one-line help, the properties the params check reads (e.g. `needs_gold`), and
where its code is ("module:function"). The params check, `steptool params`, params.yaml's comments and the CLI's
choices read the names and helps from here, without importing any implementation; the phase that uses a part
calls `Registry.implementation(name)`, which imports it then. `pipeline/depgraph.py` counts such a call as an
import of every registered implementation, so a stage's DVC code deps hold them. Adding an annotator or an
environment kind, a shaping or a judge is its function plus one `register` call here (and its test).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Part:
    name: str
    help: str
    implementation: str
    """"module:function" that implements it (the registry's docstring says what the function takes)."""
    properties: frozenset[str] = field(default_factory=frozenset)


class Registry:
    """The registered parts of one kind, keyed by name in the order registered (the first is the default)."""

    def __init__(self, key: str, interface: str):
        self.key = key  # the params key that chooses one, e.g. annotate.annotator
        self.interface = interface  # what every implementation is called with, for the docs and the errors
        self.parts: dict[str, Part] = {}

    def register(self, part: Part) -> Part:
        if part.name in self.parts:
            raise ValueError(f"{self.key}: {part.name!r} is registered twice")
        if ":" not in part.implementation:
            raise ValueError(f"{self.key}: {part.name!r}: implementation must be 'module:function', got "
                             f"{part.implementation!r}")
        self.parts[part.name] = part
        return part

    def unregister(self, name: str) -> None:
        self.parts.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self.parts)

    def get(self, name: str) -> Part:
        """The part registered as `name`; a ConfigError naming the key and the choices otherwise."""
        try:
            return self.parts[name]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.key} must be one of {', '.join(map(repr, self.parts))}, got {name!r}") from None

    def has(self, name: str, prop: str) -> bool:
        """Whether the part `name` has the property `prop` (False for an unknown name: the check names it)."""
        return name in self.parts and prop in self.parts[name].properties

    def describe(self) -> str:
        """'name: help; ...' for helps and docs."""
        return "; ".join(f"'{p.name}' ({p.help})" for p in self.parts.values())

    def implementation(self, name: str) -> Callable:
        """The function that implements `name`, imported now."""
        module, _, attr = self.get(name).implementation.partition(":")
        return getattr(importlib.import_module(module), attr)


ANNOTATORS = Registry("annotate.annotator", "annotate(trajs, steps_by_traj, tasks, cfg, cache_path, progress) -> "
                                            "(one TrajLabel per trajectory, statistics)")
ANNOTATORS.register(Part("oracle", "ToolWorld's gold plan and facts: exact, free",
                         "pipeline.annotate.oracle:annotate", frozenset({"needs_gold", "gives_progress"})))
ANNOTATORS.register(Part("heuristic", "the reference's LCS rule, for environments without gold",
                         "pipeline.annotate.heuristic:annotate"))
ANNOTATORS.register(Part("openai", "an LLM judge at annotate.base_url, through the judge's cache and cost cap",
                         "pipeline.annotate.llm_judge:annotate", frozenset({"llm"})))

ENVIRONMENTS = Registry("env.kind", "make(env_cfg, world_cfg, world) -> an ApiListEnv (pipeline/envs.py)")
ENVIRONMENTS.register(Part("toolworld", "the embedded ToolWorld, in-process", "pipeline.envs:make_toolworld_env",
                           frozenset({"toolworld"})))
ENVIRONMENTS.register(Part("http", "a StableToolBench-style server speaking POST /virtual at env.url, e.g. "
                                   "`steptool serve-tools`", "pipeline.envs:make_http_env"))
ENVIRONMENTS.register(Part("replay", "real StableToolBench responses recorded in pass_rate_results, offline; "
                                     "misses answer with an error and are counted", "pipeline.envs:make_replay_env",
                           frozenset({"counts_misses"})))

STRATEGIES = Registry("collect.strategy", "run(jobs, policy, renderer, make_env, search) -> one Rollout per (task, "
                                        "sample_idx) job; search: pipeline.agent.rollout.Search (the agent section's "
                                        "settings and the registered name to record). A strategy with `streams` also "
                                        "takes on_done=f and calls f(rollout) as each job ends: collect then gives "
                                        "it every job at once and writes parts as they end")
STRATEGIES.register(Part("cot", "one chain per sample", "pipeline.agent.rollout:run_chains", frozenset({"streams"})))
STRATEGIES.register(Part("dfsdt", "depth-first tree search (agent.dfsdt_width children per node, agent.dfsdt_budget "
                                  "actions per task), the final path kept", "pipeline.agent.rollout:run_trees",
                         frozenset({"tree"})))

SHAPINGS = Registry("rewards.shaping", "step_part(steps, spec, myopic) -> (steps with any helper columns, the step part s_t "
                                     "as a polars expression); `steps` is sorted by trajectory and step and has "
                                     "is_last, _p = (α·SC + Con/5)/(α+1), succ_calling, contribution, is_solved_score "
                                     "and, for a shaping with `needs_progress`, progress (pipeline/rewards.py); "
                                     "`myopic`: the form for a variant without credit across steps (G_t = r_t)")
# the first registered is the default (the val grid's choice, configs/study-val.yaml)
SHAPINGS.register(Part("progress", "s_t = γ·Φ(s_t+1) − Φ(s_t), potential-based shaping (Ng, Harada & Russell 1999) "
                                   "with Φ the share of needed facts known (the oracle's `progress`) and 0 at the "
                                   "end: it moves credit between steps and cannot change the optimal policy",
                       "pipeline.rewards:progress_part", frozenset({"needs_progress"})))
SHAPINGS.register(Part("paper", "s_t = (α·SC + Con/5)/(α+1), the paper's §4.1 reward with the reference's "
                                "normalisation (a call that brings nothing new has Con 0)",
                       "pipeline.rewards:paper_part"))
SHAPINGS.register(Part("min_form", "s_t = m_t − m_t+1 with m_t the minimum of the process rewards from t on "
                                   "((α·SC + Con/5)/(α+1) for calls, IsSolved for the last step): at γ = 1 a step's "
                                   "credit is the minimum of its future process rewards (PURE, arXiv 2504.15275), so "
                                   "padding can only lower it and never answering earns none",
                       "pipeline.rewards:min_form_part"))

JUDGES = Registry("evaluate.judge", "judge(trajectories, steps, tasks by id, params) -> (traj_id -> one status, or "
                                    "(status, reason), per judging run, the judge's counters)")
JUDGES.register(Part("rule", "ToolWorld's gold facts: all stated -> Solved, some -> Unsure, once",
                     "pipeline.evaluate.results:rule_statuses", frozenset({"needs_gold"})))
JUDGES.register(Part("openai", "StableToolBench's criteria through the annotate section's endpoint, client, cache and "
                               "fault handling", "pipeline.evaluate.llm_pass_rate:judge_answers", frozenset({"llm"})))

REGISTRIES = {"ANNOTATORS": ANNOTATORS, "ENVIRONMENTS": ENVIRONMENTS, "STRATEGIES": STRATEGIES, "SHAPINGS": SHAPINGS,
              "JUDGES": JUDGES}  # by the name code uses (pipeline/depgraph.py)
