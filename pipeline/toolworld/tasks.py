"""ToolWorld tasks: natural-language queries with a gold plan (the calls that solve them) and gold facts.

Levels follow ToolBench: I1 uses one tool, I2 two or three tools of one category, I3 two or three
tools from different categories. A task is a sequence of *intents* (look up an attribute, compare
two entities, list by a filter, read the first item of a sub-list, convert currency, ...), each
with its own calls and facts. Tasks of different splits (train, val, test) never share an entity: every
entity belongs to one split (see `world.py`), and so do filter values, currency pairs and loan amounts.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.config import TasksConfig
from pipeline.task import SPLITS, GoldCall, Task
from pipeline.toolworld import spec as S
from pipeline.toolworld.world import ToolWorld, canonical_json, unit_hash

_TASKS = TasksConfig()  # the defaults of the tasks section, the one place they are written


@dataclass
class Intent:
    name: str
    tool: str
    question: str
    calls: list[GoldCall]
    facts: list[str]
    key: tuple  # identity, to avoid the same question twice in a split


def fact_text(value) -> str:
    """How a gold fact is written: the value as the API returns it."""
    return str(value)


class TaskGenerator:
    """Draws tasks from a `ToolWorld`. Deterministic given (world, seed)."""

    def __init__(self, world: ToolWorld, seed: int, max_gold_calls: int, distractor_tools: int):
        self.world = world
        self.seed = seed
        self.max_calls = max_gold_calls
        self.distractors = distractor_tools
        self.tool_names = list(world.tools)
        self.by_category: dict[str, list[str]] = {}
        for name, t in world.tools.items():
            self.by_category.setdefault(t.category, []).append(name)

    # ------------------------------------------------------------------------------ calls
    def _call(self, tool: str, kind: str, args: dict) -> GoldCall:
        api = next(a for a in self.world.tool_apis(tool) if a.kind == kind)
        return GoldCall(api.category, api.tool_name, api.api_name, api.function_name, canonical_json(args))

    def _search(self, tool: str, ent) -> GoldCall:
        return self._call(tool, "search", {"query": ent.name})

    def _by_id(self, tool: str, kind: str, ent) -> GoldCall:
        return self._call(tool, kind, {self.world.id_param(self.world.tools[tool]): ent.id})

    # ------------------------------------------------------------------------------ intents
    def _costs(self, tool: str, level: str) -> dict[str, int]:
        """Intents this tool supports at this level, with the number of gold calls each needs."""
        t = self.world.tools[tool]
        if isinstance(t, S.CalcSpec):
            return {"fx_convert": 1, "fx_rate": 1} if t.kind == "fx" else {"mortgage_payment": 1, "mortgage_interest": 1}
        askable = [f for f in t.fields if f.ask]
        costs = {"attr": 2, "list": 1}
        if len(askable) >= 2:
            costs["attr2"] = 2
        if t.sub is not None:
            costs["sub"] = 2
        if level == "I1" and any(f.numeric for f in askable):
            costs["compare"] = 4
            if t.sub is not None:
                costs["attr_sub"] = 3
        return costs

    def _intent(self, rng: random.Random, tool: str, name: str, split: str) -> Intent:
        w, t = self.world, self.world.tools[tool]
        if isinstance(t, S.CalcSpec):
            return self._calc_intent(rng, t, name, split)
        ents = [e for e in w.entities[tool] if e.split == split]
        askable = [f for f in t.fields if f.ask]
        e = rng.choice(ents)
        fmt = dict(entity=t.entity, plural=t.plural, name=e.name,
                   a_entity=("an " if t.entity[0] in "aeiou" else "a ") + t.entity)
        if name == "attr":
            f = rng.choice(askable)
            q = rng.choice(S.ATTR_QUESTIONS).format(label=f.label, **fmt)
            return Intent(name, tool, q, [self._search(tool, e), self._by_id(tool, "details", e)],
                          [fact_text(e.values[f.name])], (name, tool, e.id, f.name))
        if name == "attr2":
            f1, f2 = rng.sample(askable, 2)
            q = rng.choice(S.ATTR2_QUESTIONS).format(label=f1.label, label2=f2.label, **fmt)
            return Intent(name, tool, q, [self._search(tool, e), self._by_id(tool, "details", e)],
                          [fact_text(e.values[f1.name]), fact_text(e.values[f2.name])],
                          (name, tool, e.id, *sorted((f1.name, f2.name))))
        if name == "compare":
            f = rng.choice([f for f in askable if f.numeric])
            e2 = rng.choice([x for x in ents if x.id != e.id and x.values[f.name] != e.values[f.name]])
            winner = e if e.values[f.name] > e2.values[f.name] else e2
            q = rng.choice(S.COMPARE_QUESTIONS).format(label=f.label, name2=e2.name, **fmt)
            calls = [self._search(tool, e), self._by_id(tool, "details", e),
                     self._search(tool, e2), self._by_id(tool, "details", e2)]
            return Intent(name, tool, q, calls,
                          [fact_text(e.values[f.name]), fact_text(e2.values[f.name]), winner.name],
                          (name, tool, *sorted((e.id, e2.id)), f.name))
        if name == "list":
            filt = next(f for f in t.fields if f.name == t.filter_field)
            values = sorted({x.values[filt.name] for x in ents})
            value = rng.choice(values)
            hits = sorted((x for x in w.entities[tool] if x.values[filt.name] == value), key=lambda x: x.name)
            q = rng.choice(S.LIST_QUESTIONS).format(label=filt.label, value=value, **fmt)
            return Intent(name, tool, q, [self._call(tool, "list_by", {filt.name: value})],
                          [x.name for x in hits[:3]], (name, tool, value))
        if name in ("sub", "attr_sub"):
            sub = t.sub
            q = rng.choice(sub.questions).format(**fmt)
            facts = [fact_text(e.items[0][sub.ask_field])]
            calls = [self._search(tool, e)]
            key: tuple = (name, tool, e.id)
            if name == "attr_sub":
                f = rng.choice(askable)
                q = rng.choice(S.ATTR_QUESTIONS).format(label=f.label, **fmt) + rng.choice(S.CONNECTORS) + _lower_first(q)
                calls.append(self._by_id(tool, "details", e))
                facts.insert(0, fact_text(e.values[f.name]))
                key += (f.name,)
            calls.append(self._by_id(tool, "sub", e))
            return Intent(name, tool, q, calls, facts, key)
        raise ValueError(f"unknown intent {name!r}")

    def _calc_intent(self, rng: random.Random, t: S.CalcSpec, name: str, split: str) -> Intent:
        w = self.world
        k, part = len(SPLITS), SPLITS.index(split)
        if name.startswith("fx_"):
            codes = sorted(w.fx_usd)
            while True:  # currency pairs are split between the splits by a hash
                src, dst = rng.sample(codes, 2)
                if int(unit_hash("fxpair", w.seed, src, dst) * k) == part:
                    break
            if name == "fx_rate":
                q = rng.choice(S.FX_RATE_QUESTIONS).format(src=src, dst=dst)
                call = self._call(t.tool_name, "fx_rate", {"base": src, "target": dst})
                return Intent(name, t.tool_name, q, [call], [fact_text(w.fx_rate(src, dst))], (name, src, dst))
            amount = rng.randrange(10, 5000) // k * k + part  # amount mod 3 says the split
            q = rng.choice(S.FX_CONVERT_QUESTIONS).format(amount=amount, src=src, dst=dst)
            call = self._call(t.tool_name, "fx_convert", {"amount": amount, "from_currency": src, "to_currency": dst})
            result = w.execute(t.tool_name, "Convert Currency",
                               {"amount": amount, "from_currency": src, "to_currency": dst})["result"]
            return Intent(name, t.tool_name, q, [call], [fact_text(result)], (name, src, dst, amount))
        principal = (rng.randrange(40, 900) // k * k + part) * 1000  # thousands mod 3 say the split
        rate = rng.choice([2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0, 4.25, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0])
        years = rng.choice([10, 15, 20, 25, 30])
        args = {"principal": principal, "annual_rate": rate, "years": years}
        kind = "mortgage_payment" if name == "mortgage_payment" else "mortgage_interest"
        api = next(a for a in w.tool_apis(t.tool_name) if a.kind == kind)
        value = w.execute(t.tool_name, api.api_name, args)
        value = value["monthly_payment"] if kind == "mortgage_payment" else value["total_interest"]
        q = rng.choice(S.MORTGAGE_QUESTIONS).format(principal=principal, rate=rate, years=years)
        if kind == "mortgage_interest":
            q = q.replace("monthly payment", "total interest").replace("monthly mortgage payment", "total interest") \
                 .replace("how much do I pay each month", "how much interest do I pay in total")
        return Intent(name, t.tool_name, q, [self._call(t.tool_name, kind, args)], [fact_text(value)],
                      (name, principal, rate, years))

    # ------------------------------------------------------------------------------ tasks
    def _pick_tools(self, rng: random.Random, level: str) -> list[str]:
        if level == "I1":
            return [rng.choice(self.tool_names)]
        k = rng.choice((2, 3)) if self.max_calls >= 3 else 2
        if level == "I2":
            category = rng.choice(sorted(self.by_category))
            return rng.sample(self.by_category[category], min(k, len(self.by_category[category])))
        categories = rng.sample(sorted(self.by_category), k)
        return [rng.choice(self.by_category[c]) for c in categories]

    def _compose(self, rng: random.Random, level: str, split: str) -> list[Intent] | None:
        tools = self._pick_tools(rng, level)
        if len(tools) > self.max_calls:
            tools = tools[: self.max_calls]
        budget, intents = self.max_calls, []
        for i, tool in enumerate(tools):
            reserve = len(tools) - i - 1  # every later tool needs at least one call
            options = [n for n, c in self._costs(tool, level).items() if c <= budget - reserve]
            if not options:
                return None
            name = rng.choice(sorted(options))
            intent = self._intent(rng, tool, name, split)
            budget -= len(intent.calls)
            intents.append(intent)
        return intents

    def generate(self, split: str, sizes: dict[str, int]) -> list[Task]:
        """`sizes` maps level -> count. Returns tasks in a fixed order (level, then index)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        tasks, seen = [], set()
        for level in ("I1", "I2", "I3"):
            rng = random.Random(f"tasks:{self.seed}:{split}:{level}")
            tries = 0
            while sum(t.level == level for t in tasks) < sizes.get(level, 0):
                tries += 1
                if tries > 200 * (sizes[level] + 10):
                    raise RuntimeError(f"could not draw {sizes[level]} distinct {split} {level} tasks; "
                                       "raise toolworld.entities_per_tool or ask for fewer tasks")
                intents = self._compose(rng, level, split)
                if not intents:
                    continue
                key = tuple(i.key for i in intents)
                if key in seen:
                    continue
                seen.add(key)
                tasks.append(self._task(rng, split, level, sum(t.level == level for t in tasks), intents))
        return tasks

    def _task(self, rng: random.Random, split: str, level: str, index: int, intents: list[Intent]) -> Task:
        query = rng.choice(S.OPENERS) + intents[0].question
        for intent in intents[1:]:
            query += rng.choice(S.CONNECTORS) + _lower_first(intent.question)
        used = [i.tool for i in intents]
        others = [t for t in self.tool_names if t not in used]
        tools = sorted(set(used)) + rng.sample(others, min(self.distractors, len(others)))
        rng.shuffle(tools)
        api_list = [a.doc() for t in tools for a in self.world.tool_apis(t)]
        calls = [c for i in intents for c in i.calls]
        facts = list(dict.fromkeys(f for i in intents for f in i.facts))
        return Task(
            task_id=f"toolworld-{split}-{level}-{index:05d}",
            split=split,
            level=level,
            query=query,
            api_list=api_list,
            gold_calls=calls,
            gold_facts=facts,
            source="toolworld",
            intent="+".join(i.name for i in intents),
            tools=sorted(set(used)),
        )


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != "I " and text[:2] != "I'" else text


def generate_tasks(world: ToolWorld, seed: int, sizes: dict[str, dict[str, int]],
                   max_gold_calls: int = _TASKS.max_gold_calls,
                   distractor_tools: int = _TASKS.distractor_tools) -> dict[str, list[Task]]:
    """{split: tasks} for each split of `sizes` ({split: {level: count}}); each split's draw depends only on its
    own name, so adding a split changes no other. The defaults are the `tasks` section's."""
    gen = TaskGenerator(world, seed, max_gold_calls, distractor_tools)
    return {split: gen.generate(split, per_level) for split, per_level in sizes.items()}
