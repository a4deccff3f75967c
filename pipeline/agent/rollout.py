"""Strategies that play tasks: ``cot`` (one chain, many tasks batched) and ``dfsdt`` (depth-first search
with backtracking, ToolBench's DFSDT, one task at a time with the `width` children of a node sampled in
one batch).

Every step keeps what the trainer needs: the action's token ids and behaviour log-probs, the
parse result, and the environment's answer. The context is grown segment by segment with the
same `ChatRenderer` the trainer uses, so rendering a trajectory gives the ids the sampler saw.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from pipeline.agent.name_constraint import function_name_slot
from pipeline.agent.parse import ParsedAction, parse_action
from pipeline.agent.policy import Generation, NameSlot, Policy, Request
from pipeline.agent.prompts import ChatRenderer, system_prompt, user_message
from pipeline.envs import ApiListEnv, StepResult
from pipeline.task import Task


@dataclass
class AgentStep:
    prompt_len: int  # tokens before this action
    generation: Generation
    parsed: ParsedAction
    result: StepResult


@dataclass
class Rollout:
    task: Task
    system: str
    user: str
    strategy: str
    sample_idx: int
    seed: int
    policy: str
    steps: list[AgentStep] = field(default_factory=list)
    tree: list[dict] | None = None  # dfsdt: every node explored
    actions_generated: int = 0

    @property
    def traj_id(self) -> str:
        return traj_id(self.task.task_id, self.policy, self.strategy, self.sample_idx, self.seed)

    @property
    def finish_type(self) -> str:
        return self.steps[-1].result.finish_type if self.steps else "none"

    @property
    def final_answer(self) -> str | None:
        return self.steps[-1].result.final_answer if self.steps else None


def traj_id(task_id: str, policy: str, strategy: str, sample_idx: int, seed: int) -> str:
    """Stable id of a trajectory: the same inputs give the same id on every machine."""
    key = json.dumps([task_id, policy, strategy, sample_idx, seed])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def step_seed(seed: int, task_id: str, sample_idx: int, step: int, child: int = 0) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{task_id}|{sample_idx}|{step}|{child}".encode()).digest()[:8], "big")


def is_error(parsed: ParsedAction, result: StepResult) -> bool:
    """A step that went wrong: bad action, unknown function, or an API error (in `error` or a >=400 body)."""
    if not parsed.parse_ok or result.status in ("no_such_function", "finish_error"):
        return True
    env = result.envelope or {}
    if env.get("error"):
        return True
    resp = env.get("response")
    return isinstance(resp, dict) and isinstance(resp.get("status"), int) and resp["status"] >= 400


@dataclass
class _Chain:
    rollout: Rollout
    env: ApiListEnv
    ids: list[int]
    known: set[str]
    slot: NameSlot | None = None  # constrained decoding of the function name, when asked for


def _known_functions(env: ApiListEnv) -> set[str]:
    return {f["name"] for f in env.functions()}


def _call(chain: _Chain, gen: Generation, renderer: ChatRenderer) -> tuple[ParsedAction, StepResult]:
    parsed = parse_action(gen.text, renderer.fmt, chain.known)
    return parsed, chain.env.step(parsed.api_name, parsed.arguments)


_CALLS_IN_FLIGHT = 32  # tool calls to environments behind a network made at once


def _call_all(chains: list[_Chain], gens: list[Generation], renderer: ChatRenderer):
    """Each chain's tool call for its new action: at once for environments behind a network (each chain has its
    own environment, so the calls are independent), one after the other in process."""
    if len(chains) > 1 and any(getattr(c.env, "parallel_calls", False) for c in chains):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(_CALLS_IN_FLIGHT, len(chains))) as pool:
            return list(pool.map(_call, chains, gens, [renderer] * len(chains)))
    return [_call(c, g, renderer) for c, g in zip(chains, gens)]


def _act(chain: _Chain, gen: Generation, renderer: ChatRenderer, max_steps: int,
         called: tuple[ParsedAction, StepResult] | None = None) -> bool:
    """Apply one generated action (its tool call made here, or `called` already); grow the context. Returns
    whether the chain is finished."""
    parsed, result = called or _call(chain, gen, renderer)
    r = chain.rollout
    r.steps.append(AgentStep(len(chain.ids), gen, parsed, result))
    if result.done or len(r.steps) >= max_steps:
        return True
    chain.ids = chain.ids + gen.token_ids + renderer.encode(renderer.observation_segment(result.observation, gen.ended))
    return False


def _start(task: Task, env: ApiListEnv, renderer: ChatRenderer, policy: Policy, strategy: str,
           sample_idx: int, seed: int, tool_descriptions: dict | None, constrain_names: bool) -> _Chain:
    system = system_prompt(task.api_list, renderer.fmt, tool_descriptions)
    user = user_message(task.query)
    rollout = Rollout(task, system, user, strategy, sample_idx, seed, policy.name)
    env.reset(task, episode=rollout.traj_id)
    known = _known_functions(env)
    slot = function_name_slot(renderer.fmt, known) if constrain_names else None
    return _Chain(rollout, env, renderer.encode(renderer.prefix(system, user)), known, slot)


def _generate(policy: Policy, prompts: list[list[int]], seeds: list[int], slots: list[NameSlot | None]):
    if any(s is not None for s in slots):
        return policy.generate(prompts, seeds, slots=slots)
    return policy.generate(prompts, seeds)


@dataclass(frozen=True)
class Search:
    """How a strategy plays its jobs: what every function of the STRATEGIES registry (pipeline/registry.py) takes,
    from the `agent` section and the collection's seed."""
    strategy: str  # the registered name, recorded in every rollout and its traj_id
    max_steps: int = 8
    seed: int = 0
    constrain_names: bool = False
    tool_descriptions: dict | None = None
    width: int = 2  # a tree search's children per node (agent.dfsdt_width)
    budget: int = 24  # a tree search's actions per job (agent.dfsdt_budget)
    backtrack_on_error: bool = True


