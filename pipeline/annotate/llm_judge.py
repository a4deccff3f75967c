"""The `openai` annotator: an LLM judge behind any OpenAI-compatible chat endpoint.

For each trajectory the judge sees the query, the intermediate steps (call, arguments, response, cut to
a token budget) and the final answer, and must call `evaluate_process_reward` (a forced function call)
with one `succeed_tool_calling` (0/1) and one `contribution_to_final_answer` (0-5) per step and a
`final_answer_status` (Solved | Unsure | Unsolved), as in the StepTool reference. It is asked
`n_votes` times; the votes are averaged.

Unlike the reference (no cache, no validation, no resume, crashes on slow answers):
- every answer is validated: the wrong number of values, out-of-range or ill-typed values, a missing
  or malformed function call are retried with a new request (`attempt` in the seed), up to
  `max_invalid_retries`, then the vote fails with its reason, never padded; a trajectory is labelled from
  the votes that came back when there are at least `min_votes` of them (the failed ones are listed), and
  is recorded as failed with the reasons otherwise;
- 429, 5xx, timeouts and dropped connections are retried with exponential backoff (tenacity), waiting at
  least what a 429's `Retry-After` asks (capped at MAX_RETRY_AFTER_S); when
  retries run out the trajectory is failed with the reason and the next run tries again;
- requests go out `concurrency` at a time (asyncio), at most `requests_per_minute` and `tokens_per_minute`;
- before any call the calls the cache does not hold are counted and their tokens and cost estimated (prices
  are params); above `max_cost_usd` the run stops before its first call (`BudgetExceeded`);
- every answer goes through the content-addressed `JudgeCache`, so nothing is paid for twice.
The key comes from the environment variable named in params; it is never logged or written.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time

from pipeline import untrusted
from pipeline.annotate.base import StepLabel, TrajLabel, status_of, step_is_call
from pipeline.annotate.cache import JudgeCache, request_key
from pipeline.annotate.pricing import BATCH_PRICE_FACTOR, CHARS_PER_TOKEN, cost_usd, estimated_tokens, usage_tokens
from pipeline.annotate.succ_calling import read_envelope
from pipeline.config import AnnotateConfig
from pipeline.errors import SteptoolError
from pipeline.formats.stabletoolbench import STATUS_VALUE

log = logging.getLogger("steptool.annotate")
PROMPT_VERSION = "steptool-judge-v2"  # v2: nothing new earns 0 (a repeat, a result the answer already had)

SYSTEM = (
    "You are an expert evaluator of AI agents that use tools (APIs) to answer a user's query. You will see the "
    "query, the agent's intermediate steps (each a function call, its arguments and the tool's response) and the "
    "agent's final answer. Judge every intermediate step, in order:\n"
    "- succeed_tool_calling: 1 if the call was executed correctly and returned a valid result (not an error, not "
    "an empty result, not an error message), else 0.\n"
    "- contribution_to_final_answer: an integer from 0 to 5, how much the step's result contributed to the final "
    "answer (0: nothing, 5: essential information that the final answer uses). A step that brings nothing new "
    "gets 0: a repeat of an earlier call, or a result whose information earlier steps had already brought. Fewer "
    "steps for the same answer is better.\n"
    "Then judge the final answer: final_answer_status is Solved if it fully answers every part of the query with "
    "information from the steps, Unsure if it answers part of it or cannot be verified, Unsolved if it does not "
    "answer, gives up, or is missing.\n"
    "Answer only by calling evaluate_process_reward, with exactly one value per intermediate step in each list."
)

TOOL = {
    "type": "function",
    "function": {
        "name": "evaluate_process_reward",
        "description": "Record the step-grained evaluation of the agent's trajectory.",
        "parameters": {
            "type": "object",
            "properties": {
                "succeed_tool_calling": {"type": "array", "items": {"type": "integer", "enum": [0, 1]},
                                         "description": "One value per intermediate step: 1 if the call succeeded."},
                "contribution_to_final_answer": {
                    "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 5},
                    "description": "One value per intermediate step: 0 (none) to 5 (essential)."},
                "final_answer_status": {"type": "string", "enum": ["Solved", "Unsure", "Unsolved"]},
            },
            "required": ["succeed_tool_calling", "contribution_to_final_answer", "final_answer_status"],
        },
    },
}


# The reference's prompt (`annotate.prompt: reference`), as its annotator sends it: the `evaluate_process_reward`
# template and function of yuyq18/StepTool at commit 121a6ac, src/reward/evaluators/gpt-4-turbo-2024-04-09/
# template.txt and config.yaml (the text between <description> tags, filled by str.format as
# OpenAINormalizedEvaluator.function_call in stabletoolbench/toolbench/tooleval/evaluators/registered_cls/
# tooleval.py does: one user message, no system message, the function forced). `mid_steps` is the Python list of
# "Step k: {...}" strings that get_steps (stabletoolbench/toolbench/tooleval/utils.py) builds from the converted
# answer's tool messages, so it reaches the judge as the list's repr, as there. The text is kept letter for
# letter, its "**" emphasis included: annotations with it are comparable with the reference's released ones.
REFERENCE_PROMPT_VERSION = "reference-prompt-121a6ac"  # not "steptool-reference": the imported release (importer.py)
REFERENCE_TEMPLATE = (
    "\nQuery:\n{query}\n\nIntermediate Steps:\n{mid_steps}\n\nFinal Answer:\n{final_answer}\n\n"
    "Based on the query, intermediate steps, and final answer, evaluate the entire task-solving process using the "
    "following criteria:\n\n"
    "1. **Successful Tool Calling**: For each intermediate step, indicate whether a tool was successfully called, "
    "with a score of 0 (no) or 1 (yes).\n"
    "2. **Contribution to Final Answer**: Rate the contribution of each intermediate step to the final answer on a "
    "scale of 0 to 5.\n"
    "3. **Final Answer Status**: Determine the final answer status as 'Solved', 'Unsure', or 'Unsolved'.\n\n"
    "Please call the `evaluate_process_reward` function to return your evaluation.\n")
REFERENCE_TOOL = {
    "type": "function",
    "function": {
        "name": "evaluate_process_reward",
        "description": "Evaluate the entire task-solving process, including tool calls, the contribution of each "
                       "intermediate step to the final answer, and the status of the final answer.",
        "parameters": {
            "type": "object",
            "properties": {
                "succeed_tool_calling": {
                    "type": "array",
                    "description": "Provide a binary score (0 or 1) indicating whether **each intermediate step** "
                                   "successfully called the tool.",
                    "items": {"type": "number",
                              "description": "0 for unsuccessful tool calls, 1 for successful tool calls"}},
                "contribution_to_final_answer": {
                    "type": "array",
                    "description": "Provide a score (0 to 5) to assess how much **each intermediate step** "
                                   "contributed to the final answer.",
                    "items": {"type": "number",
                              "description": "0 indicates no contribution, and 5 indicates maximum contribution."}},
                "final_answer_status": {
                    "type": "string", "enum": ["Unsure", "Unsolved", "Solved"],
                    "description": "Indicate the status of the final answer. Choose from: 'Unsure', 'Unsolved', "
                                   "or 'Solved'."},
            },
            "required": ["succeed_tool_calling", "contribution_to_final_answer", "final_answer_status"],
        },
    },
}


_SECRET_LIKE = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+|\bsk-[A-Za-z0-9_\-]{6,}")


MAX_RETRY_AFTER_S = 120.0  # a longer Retry-After (a day's quota gone) is capped: the run fails, a rerun resumes


def retry_after_s(exc: BaseException | None, now: float | None = None) -> float:
    """Seconds the server asked to wait in the error's `Retry-After-Ms` or `Retry-After` header (seconds or an
    HTTP date), capped at MAX_RETRY_AFTER_S; 0 when it gave none or gave nonsense."""
    import email.utils
    import time

    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return 0.0
    try:
        if headers.get("retry-after-ms") is not None:
            value = float(headers["retry-after-ms"]) / 1000.0
        else:
            raw = headers.get("retry-after")
            if raw is None:
                return 0.0
            try:
                value = float(raw)
            except ValueError:
                when = email.utils.parsedate_to_datetime(raw)
                value = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return min(MAX_RETRY_AFTER_S, value) if value == value and value > 0 else 0.0


def redact(text: str, key: str = "") -> str:
    """`text` (an error message that goes to failed.json and the logs) without the API key: the key's value,
    any `Bearer <token>` and anything shaped like an OpenAI key, replaced before the text is cut, so an
    endpoint that echoes the Authorization header cannot put the key in a file."""
    if key:
        text = text.replace(key, "[redacted]")
    return _SECRET_LIKE.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


@functools.cache
def sdk_http_response() -> type:
    """The Response class of the HTTP library the installed openai SDK sends with (httpx, or httpx2 from openai
    3): asked for as `cast_to`, the SDK returns the raw response."""
    import importlib

    import openai

    lib = next(c.__module__ for c in openai.DefaultAsyncHttpxClient.__mro__ if c.__module__.split(".")[0] != "openai")
    return importlib.import_module(lib.split(".")[0]).Response


class InvalidAnswer(ValueError):
    pass


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _response_chars(fixed_text: str, steps: list[dict], cfg: AnnotateConfig) -> int:
    """Characters each tool response may keep: `max_response_chars`, less (evenly, at least 80) when the prompt's
    estimate would not fit `max_prompt_tokens` otherwise."""
    budget_chars = cfg.max_prompt_tokens * CHARS_PER_TOKEN - len(fixed_text) - 400
    fixed = sum(len(s["name"]) + len(s["arguments"]) + 40 for s in steps)
    if not steps:
        return cfg.max_response_chars
    return max(80, min(cfg.max_response_chars, (budget_chars - fixed) // len(steps)))


def build_messages(query: str, steps: list[dict], final_answer: str, finish_type: str, cfg: AnnotateConfig) -> list[dict]:
    """The chat for one trajectory. `steps` are the intermediate steps (name, arguments, response text).
    Responses are cut to `max_response_chars`, then all of them evenly until the estimate fits the budget."""
    per_response = _response_chars(SYSTEM + query + final_answer, steps, cfg)
    lines = [f"Query:\n{query}\n", f"Intermediate steps ({len(steps)}):"]
    for i, s in enumerate(steps, 1):
        lines.append(f"Step {i}: call {s['name']} with arguments {s['arguments']}\nResponse: "
                     f"{_cut(s['response'], per_response)}")
    if not steps:
        lines.append("(none)")
    answer = final_answer if finish_type == "give_answer" and final_answer else (
        "(the agent gave up)" if finish_type == "give_up" else "(the agent gave no final answer)")
    lines.append(f"\nFinal answer:\n{answer}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def build_reference_messages(query: str, steps: list[dict], final_answer: str, cfg: AnnotateConfig) -> list[dict]:
    """The reference's chat for one trajectory (REFERENCE_TEMPLATE): each intermediate step as the converted
    answer's tool message, `str({'name', 'arguments', 'response'})` after "Step k: ", the list's repr as
    `mid_steps`, and the final answer text ("" without one, as the converted answer has). Unlike the reference
    every call is a step even when the trajectory has no Finish (its get_steps()[:-1] would drop the last call,
    whose label then has no step to go to); responses are cut as for our prompt (`_response_chars`; StableToolBench
    observations, at most 1024 characters, fit whole)."""
    per_response = _response_chars(REFERENCE_TEMPLATE + query + final_answer, steps, cfg)
    mid_steps = [f"Step {i}: " + str({"name": s["name"], "arguments": s["arguments"],
                                      "response": _cut(s["response"], per_response)})
                 for i, s in enumerate(steps, 1)]
    return [{"role": "user", "content": REFERENCE_TEMPLATE.format(query=query, mid_steps=mid_steps,
                                                                  final_answer=final_answer)}]


def judge_steps(steps: list[dict]) -> list[dict]:
    """Intermediate steps of a trajectory (steps rows) as the judge sees them."""
    out = []
    for st in steps:
        if step_is_call(st):
            error, response, _ = read_envelope(st.get("observation") or "")
            text = st.get("observation") or ""
            if error:
                text = json.dumps({"error": error, "response": response}, ensure_ascii=False)
            out.append({"name": st.get("api_name") or "(unparsed action)", "arguments": st.get("arguments_json") or "",
                        "response": text})
    return out


_STATUS = re.compile(r"(?:AnswerStatus\.)?(Solved|Unsure|Unsolved)")


def function_arguments(body, name: str) -> tuple[dict, dict]:
    """(arguments, message) of the forced call `name` in a raw chat-completion body, checked at every level: the
    body an object, choices[0].message an object, tool_calls a list whose first entry is an object with a
    `function` object of that name, its `arguments` a JSON object in a string. Anything else is InvalidAnswer
    with the reason (never another exception: an odd answer is a failed attempt, not a crash)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    msg = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if not isinstance(msg, dict):
        raise InvalidAnswer("no choices[0].message object in the response")
    calls = msg.get("tool_calls")
    if not calls:
        raise InvalidAnswer("no function call in the answer")
    if not isinstance(calls, list) or not isinstance(calls[0], dict) or not isinstance(calls[0].get("function"), dict):
        raise InvalidAnswer(f"tool_calls is not a list of function calls: {str(calls)[:60]}")
    fn = calls[0]["function"]
    if fn.get("name") != name:
        raise InvalidAnswer(f"called {fn.get('name')!r}, not {name}")
    raw = fn.get("arguments")
    if not isinstance(raw, str):
        raise InvalidAnswer(f"arguments are not JSON text (a {type(raw).__name__})")
    try:
        args = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise InvalidAnswer(f"arguments are not JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
    if not isinstance(args, dict):
        raise InvalidAnswer("arguments are not an object")
    return args, msg


def answer_status(value) -> str:
    """Solved | Unsure | Unsolved from a judge's status, spelled exactly (or as StableToolBench's
    `AnswerStatus.X`); InvalidAnswer otherwise ("Garbage.Solved" is not Solved)."""
    m = _STATUS.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidAnswer(f"the status must be Solved, Unsure or Unsolved, got {str(value)[:40]!r}")
    return m.group(1)


def parse_answer(body: dict, n_steps: int) -> tuple[list[int], list[float], str]:
    """Validate one raw chat-completion body; raises InvalidAnswer with the reason."""
    args, _ = function_arguments(body, "evaluate_process_reward")
    sc, con, status = (args.get("succeed_tool_calling"), args.get("contribution_to_final_answer"),
                       args.get("final_answer_status"))
    for name, values in (("succeed_tool_calling", sc), ("contribution_to_final_answer", con)):
        if not isinstance(values, list):
            raise InvalidAnswer(f"{name} is not a list")
        if len(values) != n_steps:
            raise InvalidAnswer(f"{name} has {len(values)} values for {n_steps} steps")
    if not all(isinstance(v, (int, float)) and v in (0, 1) for v in sc):
        raise InvalidAnswer(f"succeed_tool_calling values must be 0 or 1: {sc}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 5 for v in con):
        raise InvalidAnswer(f"contribution_to_final_answer values must be 0..5: {con}")
    try:
        status = answer_status(status)
    except InvalidAnswer as e:
        raise InvalidAnswer(f"final_answer_status: {e}") from None
    return [int(v) for v in sc], [float(v) for v in con], status


class JudgeAuthError(SteptoolError):
    """The endpoint refused the key (401/403): the run stops at the first such answer."""


class BudgetExceeded(SteptoolError):
    """The estimated cost of the calls the cache does not hold is above `max_cost_usd`: nothing was called."""


class _RateLimiter:
    """Starts requests evenly: one every 60/`per_minute` s, and a request of n estimated tokens holds the next
    start back by n·60/`tokens_per_minute` s (no burst, so a provider's per-minute window is never exceeded)."""

    def __init__(self, per_minute: int, tokens_per_minute: int = 0):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.per_token = 60.0 / tokens_per_minute if tokens_per_minute > 0 else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self, tokens: int = 0):
        gap = max(self.interval, tokens * self.per_token)
        if not gap:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + gap
        await asyncio.sleep(max(0.0, start - now))


class JudgeClient:
    """What every LLM judge shares: the AsyncOpenAI client, `concurrency` requests in flight, the rate limit,
    tenacity retries on transport faults, the content-addressed cache and the counters."""

    prompt_version = PROMPT_VERSION
    desc = "judge"

    def __init__(self, cfg: AnnotateConfig, cache: JudgeCache):
        self.cfg = cfg
        self.cache = cache
        self._auth_failed = ""
        self.stats = {"judge_calls": 0, "cache_hits": 0, "invalid_answers": 0, "transport_retries": 0,
                      "prompt_tokens": 0, "completion_tokens": 0, "failed_trajectories": 0,
                      "partial_trajectories": 0}

    def request(self, messages: list[dict], tool: dict, run: int, attempt: int) -> dict:
        """A chat request forcing `tool`; the seed tells votes/judging runs and their retries apart (and keys the
        cache, so it must stay as it is)."""
        return {"messages": messages, "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": tool["function"]["name"]}},
                "temperature": self.cfg.temperature, "seed": run * 1000 + attempt}

    def first_requests(self, items: list) -> list[dict]:
        """The requests a run over `items` makes at least (first attempts); subclasses say which."""
        raise NotImplementedError

    def check_budget(self, items: list) -> dict:
        """Count the first-attempt calls the cache does not hold, estimate their tokens and cost, log it, and
        raise BudgetExceeded (before any call) when the cost is above `max_cost_usd`. Retries of invalid
        answers and second calls are not counted: the estimate is a floor on calls, not on the bill."""
        cfg = self.cfg
        requests = self.first_requests(items)
        new = [r for r in requests
               if not self.cache.has(request_key(cfg.model, self.prompt_version, r, endpoint=cfg.base_url))]
        prompt = sum(estimated_tokens(r) for r in new)
        completion = len(new) * cfg.completion_tokens_per_call
        cost = cost_usd(prompt, completion, cfg) * (BATCH_PRICE_FACTOR if cfg.mode == "batch" else 1.0)
        plan = {"planned_calls": len(requests), "planned_uncached": len(new), "estimated_prompt_tokens": prompt,
                "estimated_completion_tokens": completion, "estimated_cost_usd": round(cost, 4)}
        line = (f"{self.desc}: {len(requests)} judge calls planned, {len(requests) - len(new)} in the cache, "
                f"{len(new)} to pay: ~{prompt:,} prompt + ~{completion:,} completion tokens ~ ${cost:.4f} at "
                f"${cfg.price_input_usd_per_mtok}/${cfg.price_output_usd_per_mtok} per M tokens{' x 0.5 (batch)' if cfg.mode == 'batch' else ''} "
                f"(annotate.max_cost_usd {cfg.max_cost_usd or 'none'})")
        log.info(line)
        self.stats.update(plan)
        if cfg.max_cost_usd and cost > cfg.max_cost_usd:
            raise BudgetExceeded(f"{line}: the estimate is above the cap, nothing was called; raise "
                                 "annotate.max_cost_usd (0: no cap) or annotate fewer trajectories")
        return plan

    def prepare(self, items: list) -> None:
        """Before the run: the budget check, then (mode batch) the first attempts through the Batch API."""
        self.check_budget(items)
        if self.cfg.mode == "batch":
            from pipeline.annotate import batch

            self.stats.update(batch.prefill(self, items))

    def run_all(self, items: list, one, progress: bool = True) -> list:
        """`await one(client, item)` for every item, `concurrency` requests at a time; results in order."""
        return asyncio.run(self._run_all(items, one, progress))

    async def _run_all(self, items, one, progress):
        from openai import AsyncOpenAI
        from tqdm import tqdm

        client = AsyncOpenAI(base_url=self.cfg.base_url, api_key=os.environ.get(self.cfg.api_key_env) or "EMPTY",
                             timeout=self.cfg.timeout_s, max_retries=0)  # retries are ours: counted and bounded
        self._sem = asyncio.Semaphore(self.cfg.concurrency)
        self._limiter = _RateLimiter(self.cfg.requests_per_minute, self.cfg.tokens_per_minute)
        bar = tqdm(total=len(items), desc=self.desc, unit="traj", disable=not progress)

        async def each(item):
            result = await one(client, item)
            bar.update(1)
            bar.set_postfix(calls=self.stats["judge_calls"], cached=self.stats["cache_hits"], refresh=False)
            return result

        try:
            return await asyncio.gather(*(each(it) for it in items))
        finally:
            bar.close()
            await client.close()

    async def ask(self, client, request: dict, parse):
        """(parse(body), cache hit, failure reason) for the cached answer to `request`, or a paid call. `parse` reads
        an answer and raises InvalidAnswer on one it refuses: only an answer it reads is cached, a cached one it
        refuses (an older version's, a batch's) is dropped and asked again, and a fresh one it refuses raises
        InvalidAnswer, uncached, for the caller to count and retry with a new request. A transport failure is
        (None, False, reason)."""
        import openai

        key = request_key(self.cfg.model, self.prompt_version, request, endpoint=self.cfg.base_url)
        body = self.cache.get(key)
        if body is not None:
            try:
                parsed = parse(body)
                self.stats["cache_hits"] += 1
                return parsed, True, ""
            except InvalidAnswer:
                self.cache.delete(key)
                self.stats["stale_cache_answers"] = self.stats.get("stale_cache_answers", 0) + 1
        if self._auth_failed:
            raise JudgeAuthError(self._auth_failed)
        try:
            body = await self._call(client, request)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            # every further call would fail the same way: stop the run now rather than fail each trajectory
            self._auth_failed = (
                f"the judge at {self.cfg.base_url} refused the key in ${self.cfg.api_key_env} "
                f"({'set' if os.environ.get(self.cfg.api_key_env) else 'not set'}): "
                + redact(f"{type(e).__name__}: {e}", os.environ.get(self.cfg.api_key_env, ""))[:160]
                + "; answers cached so far are kept")
            raise JudgeAuthError(self._auth_failed) from None
        except Exception as e:  # retries exhausted: a reason, not a crash; not cached, so a rerun retries
            reason = redact(f"{type(e).__name__}: {e}", os.environ.get(self.cfg.api_key_env, ""))
            return None, False, reason[:160]
        parsed = parse(body)  # raises InvalidAnswer before the answer reaches the cache
        self.cache.put(key, self.cfg.model, self.prompt_version, request, body)
        return parsed, False, ""

    async def ask_valid(self, client, messages: list[dict], tool: dict, run: int, parse):
        """`ask` with a new request (`attempt` + 1) after each answer `parse` refuses, up to
        `max_invalid_retries` more: (parsed answer or None, cache hits, failure reason). An answer that never
        parses is a failure naming every refusal."""
        hits, reasons = 0, []
        for attempt in range(self.cfg.max_invalid_retries + 1):
            try:
                answer, hit, failure = await self.ask(client, self.request(messages, tool, run, attempt), parse)
            except InvalidAnswer as e:
                self.stats["invalid_answers"] += 1
                reasons.append(str(e))
                continue
            hits += hit
            return (None, hits, failure) if failure else (answer, hits, "")
        return None, hits, (f"invalid answers after {self.cfg.max_invalid_retries + 1} tries: "
                            + " | ".join(reasons))

    async def _call(self, client, request: dict) -> dict:
        import openai
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

        def count(state):
            self.stats["transport_retries"] += 1

        backoff = wait_exponential(multiplier=0.1, max=10.0) + wait_random(0, 0.1)

        def wait(state) -> float:  # the server's Retry-After when it gives one (at least the backoff)
            exc = state.outcome.exception() if state.outcome else None
            return max(backoff(state), retry_after_s(exc))

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((openai.RateLimitError, openai.APIConnectionError, openai.APITimeoutError,
                                           openai.InternalServerError)),
            wait=wait,
            stop=stop_after_attempt(self.cfg.max_retries), before_sleep=count, reraise=True)
        async for attempt in retrying:
            with attempt:
                if self._limiter.per_token:  # the estimate is a JSON encoding of the request: only when it counts
                    await self._limiter.wait(estimated_tokens(request) + self.cfg.completion_tokens_per_call)
                else:
                    await self._limiter.wait()
                async with self._sem:
                    # The SDK's own POST with the request as the JSON body, answered as the raw HTTP response: the
                    # status errors, headers and connection pool are the SDK's, but neither the request's walk
                    # against the SDK's TypedDicts (~1/3 of the client's CPU per call, measured in bench annotate)
                    # nor the pydantic response models run; the raw body is what the cache keeps.
                    raw = await client.post("/chat/completions", body={"model": self.cfg.model, **request},
                                            cast_to=sdk_http_response())
        self.stats["judge_calls"] += 1
        try:
            body = untrusted.loads(raw.text)  # cached: a lone surrogate would break the SQLite write
        except json.JSONDecodeError:
            body = {"unparsable_body": raw.text[:2000]}  # cached as is: parse_answer calls it invalid
        prompt, completion = usage_tokens(body)
        self.stats["prompt_tokens"] += prompt
        self.stats["completion_tokens"] += completion
        self.stats["cost_usd"] = round(cost_usd(self.stats["prompt_tokens"], self.stats["completion_tokens"],
                                                self.cfg), 6)
        return body


