"""Simulated tool answers for calls the replay never recorded (`env.on_miss: simulate`; docs/architecture.md,
"StableToolBench offline").

StableToolBench's server answers a call from its cache, then from the real API, then by asking an LLM to play the
API (`server/main.py` of THUNLP-MT/StableToolBench at commit 9fd0a3c7d507bae7d4d11d9f85f708ee04b001da,
`fake_response_function_chat`): a system prompt, and one user message with the API's documentation, up to five
recorded examples of the same API and the call's input, at temperature 0 with a JSON-object answer, retried up to
three times until the answer parses as JSON. This module sends that request as it does (the system prompt below is
its text, character for character; the user message is laid out as it lays it out, with Python's `str()` of the
same structures) to any OpenAI-compatible endpoint (`env.simulator`): a paid model, MirrorAPI served by vLLM, or
`steptool serve-judge`, which answers by rule from the examples (offline, tests).

What StableToolBench does not, this does: answers are validated (a JSON object with `error` and `response`; the
server accepts any JSON), cached in SQLite keyed by endpoint, model, function and canonical arguments (so a rerun,
or the same call in another trajectory, costs nothing), transport faults retried with backoff, requests and
tokens per minute limited, and the spend capped *while* it runs: before each paid call the spend so far plus that
call's estimate must stay within `max_cost_usd`, otherwise the run stops with one line naming both (the finished
chunks of the collection stay, and a rerun resumes from the cache). A simulated answer is never written into the
recorded table: the step's `env_status` says `simulated`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from pipeline import untrusted
from pipeline.annotate.pricing import cost_usd, estimated_tokens, usage_tokens
from pipeline.errors import SteptoolError

log = logging.getLogger("steptool.simulator")

SOURCE = ("StableToolBench server/main.py @ 9fd0a3c7d507bae7d4d11d9f85f708ee04b001da, "
          "fake_response_function_chat")
VERSION = "stabletoolbench-simulator-9fd0a3c"  # part of every cache key: another prompt never answers from these
EXAMPLES = 5  # its example_num
EXAMPLES_CHARS = 2048  # examples are dropped while their str() is longer, then the text is cut there
ATTEMPTS = 3  # its max_retries: answers that are not JSON are asked again
FAILED = {"error": "Failed to generate fake response", "response": ""}  # its answer after the last attempt

# StableToolBench's system prompt, verbatim (server/main.py, fake_response_function_chat; the `\n` and `\\n` are as
# written there, inside a Python ''' string).
SYSTEM_PROMPT = '''
Imagine you are an API Server operating within a specialized tool, which contains a collection of distinct APIs. Your role is to deeply understand the function of each API based on their descriptions in the API documentation. As you receive specific inputs for individual API calls within this tool, analyze these inputs to determine their intended purpose. Your task is to craft a JSON formatted response that aligns with the expected output of the API, guided by the provided examples.\n
Your responses must adhere to a specific JSON structure, which is as follows:\n
{
    "error": "",
    "response": "<Your_Response>"
}\n
The error field should remain empty, indicating no errors in processing. The response field should contain the content you formulate based on the API's functionality and the input provided. Ensure that your responses are meaningful, directly addressing the API's intended functionality. If the provided examples are mostly error messages or lack substantial content, use your judgment to create relevant and accurate responses. The key is to maintain the JSON format's integrity while ensuring that your response is an accurate reflection of the API's intended output within the tool.\n
Please note that your answer should not contain anything other than a json format object, which should be parsable directly to json.
Note that:
- your response should be around 100 to 200 words, containing rich information given the api input parameters. Keep Your answer short and simple.
- your response must be effective and have practical content.
- if the api response example if null or ineffective, ignore the example and give your independent response.

API calls may fail for various reasons, such as invalid input parameters, authentication issues, or server errors. Your goal is to generate a response that accurately reflects the API's intended functionality, even if the input parameters are incorrect. Your response should be informative and relevant to the API's purpose, providing a clear and concise explanation of the expected output based on the input provided.
Here is an example:
API doc
{
    "name": "properties/get-broadband",
    "url": "https://zoopla.p.rapidapi.com/properties/get-broadband",
    "description": "Get broadband information",
    "method": "GET",
    "required_parameters": [
        {
            "name": "listing_id",
            "type": "NUMBER",
            "description": "The value of listing_id field returned in .../properties/list endpoint",
            "default": "56354192"
        }
    ],
    "optional_parameters": [],
    "code": "import requests\n\nurl = \"https://zoopla.p.rapidapi.com/properties/get-broadband\"\nquerystring = {\"listing_id\": \"56354192\"}\n\nheaders = {\n            \"X-RapidAPI-Key\": \"SIGN-UP-FOR-KEY\",\n            \"X-RapidAPI-Host\": \"zoopla.p.rapidapi.com\"\n        }\n\nresponse = requests.get(url, headers=headers, params=querystring)\nprint(response.json())\n",
    "convert_code": "import requests\n\nurl = \"https://zoopla.p.rapidapi.com/properties/get-broadband\"\nquerystring = {\"listing_id\": \"56354192\"}\n\nheaders = {\n            \"X-RapidAPI-Key\": \"SIGN-UP-FOR-KEY\",\n            \"X-RapidAPI-Host\": \"zoopla.p.rapidapi.com\"\n        }\n\nresponse = requests.get(url, headers=headers, params=querystring)\nprint(response.json())\n",
    "test_endpoint": "",
    "statuscode": 200,
    "schema": {}
}
Request:
    data = {
        "category": "Business",
        "tool_name": "zoopla_v2",
        "api_name": "properties_get_broadband",
        "tool_input": {'listing_id': '456789', "abdc": 11123},
        "strip": "",
        "toolbench_key": "xxx"
    }
Response:
    {"error":"Function executing from toolenv.tools.Business.zoopla_v2.api import properties_get_broadband error...\nproperties_get_broadband() got an unexpected keyword argument 'abdc'","response":""}


Your will also be given successful examples of API calls and their expected outputs, based on which you will generate the response for the given input.
    '''


def api_doc(doc: dict) -> dict:
    """The documentation the server gives the model, built from the query's `api_list` entry as it builds it from
    its tools folder: the tool's description (the api_list has none: '', as the server sends when it cannot find
    the tool's file) and the API's name and description."""
    return {"tool_description": "",
            "api_info": [{"name": doc.get("api_name", ""), "description": doc.get("api_description", "")}]}


def tool_input(arguments: str):
    """The call's input as the server parses it: JSON, or {} for an empty string; None when it does not parse
    (the server answers that with its own error, not the model)."""
    if not arguments.strip():
        return {}
    try:
        return untrusted.loads(arguments)
    except (json.JSONDecodeError, TypeError, RecursionError):
        return None


def examples(recorded: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The first EXAMPLES recorded (str(input), answer) pairs of the API, fewer while their str() is longer than
    EXAMPLES_CHARS (at least one), as the server takes them from its cache."""
    n = EXAMPLES
    chosen = recorded[:n]
    while len(str(chosen)) > EXAMPLES_CHARS and n > 1:
        n -= 1
        chosen = recorded[:n]
    return chosen