def run_chains(jobs: list[tuple[Task, int]], policy: Policy, renderer: ChatRenderer, make_env,
               search: Search, on_done=None) -> list[Rollout]:
    """The `cot` strategy: `run_cot` with `search`'s settings."""
    return run_cot(jobs, policy, renderer, make_env, max_steps=search.max_steps, seed=search.seed,
                   tool_descriptions=search.tool_descriptions, constrain_names=search.constrain_names,
                   strategy=search.strategy, on_done=on_done)


def run_trees(jobs: list[tuple[Task, int]], policy: Policy, renderer: ChatRenderer, make_env,
              search: Search) -> list[Rollout]:
    """The `dfsdt` strategy: `run_dfsdt_batch` with `search`'s settings."""
    return run_dfsdt_batch(jobs, policy, renderer, make_env, max_steps=search.max_steps, width=search.width,
                           budget=search.budget, seed=search.seed, backtrack_on_error=search.backtrack_on_error,
                           tool_descriptions=search.tool_descriptions, constrain_names=search.constrain_names,
                           strategy=search.strategy)


def run_cot(jobs: list[tuple[Task, int]], policy: Policy, renderer: ChatRenderer, make_env, *,
            max_steps: int = 8, seed: int = 0, tool_descriptions: dict | None = None, on_done=None,
            constrain_names: bool = False, strategy: str = "cot", continuous: bool = True) -> list[Rollout]:
    """Play every (task, sample_idx) job as one chain. `constrain_names`: the policy may only write function names the
    task offers (see `NameSlot`). `strategy`: the name recorded in each rollout (and its traj_id). `on_done(rollout)`
    is called as each chain ends. Returns the rollouts in job order.

    With a policy that batches continuously (`serve`, the hf backend) and `continuous`, a chain asks for its next
    action as soon as its tool answered, and that prompt joins the rows still decoding (`_Chains`). Otherwise the
    chains advance together, one `generate` per agent step, each step waiting for the longest action. Both give the
    same actions: every step samples with its own seed (`step_seed`)."""
    make = lambda job: _start(job[0], make_env(), renderer, policy, strategy, job[1], seed,  # noqa: E731
                              tool_descriptions, constrain_names)
    if continuous and hasattr(policy, "serve"):
        source = _Chains(jobs, make, renderer, max_steps, seed, on_done)
        try:
            policy.serve(source)
        finally:
            source.close()
        return source.rollouts()
    chains = [make(job) for job in jobs]
    active = list(chains)
    while active:
        gens = _generate(policy, [c.ids for c in active], [_seed_of(c, seed) for c in active], [c.slot for c in active])
        still = []
        for chain, gen, called in zip(active, gens, _call_all(active, gens, renderer)):
            chain.rollout.actions_generated += 1
            if _act(chain, gen, renderer, max_steps, called):
                if on_done:
                    on_done(chain.rollout)
            else:
                still.append(chain)
        active = still
    return [c.rollout for c in chains]


