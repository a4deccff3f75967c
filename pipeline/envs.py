"""The environment protocol and its implementations.

An agent plays a task as ``env.reset(task, episode)`` and then ``env.step(function_name, arguments)``
until a step returns ``done``. Every environment answers exactly as StableToolBench's does: the
function list comes from the task's api docs (plus ``Finish``), an unknown function answers
``No such function name: X``, Finish checks ``return_type`` and ``final_answer``, and every
observation is the ``{"error", "response"}`` envelope cut to ``max_observation_length``.

Implementations differ only in where a call goes (`_call`): the embedded ToolWorld, or any
StableToolBench-style HTTP server (``POST /virtual``, e.g. ``steptool serve-tools``).
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline import untrusted
from pipeline.apidoc import function_spec, function_specs, render_observation
from pipeline.errors import SteptoolError
from pipeline.registry import ENVIRONMENTS
from pipeline.task import Task
from pipeline.toolworld.world import ToolWorld, canonical_json

FINISH = "Finish"


@dataclass
class StepResult:
    """What one action led to."""

    observation: str  # the text the agent reads next (truncated envelope)
    status: str  # ok | no_such_function | finish | give_up | finish_error | env_error | replay_miss | simulated
    done: bool
    envelope: dict | None = None  # the untruncated {"error", "response"} of a tool call (None for Finish)
    finish_type: str = "none"  # give_answer | give_up | none
    final_answer: str | None = None


@dataclass(frozen=True)
class Answered:
    """What `_call` returns when the answer's source is not the environment's own: the envelope (or recorded text)
    and the step's env_status (`replay_miss`: no recording, an error observation; `simulated`: the simulator's)."""

    envelope: dict | str
    status: str


class Environment(Protocol):
    def reset(self, task: Task, episode: str = "") -> str: ...

    def functions(self) -> list[dict]: ...

    def step(self, function_name: str, arguments: str) -> StepResult: ...


def parse_finish(arguments: str) -> dict:
    """Finish's arguments as ToolBench reads them: JSON, else the same lenient string search it does."""
    try:
        data = untrusted.loads(arguments, strict=False)
        return data if isinstance(data, dict) else {}
    except (json.JSONDecodeError, TypeError, RecursionError):
        pass
    data: dict[str, Any] = {}
    marker = '"return_type": "'
    if marker in arguments:
        if '"return_type": "give_answer"' in arguments:
            data["return_type"] = "give_answer"
        elif '"return_type": "give_up_and_restart"' in arguments:
            data["return_type"] = "give_up_and_restart"
        else:
            start = arguments.find(marker) + len(marker)
            data["return_type"] = arguments[start:arguments.find('",', start)]
    marker = '"final_answer": "'
    if marker in arguments:
        data["final_answer"] = arguments[arguments.find(marker) + len(marker):]
    return data