class OpenAIJudge(JudgeClient):
    """The step-grained judge of the annotate stage (see the module doc)."""

    desc = "annotate"

    def __init__(self, cfg: AnnotateConfig, cache: JudgeCache):
        super().__init__(cfg, cache)
        # the prompt is part of every cache key (through prompt_version): the two prompts never share answers
        self.reference = cfg.prompt == "reference"
        self.prompt_version = REFERENCE_PROMPT_VERSION if self.reference else PROMPT_VERSION
        self.tool = REFERENCE_TOOL if self.reference else TOOL

    def annotate(self, items: list[tuple[dict, list[dict], str]], progress: bool = True) -> list[TrajLabel]:
        """`items`: (trajectory row, its step rows, query). Returns one label per item, in order. Stops before
        any call when the estimate is above `max_cost_usd` (check_budget)."""
        self.prepare(items)
        return self.run_all(items, lambda client, it: self._trajectory(client, *it), progress)

    def _messages(self, traj: dict, steps: list[dict], query: str) -> tuple[list[dict], list[dict]]:
        """(the judged calls, the prompt); no prompt when there is nothing to judge (no call and no answer)."""
        calls = judge_steps(steps)
        finish = traj.get("finish_type") or "none"
        if not calls and finish != "give_answer":
            return calls, []
        if self.reference:
            answer = traj.get("final_answer") or "" if finish == "give_answer" else ""
            return calls, build_reference_messages(query, calls, answer, self.cfg)
        return calls, build_messages(query, calls, traj.get("final_answer") or "", finish, self.cfg)

    def first_requests(self, items: list) -> list[dict]:
        out = []
        for traj, steps, query in items:
            _, messages = self._messages(traj, steps, query)
            if messages:
                out += [self.request(messages, self.tool, v, 0) for v in range(self.cfg.n_votes)]
        return out

    async def _trajectory(self, client, traj: dict, steps: list[dict], query: str) -> TrajLabel:
        cfg = self.cfg
        calls, messages = self._messages(traj, steps, query)
        label = TrajLabel(traj["traj_id"], [], "Unsolved", 0.0, "openai", self.prompt_version, cfg.model, cfg.n_votes)
        if not messages:  # nothing to judge: no call and no answer
            label.steps = [StepLabel(None, None) for _ in steps]
            label.votes = 0
            return label
        results = await asyncio.gather(*(self._vote(client, messages, len(calls), v) for v in range(cfg.n_votes)))
        label.cache_hits = sum(r[1] for r in results)
        failures = [r[2] for r in results if r[2]]
        votes = [r[0] for r in results if not r[2]]
        if len(votes) < cfg.min_votes:
            self.stats["failed_trajectories"] += 1
            label.failed = "; ".join(failures)
            return label
        # the votes that came back label the trajectory; the others are recorded (and retried by a rerun),
        # so a trajectory is not dropped for one failed vote, and not silently either
        label.votes = len(votes)
        label.vote_failures = "; ".join(failures)
        self.stats["partial_trajectories"] += bool(failures)
        k = 0
        for st in steps:
            if not step_is_call(st):
                label.steps.append(StepLabel(None, None))
                continue
            sc = [v[0][k] for v in votes]
            con = [v[1][k] for v in votes]
            label.steps.append(StepLabel(sum(sc) / len(sc), sum(con) / len(con),
                                         [{"succeed_tool_calling": a, "contribution": b} for a, b in zip(sc, con)]))
            k += 1
        score = sum(STATUS_VALUE[v[2]] for v in votes) / len(votes)
        label.is_solved_score = score
        label.is_solved = status_of(score)
        label.usage = {"statuses": [v[2] for v in votes]}
        return label

    async def _vote(self, client, messages, n_steps: int, vote: int):
        """(parsed answer, cache hits, failure reason)."""
        answer, hits, failure = await self.ask_valid(client, messages, self.tool, vote,
                                                     parse=lambda b: parse_answer(b, n_steps))
        return (None, hits, f"vote {vote}: {failure}") if failure else (answer, hits, "")


def annotate(trajs: list[dict], steps_by_traj: dict[str, list[dict]], tasks: dict, cfg,
             cache_path: str | None = None, progress: bool = True) -> tuple[list[TrajLabel], dict]:
    """The LLM judge as a registered annotator (pipeline/registry.py): through the cache at `cache_path`
    (default annotate.cache_path), with the judge's counters as statistics."""
    from pipeline.annotate.cache import JudgeCache

    cache = JudgeCache(cache_path or cfg.cache_path)
    try:
        judge = OpenAIJudge(cfg, cache)
        labels = judge.annotate([(t, steps_by_traj[t["traj_id"]], tasks[t["task_id"]].query) for t in trajs],
                                progress)
        return labels, {**judge.stats, "judge_model": cfg.model, "cache_entries": len(cache)}
    finally:
        cache.close()