def _seed_of(chain: _Chain, seed: int) -> int:
    return step_seed(seed, chain.rollout.task.task_id, chain.rollout.sample_idx, len(chain.rollout.steps))


class _Chains:
    """The `RequestSource` (pipeline/agent/policy.py) of `run_cot` under continuous batching: a chain's next prompt is
    ready once the tool answered its last action. Chains already playing go before new ones (a trajectory ends sooner,
    fewer are open at once); a new job's chain and environment are made when it is first taken. Environments behind a
    network (`parallel_calls`) are called on a thread pool, so that decoding goes on while they answer."""

    def __init__(self, jobs, make, renderer: ChatRenderer, max_steps: int, seed: int, on_done):
        from collections import deque

        self.jobs = deque(enumerate(jobs))
        self.chains: dict[int, _Chain] = {}
        self.make, self.renderer, self.max_steps, self.seed, self.on_done = make, renderer, max_steps, seed, on_done
        self.ready: deque = deque()
        self.calls: dict = {}  # future -> (chain, generation)
        self.pool = None

    def take(self, n: int, wait: bool) -> list[Request]:
        self._answered(block=False)
        while wait and not self.ready and not self.jobs and self.calls:  # an answer may end its chain: wait again
            self._answered(block=True)
        out = []
        while len(out) < n and (self.ready or self.jobs):
            if self.ready:
                chain = self.ready.popleft()
            else:
                i, job = self.jobs.popleft()
                chain = self.chains[i] = self.make(job)
            out.append(Request(chain, chain.ids, _seed_of(chain, self.seed), chain.slot))
        return out

    def done(self, chain: _Chain, gen: Generation) -> None:
        chain.rollout.actions_generated += 1
        if getattr(chain.env, "parallel_calls", False):
            from concurrent.futures import ThreadPoolExecutor

            self.pool = self.pool or ThreadPoolExecutor(max_workers=_CALLS_IN_FLIGHT)
            self.calls[self.pool.submit(_call, chain, gen, self.renderer)] = (chain, gen)
        else:
            self._after(chain, gen, None)

    def _answered(self, block: bool) -> None:
        """Apply the tool calls that have answered (waiting for the first one when `block`)."""
        if not self.calls:
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        finished, _ = wait(list(self.calls), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in [f for f in self.calls if f in finished]:  # in submission order
            chain, gen = self.calls.pop(fut)
            self._after(chain, gen, fut.result())

    def _after(self, chain: _Chain, gen: Generation, called) -> None:
        if _act(chain, gen, self.renderer, self.max_steps, called):
            if self.on_done:
                self.on_done(chain.rollout)
        else:
            self.ready.append(chain)

    def rollouts(self) -> list[Rollout]:
        return [self.chains[i].rollout for i in sorted(self.chains)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def run_dfsdt(task: Task, sample_idx: int, policy: Policy, renderer: ChatRenderer, make_env, **kw) -> Rollout:
    """One DFSDT search (see `run_dfsdt_batch`)."""
    return run_dfsdt_batch([(task, sample_idx)], policy, renderer, make_env, **kw)[0]


def run_dfsdt_batch(jobs: list[tuple[Task, int]], policy: Policy, renderer: ChatRenderer, make_env, *,
                    max_steps: int = 8, width: int = 2, budget: int = 24, seed: int = 0,
                    backtrack_on_error: bool = True, tool_descriptions: dict | None = None,
                    constrain_names: bool = False, strategy: str = "dfsdt") -> list[Rollout]:
    """Depth-first search over sampled actions, for many (task, sample_idx) jobs at once.

    From a node, `width` children are sampled and tried in order; a child that gives up, fails (when
    `backtrack_on_error`) or reaches `max_steps` without an answer is a dead end, and the search backtracks
    to the next sibling, then to the parent's next sibling. At most `budget` actions are generated per job.
    The kept trajectory is the first path that gives an answer, else the deepest path explored; `tree`
    records every node. Each search is a generator that asks for its children's generations; the searches
    advance together, so one forward pass serves the open nodes of every job (seeds are per row, so the
    result is the same as searching one job at a time)."""
    searches = [_dfsdt_search(t, k, policy, renderer, make_env, max_steps=max_steps, width=width, budget=budget,
                              seed=seed, backtrack_on_error=backtrack_on_error, tool_descriptions=tool_descriptions,
                              constrain_names=constrain_names, strategy=strategy) for t, k in jobs]
    results: list[Rollout | None] = [None] * len(jobs)
    pending: dict[int, tuple] = {}

    def advance(i: int, sent) -> None:
        try:
            pending[i] = searches[i].send(sent)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)

    for i in range(len(searches)):
        advance(i, None)
    while pending:
        order = list(pending)
        prompts, seeds, slots, spans = [], [], [], []
        for i in order:
            p, sd, sl = pending[i]
            spans.append((len(prompts), len(p)))
            prompts += p
            seeds += sd
            slots += sl
        gens = _generate(policy, prompts, seeds, slots)
        for i, (at, n) in zip(order, spans):
            advance(i, gens[at:at + n])
    return results  # type: ignore[return-value]


def _dfsdt_search(task: Task, sample_idx: int, policy: Policy, renderer: ChatRenderer, make_env, *, max_steps: int,
                  width: int, budget: int, seed: int, backtrack_on_error: bool, tool_descriptions: dict | None,
                  constrain_names: bool, strategy: str):
    """Generator: yields (prompts, seeds, slots) for the children of a node, receives their generations,
    returns the kept Rollout."""
    root = _start(task, make_env(), renderer, policy, strategy, sample_idx, seed, tool_descriptions, constrain_names)
    tree: list[dict] = []
    state = {"generated": 0, "best": root}

    def node_record(chain: _Chain, parent: int, status: str) -> int:
        step = chain.rollout.steps[-1]
        tree.append({"node": len(tree), "parent": parent, "depth": len(chain.rollout.steps),
                     "action": step.generation.text, "observation": step.result.observation, "status": status})
        return len(tree) - 1

    def expand(chain: _Chain, parent: int):
        if state["generated"] >= budget:
            return None
        depth = len(chain.rollout.steps)
        n = min(width, budget - state["generated"])
        seeds = [step_seed(seed, task.task_id, sample_idx, depth, c) for c in range(n)]
        gens = yield [chain.ids] * n, seeds, [chain.slot] * n
        state["generated"] += n
        for gen in gens:
            child = _Chain(_copy_rollout(chain.rollout), chain.env.fork(), chain.ids, chain.known, chain.slot)
            finished = _act(child, gen, renderer, max_steps)
            step = child.rollout.steps[-1]
            if len(child.rollout.steps) >= len(state["best"].rollout.steps):
                state["best"] = child
            if step.result.finish_type == "give_answer":
                node_record(child, parent, "answer")
                return child
            dead = finished or step.result.finish_type == "give_up" or (backtrack_on_error and is_error(step.parsed, step.result))
            me = node_record(child, parent, "give_up" if step.result.finish_type == "give_up" else
                             ("dead_end" if dead else "open"))
            if dead:
                continue
            found = yield from expand(child, me)
            if found is not None:
                return found
            if state["generated"] >= budget:
                return None
        return None

    found = yield from expand(root, -1)
    kept = (found or state["best"]).rollout
    kept.tree = tree
    kept.actions_generated = state["generated"]
    return kept


def _copy_rollout(r: Rollout) -> Rollout:
    return Rollout(r.task, r.system, r.user, r.strategy, r.sample_idx, r.seed, r.policy, list(r.steps))