class ApiListEnv:
    """Shared behaviour of every environment; subclasses implement `_call`."""

    def __init__(self, max_observation_length: int = 1024):
        self.max_observation_length = max_observation_length
        self.task: Task | None = None
        self.episode = ""
        self._docs: dict[str, dict] = {}
        self._attempts: dict[tuple[str, str], int] = {}

    def reset(self, task: Task, episode: str = "") -> str:
        """Start `task`; `episode` (e.g. trajectory seed) varies transient failures between samples."""
        self.task, self.episode = task, episode
        self._docs = {function_spec(d)["name"]: d for d in task.api_list}
        self._attempts = {}
        return task.query

    def fork(self) -> "ApiListEnv":
        """An independent copy at the same point of the episode (for tree search)."""
        clone = copy.copy(self)
        clone._attempts = dict(self._attempts)
        return clone

    def functions(self) -> list[dict]:
        if self.task is None:
            raise RuntimeError("call reset(task) first")
        return function_specs(self.task.api_list)

    def step(self, function_name: str, arguments: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("call reset(task) first")
        if function_name == FINISH:
            return self._finish(arguments)
        doc = self._docs.get(function_name)
        if doc is None:
            envelope = {"error": f"No such function name: {function_name}", "response": ""}
            return StepResult(render_observation(envelope, self.max_observation_length), "no_such_function",
                              False, envelope)
        try:
            key = canonical_json(untrusted.loads(arguments)) if arguments.strip() else "{}"
        except (json.JSONDecodeError, TypeError, ValueError, RecursionError):
            key = arguments
        attempt = self._attempts.get((function_name, key), 0)
        self._attempts[(function_name, key)] = attempt + 1
        try:
            envelope = self._call(doc, arguments, attempt)
        except SteptoolError:
            raise  # the environment itself is unusable (e.g. no server): one line for the user, not an observation
        except Exception as e:  # noqa: BLE001 - whatever a tool does, the episode goes on with an error observation
            envelope = {"error": f"Environment error...\n{type(e).__name__}: {str(e)[:200]}", "response": ""}
            return StepResult(render_observation(envelope, self.max_observation_length), "env_error", False, envelope)
        status = "ok"
        if isinstance(envelope, Answered):
            envelope, status = envelope.envelope, envelope.status
        observation = render_observation(envelope, self.max_observation_length)
        if isinstance(envelope, str):  # recorded text (replay): the agent reads it as it was, cut or not
            from pipeline.annotate.succ_calling import read_envelope

            error, response, _ = read_envelope(envelope)
            envelope = {"error": error, "response": response}
        return StepResult(observation, status, False, envelope)

    def _finish(self, arguments: str) -> StepResult:
        data = parse_finish(arguments)
        rtype = data.get("return_type")
        if rtype is None:
            return StepResult('{error:"must have "return_type""}', "finish_error", False)
        if rtype == "give_up_and_restart":
            return StepResult('{"response":"chose to give up and restart"}', "give_up", True, finish_type="give_up")
        if rtype == "give_answer":
            if "final_answer" not in data:
                return StepResult('{error:"must have "final_answer""}', "finish_error", False)
            return StepResult('{"response":"successfully giving the final answer."}', "finish", True,
                              finish_type="give_answer", final_answer=str(data["final_answer"]))
        return StepResult('{error:""return_type" is not a valid choice"}', "finish_error", False)

    def _call(self, doc: dict, arguments: str, attempt: int) -> dict | str:
        """The {error, response} envelope of one call, or its JSON text as recorded (replay)."""
        raise NotImplementedError


class ToolWorldEnv(ApiListEnv):
    """Calls go to an in-process ToolWorld."""

    def __init__(self, world: ToolWorld, max_observation_length: int = 1024):
        super().__init__(max_observation_length)
        self.world = world

    def _call(self, doc: dict, arguments: str, attempt: int) -> dict:
        return self.world.call(doc["category_name"], doc["tool_name"], doc["api_name"], arguments,
                               episode=self.episode, attempt=attempt)


class HttpToolEnv(ApiListEnv):
    """Calls go to a StableToolBench-style server: POST {category, tool_name, api_name, tool_input, strip,
    toolbench_key} to `url`, answer {error, response}. `episode` and `attempt` ride along as extra fields
    (ignored by servers that do not know them). The calls of a batch's chains go out at once (rollout.py)."""

    parallel_calls = True  # network-bound: the agent loop calls the chains' environments concurrently

    def __init__(self, url: str, max_observation_length: int = 1024, timeout_s: float = 30.0,
                 toolbench_key: str = ""):
        super().__init__(max_observation_length)
        self.url = url
        self.timeout_s = timeout_s
        self._key = toolbench_key  # never logged, never written
        self.transport_retries = 0

    def _post(self, req) -> dict:
        """One POST, with a dropped or reset connection (a server restarting, a proxy closing an idle keep-alive)
        retried with exponential backoff, 3 tries in all, and counted in `transport_retries`."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        def count(_state):
            self.transport_retries += 1

        for attempt in Retrying(retry=retry_if_exception(_transient), wait=wait_exponential(multiplier=0.05, max=1.0),
                                stop=stop_after_attempt(3), before_sleep=count, reraise=True):
            with attempt:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return untrusted.loads(resp.read().decode("utf-8"))
        raise AssertionError("unreachable")

    def _call(self, doc: dict, arguments: str, attempt: int) -> dict:
        body = {
            "category": doc["category_name"], "tool_name": doc["tool_name"], "api_name": doc["api_name"],
            "tool_input": arguments, "strip": "truncate", "toolbench_key": self._key,
            "episode": self.episode, "attempt": attempt,
        }
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "toolbench_key": self._key})
        try:
            data = self._post(req)
        except urllib.error.HTTPError as e:
            return {"error": f"Request error...\nHTTP {e.code} from the tool server", "response": ""}
        except (TimeoutError, socket.timeout):
            return {"error": "Timeout error...", "response": ""}
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                return {"error": "Timeout error...", "response": ""}
            raise SteptoolError(f"cannot reach the tool server at {self.url}: {e.reason} "
                                "(start it with `steptool serve-tools`, or set env.kind: toolworld)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return {"error": "Request error...\nthe tool server answered with invalid JSON", "response": ""}
        except (http.client.HTTPException, ConnectionError) as e:  # still failing after the retries
            return {"error": f"Request error...\nthe connection failed: {type(e).__name__}", "response": ""}
        if not isinstance(data, dict) or "error" not in data or "response" not in data:
            return {"error": "Request error...\nthe tool server's answer lacks error/response", "response": ""}
        return data


def _transient(e: BaseException) -> bool:
    """A dropped, reset or refused connection: worth another try."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return isinstance(e.reason, ConnectionError)
    return isinstance(e, (http.client.HTTPException, ConnectionError))


class ReplayEnv(ApiListEnv):
    """Calls are answered from recorded real StableToolBench responses (`pipeline.replay.ReplayCache`);
    a call never recorded gets an error envelope (env_status `replay_miss`) or, with a `simulator`
    (pipeline/simulator.py), the simulated answer (env_status `simulated`). Both are counted."""

    def __init__(self, cache, max_observation_length: int = 1024, per_query: bool = False, simulator=None):
        super().__init__(max_observation_length)
        self.cache = cache
        self.per_query = per_query
        self.simulator = simulator
        self.parallel_calls = simulator is not None  # a miss may wait on an endpoint: a batch's calls go together
        self.hits = 0
        self.misses = 0

    def _call(self, doc: dict, arguments: str, attempt: int) -> dict | str | Answered:
        from pipeline.replay import args_key

        name = function_spec(doc)["name"]
        text = self.cache.lookup(name, arguments, self.task.task_id if self.per_query else None)
        self.hits += text is not None
        self.misses += text is None
        if text is not None:
            return text
        if self.simulator is not None:
            return Answered(self.simulator.answer(doc, name, arguments, args_key(arguments), self.cache.examples(name)),
                            "simulated")
        return Answered(self.cache.miss(name), "replay_miss")


_REPLAY_CACHES: dict[str, object] = {}
SIMULATORS: dict[tuple, object] = {}  # one per process and endpoint: its spend and cap hold across episodes


def make_env(env_cfg, world_cfg, world: ToolWorld | None = None) -> ApiListEnv:
    """The environment named by `params.yaml` (sections `env` and `toolworld`): env.kind's registered maker
    (pipeline/registry.py, ENVIRONMENTS)."""
    return ENVIRONMENTS.implementation(env_cfg.kind)(env_cfg, world_cfg, world)


def make_toolworld_env(env_cfg, world_cfg, world: ToolWorld | None = None) -> ApiListEnv:
    world = world or ToolWorld.from_config(world_cfg)
    return ToolWorldEnv(world, world_cfg.max_observation_length)


def make_http_env(env_cfg, world_cfg, world: ToolWorld | None = None) -> ApiListEnv:
    return HttpToolEnv(env_cfg.url, world_cfg.max_observation_length, env_cfg.timeout_s,
                       os.environ.get(env_cfg.toolbench_key_env, ""))


def make_replay_env(env_cfg, world_cfg, world: ToolWorld | None = None) -> ApiListEnv:
    from pipeline.replay import ReplayCache

    path = env_cfg.replay_path
    if path not in _REPLAY_CACHES:  # one load per process: every episode shares it
        if not os.path.exists(path):
            raise SteptoolError(f"env.replay_path {path}: no such file or folder (a pass_rate_results folder "
                                "or the Parquet table of `steptool build-replay`)")
        _REPLAY_CACHES[path] = ReplayCache.load(path)
    simulator = None
    if env_cfg.on_miss == "simulate":
        from pipeline.config import to_dict
        from pipeline.simulator import Simulator

        key = json.dumps(to_dict(env_cfg.simulator), sort_keys=True)
        if key not in SIMULATORS:
            SIMULATORS[key] = Simulator(env_cfg.simulator)
        simulator = SIMULATORS[key]
    return ReplayEnv(_REPLAY_CACHES[path], world_cfg.max_observation_length, env_cfg.replay_per_query, simulator)


def simulator_stats() -> dict:
    """The counters of this process's simulators, added up (pipeline/simulator.py); empty without one."""
    out: dict = {}
    for sim in SIMULATORS.values():
        for k, v in sim.stats.items():
            out[k] = round(out.get(k, 0) + v, 6)
    return out