def messages(doc: dict, recorded: list[tuple[str, dict]], call_input) -> list[dict]:
    """[system, user] of the simulation request, laid out as the server lays them out."""
    user = ("API Documentation:" + str(api_doc(doc)) + "\n" + "API Examples:" + str(examples(recorded))[:EXAMPLES_CHARS]
            + "\n" + "API Input:" + str(call_input) + "\n")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def request(model: str, msgs: list[dict], temperature: float, max_tokens: int = 1024) -> dict:
    """The chat request the server sends (its model and temperature come from its config: ours from
    `env.simulator`)."""
    return {"model": model, "messages": msgs, "max_tokens": max_tokens, "temperature": temperature,
            "response_format": {"type": "json_object"}}


def parse(text: str | None) -> dict | None:
    """The answer as an envelope: the text without a ```json fence (as the server strips it), a JSON object with
    `error` and `response`; None when it is not one (asked again)."""
    if not isinstance(text, str):
        return None
    if "```json" in text:
        text = text.replace("```json", "").replace("```", "").strip()
    try:
        value = untrusted.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError):
        return None
    if not isinstance(value, dict) or "error" not in value or "response" not in value:
        return None
    return {"error": str(value["error"]) if value["error"] is not None else "", "response": value["response"]}


def cache_key(cfg, function: str, canonical_args: str) -> str:
    """Endpoint, model, prompt version, function and canonical arguments: the same call costs once."""
    blob = json.dumps([cfg.base_url.rstrip("/"), cfg.model, VERSION, cfg.temperature, function, canonical_args],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class SimulatorBudgetExceeded(SteptoolError):
    pass


class _Limiter:
    """At most `rpm` requests and `tpm` estimated tokens in any 60 s (0: no limit); thread-safe, blocking."""

    def __init__(self, rpm: int, tpm: int):
        self.rpm, self.tpm = rpm, tpm
        self._sent: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def wait(self, tokens: int) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                while self._sent and now - self._sent[0][0] >= 60.0:
                    self._sent.popleft()
                used = sum(t for _, t in self._sent)
                if (not self.rpm or len(self._sent) < self.rpm) and (not self.tpm or not self._sent
                                                                     or used + tokens <= self.tpm):
                    self._sent.append((now, tokens))
                    return
                pause = 60.0 - (now - self._sent[0][0]) + 0.01
            time.sleep(min(pause, 1.0))


class Simulator:
    """Answers missed calls through `env.simulator` (a pipeline.config.SimulatorConfig). Thread-safe: a batch's
    calls may arrive from several threads. `stats`: calls, cache hits, invalid answers, retries, tokens, spend."""

    def __init__(self, cfg, cache_path: str | Path | None = None):
        from pipeline.annotate.cache import JudgeCache

        self.cfg = cfg
        self.cache = JudgeCache(cache_path or cfg.cache_path)
        self._limiter = _Limiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        self._lock = threading.Lock()
        self._client = None
        self.stats = {"simulator_calls": 0, "simulator_cache_hits": 0, "simulator_invalid_answers": 0,
                      "simulator_failed": 0, "simulator_transport_retries": 0, "simulator_prompt_tokens": 0,
                      "simulator_completion_tokens": 0, "simulator_cost_usd": 0.0}

    def _count(self, **add) -> None:
        with self._lock:
            for k, v in add.items():
                self.stats[k] += v

    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.cfg.base_url, api_key=os.environ.get(self.cfg.api_key_env) or "EMPTY",
                                  timeout=self.cfg.timeout_s, max_retries=0)  # retries are ours: counted
        return self._client

    def answer(self, doc: dict, function: str, arguments: str, canonical_args: str,
               recorded: list[tuple[str, dict]]) -> dict:
        """The simulated {error, response} of `function` called with `arguments` (the model's text)."""
        call_input = tool_input(arguments)
        if call_input is None:  # the server's own answer, before any model
            return {"error": "Tool input parse error...\n", "response": ""}
        key = cache_key(self.cfg, function, canonical_args)
        cached = self.cache.get(key)
        if cached is not None and parse(cached.get("content")) is not None:
            self._count(simulator_cache_hits=1)
            return parse(cached["content"])
        req = request(self.cfg.model, messages(doc, recorded, call_input), self.cfg.temperature, self.cfg.max_tokens)
        for _ in range(ATTEMPTS):
            body = self._send(req)
            content = ((body.get("choices") or [{}])[0].get("message") or {}).get("content")
            envelope = parse(content)
            if envelope is not None:
                self.cache.put(key, self.cfg.model, VERSION, req, {"content": content, "usage": body.get("usage")})
                return envelope
            self._count(simulator_invalid_answers=1)
        self._count(simulator_failed=1)
        return dict(FAILED)

    def _send(self, req: dict) -> dict:
        """One paid call: the cap checked first (the spend so far plus this call's estimate), then the rate
        limit, then the request with retries on transport faults."""
        import openai

        cfg = self.cfg
        estimate = cost_usd(estimated_tokens(req), cfg.max_tokens, cfg)
        with self._lock:
            spent = self.stats["simulator_cost_usd"]
        if cfg.max_cost_usd and spent + estimate > cfg.max_cost_usd:
            raise SimulatorBudgetExceeded(
                f"env.simulator: ${spent:.4f} spent on {self.stats['simulator_calls']} simulated answers, and the next "
                f"(~${estimate:.4f}) would pass env.simulator.max_cost_usd ${cfg.max_cost_usd:g}: stopped (what was "
                "played is kept; raise the cap and rerun to continue from the cache)")
        self._limiter.wait(estimated_tokens(req) + cfg.max_tokens)
        delay = 1.0
        for attempt in range(cfg.max_retries + 1):
            try:
                raw = self.client().chat.completions.with_raw_response.create(**req)
                body = json.loads(raw.text)
                break
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise SteptoolError(f"env.simulator: the endpoint at {cfg.base_url} refused the key in "
                                    f"${cfg.api_key_env} ({type(e).__name__})") from None
            except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                    openai.InternalServerError, json.JSONDecodeError) as e:
                if attempt == cfg.max_retries:
                    raise SteptoolError(f"env.simulator: {cfg.base_url} failed {attempt + 1} times "
                                        f"({type(e).__name__}); rerun to continue from the cache") from None
                self._count(simulator_transport_retries=1)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        prompt, completion = usage_tokens(body)
        self._count(simulator_calls=1, simulator_prompt_tokens=prompt, simulator_completion_tokens=completion,
                    simulator_cost_usd=cost_usd(prompt, completion, cfg))
        return body

    def close(self) -> None:
        self.cache.close()
