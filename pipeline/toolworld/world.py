"""ToolWorld: a seeded, deterministic world of tools that answers like real APIs.

`ToolWorld(seed, entities_per_tool)` draws every entity from `spec.py` with its own seed, writes
the ToolBench api docs of every API, and answers calls with `call(...)`, which returns the
StableToolBench envelope ``{"error": str, "response": ...}``. The same inputs always give the
same answer, in-process or through `steptool serve-tools`.

Failure modes, as real APIs have them: unparsable tool input, an unexpected or missing parameter
(Python's TypeError wording, as StableToolBench's generated tools raise), an ill-typed value
(a 400 in the response body with an empty ``error``), an unknown id (a 404 in the body), empty
results, and a transient rate limit (seeded per episode and attempt, so a retry can succeed).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pipeline import untrusted
from pipeline.errors import SteptoolError
from pipeline.task import SPLITS
from pipeline.toolworld import spec as S
from pipeline.toolworld.naming import category_dir, function_name, standardize

RATE_LIMIT_ERROR = "Rate limit per minute error..."
PARSE_ERROR = "Tool input parse error...\n"
MAX_LIMIT = 20


def _title(s: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in s.split())


def canonical_json(obj: Any) -> str:
    """Key-sorted, compact JSON: the identity of a set of arguments."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def unit_hash(*parts: Any) -> float:
    """A deterministic number in [0, 1) from `parts` (same on every machine and Python version)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Entity:
    id: str
    name: str
    split: str
    values: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)  # the sub-list (reviews, ...), already sorted


@dataclass
class Api:
    """One callable API: its ToolBench doc and what it does."""

    category: str
    tool_name: str
    api_name: str
    kind: str  # search | details | list_by | sub | fx_convert | fx_rate | fx_list | mortgage_payment | mortgage_interest
    required: list[dict]
    optional: list[dict]
    description: str
    template_response: dict

    @property
    def function_name(self) -> str:
        return function_name(self.tool_name, self.api_name)

    def doc(self) -> dict:
        """The api doc as ToolBench/StableToolBench write it."""
        return {
            "category_name": self.category,
            "tool_name": self.tool_name,
            "api_name": self.api_name,
            "api_description": self.description,
            "required_parameters": self.required,
            "optional_parameters": self.optional,
            "method": "GET",
            "template_response": self.template_response,
        }


def _param(name: str, type_: str, description: str, default: Any = "") -> dict:
    return {"name": name, "type": type_, "description": description, "default": default}


class _ValueDrawer:
    """Draws field values and unique names from the pools in spec.py."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used_names: set[str] = set()
        # Names of person- and city-named entities: attribute values never reuse them, so that an
        # attribute (a director, a city) can never name an entity of the other split.
        self.reserved: set[str] = set()

    def value(self, f: S.FieldSpec) -> Any:
        r, a = self.rng, f.args
        if f.kind == "int":
            return r.randint(a[0], a[1])
        if f.kind == "float":
            return round(r.uniform(a[0], a[1]), a[2])
        if f.kind == "year":
            return r.randint(a[0], a[1])
        if f.kind == "choice":
            return r.choice(a)
        if f.kind == "person":
            return self._free(lambda: f"{r.choice(S.FIRST_NAMES)} {r.choice(S.LAST_NAMES)}")
        if f.kind == "city":
            return self._free(self.city)
        if f.kind == "date":
            return f"{r.randint(a[0], a[1])}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if f.kind == "time":
            return f"{r.randint(6, 23):02d}:{r.choice(range(0, 60, 5)):02d}"
        if f.kind == "phone":
            return f"+1-555-{r.randint(100, 999)}-{r.randint(1000, 9999)}"
        if f.kind == "code":
            return a[0] + "".join(r.choice("0123456789") for _ in range(a[1]))
        if f.kind == "letters":
            return "".join(r.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(a[0]))
        if f.kind == "title":
            return f"{r.choice(S.ADJECTIVES)} {r.choice(a)}"
        if f.kind == "review":
            return " ".join(r.choice(S.REVIEW_WORDS) for _ in range(r.randint(14, 28))).capitalize() + "."
        raise ValueError(f"unknown field kind {f.kind!r} for field {f.name!r}")

    def _free(self, draw) -> str:
        value = draw()
        while value in self.reserved:
            value = draw()
        return value

    def city(self) -> str:
        return self.rng.choice(S.CITY_PREFIXES) + self.rng.choice(S.CITY_SUFFIXES)

    def unique_name(self, naming: tuple) -> str:
        kind, args = naming[0], naming[1:]
        r = self.rng
        for _ in range(10_000):
            if kind == "adjnoun":
                name = f"{r.choice(S.ADJECTIVES)} {r.choice(args)}"
            elif kind == "person":
                name = f"{r.choice(S.FIRST_NAMES)} {r.choice(S.LAST_NAMES)}"
            elif kind == "city":
                name = self.city()
            elif kind == "code":
                prefix = r.choice(args)
                name = f"{prefix} {r.randint(100, 9999)}" if prefix[-1].isalpha() else f"{prefix}{r.randint(10000, 99999)}"
            elif kind == "drug":
                name = r.choice(S.DRUG_SYLLABLES_A) + r.choice(S.DRUG_SYLLABLES_B) + r.choice(S.DRUG_SYLLABLES_C)
            elif kind == "address":
                name = f"{r.randint(2, 998)} {r.choice(S.ADJECTIVES)} {r.choice(args)}"
            else:
                raise ValueError(f"unknown naming {naming!r}")
            if name not in self.used_names:
                self.used_names.add(name)
                return name
        raise RuntimeError(f"ran out of unique names for {naming!r}: lower toolworld.entities_per_tool")


class ToolWorld:
    """The embedded tool world. Build it with the `toolworld` section's keys (`from_config`; the defaults live
    in pipeline/config.py only); ask it with `call`."""

    def __init__(self, seed: int, entities_per_tool: int, rate_limit_prob: float):
        self.seed = seed
        self.entities_per_tool = entities_per_tool
        self.rate_limit_prob = rate_limit_prob
        rng = random.Random(f"toolworld:{seed}")
        drawer = _ValueDrawer(rng)
        self.tools: dict[str, S.ToolSpec | S.CalcSpec] = {}
        self.entities: dict[str, list[Entity]] = {}
        self.by_id: dict[str, dict[str, Entity]] = {}
        self.apis: list[Api] = []
        self.fx_usd: dict[str, float] = {}
        # Names first, for every tool, so that attribute values can steer clear of them.
        names = {t.tool_name: [drawer.unique_name(t.naming) for _ in range(entities_per_tool)]
                 for t in S.TOOLS if isinstance(t, S.ToolSpec)}
        drawer.reserved = {n for t in S.TOOLS if isinstance(t, S.ToolSpec) and t.naming[0] in ("person", "city")
                           for n in names[t.tool_name]}
        for tool in S.TOOLS:
            self.tools[tool.tool_name] = tool
            if isinstance(tool, S.CalcSpec):
                self._build_calc(tool, rng)
            else:
                self._build_entities(tool, names[tool.tool_name], drawer, rng)
                self.apis.extend(self._entity_apis(tool))
        self._index = {(standardize(a.tool_name), standardize(a.api_name)): a for a in self.apis}

    @classmethod
    def from_config(cls, cfg) -> "ToolWorld":
        """The world of a `params.yaml` `toolworld` section (`pipeline.config.ToolWorldConfig`)."""
        return cls(cfg.seed, cfg.entities_per_tool, cfg.rate_limit_prob)

    @classmethod
    def from_catalog(cls, path) -> "ToolWorld":
        """Rebuild the world that wrote `data/tools/catalog.json` (later stages depend on that file only)."""
        import pathlib

        path = pathlib.Path(path)
        try:
            cat = json.loads(path.read_text(encoding="utf-8"))
            world = cls(int(cat["seed"]), int(cat["entities_per_tool"]), float(cat["rate_limit_prob"]))
        except FileNotFoundError:
            raise SteptoolError(f"{path}: no such file (run the tasks stage: dvc repro tasks)") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SteptoolError(f"{path}: not a ToolWorld catalog ({type(e).__name__}: {e})") from None
        if world.fingerprint() != cat.get("fingerprint"):
            raise SteptoolError(f"{path}: written by another version of ToolWorld (fingerprint "
                                f"{cat.get('fingerprint')} != {world.fingerprint()}): rerun the tasks stage")
        return world

    # ------------------------------------------------------------------------------ building
    def _build_entities(self, tool: S.ToolSpec, names: list[str], drawer: _ValueDrawer, rng: random.Random) -> None:
        filt = next(f for f in tool.fields if f.name == tool.filter_field)
        k = len(SPLITS)
        shares = {s: filt.args[n::k] for n, s in enumerate(SPLITS)}  # each split its own filter values
        ents, ids = [], set()
        for i in range(self.entities_per_tool):
            split = SPLITS[i % k]
            values = {f.name: drawer.value(f) for f in tool.fields}
            values[filt.name] = rng.choice(shares[split])
            eid = f"{tool.id_prefix}_{rng.getrandbits(24):06x}"
            while eid in ids:
                eid = f"{tool.id_prefix}_{rng.getrandbits(24):06x}"
            ids.add(eid)
            ent = Entity(eid, names[i], split, values)
            if tool.sub is not None:
                sub = tool.sub
                items = [{f.name: drawer.value(f) for f in sub.item_fields}
                         for _ in range(rng.randint(*sub.n_items))]
                # A unique first item: the question "which is first" must have one answer.
                items.sort(key=lambda it: it[sub.sort_by], reverse=sub.descending)
                while len(items) > 1 and items[0][sub.sort_by] == items[1][sub.sort_by]:
                    items.pop(1)
                ent.items = items
            ents.append(ent)
        self.entities[tool.tool_name] = ents
        self.by_id[tool.tool_name] = {e.id: e for e in ents}

    def _entity_apis(self, t: S.ToolSpec) -> list[Api]:
        idp = self.id_param(t)
        filt = next(f for f in t.fields if f.name == t.filter_field)
        teaser = {t.search_teaser: "str"} if t.search_teaser else {}
        limit = _param("limit", "NUMBER", f"Maximum number of results (1-{MAX_LIMIT}).", "5")
        out = [
            Api(t.category, t.tool_name, f"Search {_title(t.plural)}", "search",
                [_param("query", "STRING", f"Name, or part of the name, of the {t.entity}.", "")], [limit],
                f"Search {t.plural} by name. Returns matching {t.plural} with their {idp}, best match first.",
                {"query": "str", "total": "int", "results": [{idp: "str", "name": "str", **teaser, "_list_length": 5}]}),
            Api(t.category, t.tool_name, f"Get {_title(t.entity)} Details", "details",
                [_param(idp, "STRING", f"Id of the {t.entity}, as returned by Search {_title(t.plural)}.", "")], [],
                f"All details of one {t.entity}: " + ", ".join(f.label for f in t.fields) + ".",
                {idp: "str", "name": "str", **{f.name: "int" if f.kind in ("int", "year") else
                                                ("float" if f.kind == "float" else "str") for f in t.fields}}),
            Api(t.category, t.tool_name, f"{_title(t.plural)} By {_title(filt.label)}", "list_by",
                [_param(filt.name, "STRING", f"The {filt.label}. One of: {', '.join(filt.args)}.", filt.args[0])], [limit],
                f"List {t.plural} with a given {filt.label}, sorted by name.",
                {filt.name: "str", "total": "int", "results": [{idp: "str", "name": "str", "_list_length": 5}]}),
        ]
        if t.sub is not None:
            out.append(Api(t.category, t.tool_name, t.sub.api_name, "sub",
                           [_param(idp, "STRING", f"Id of the {t.entity}, as returned by Search {_title(t.plural)}.", "")],
                           [], t.sub.description,
                           {idp: "str", t.sub.key: [{f.name: "str" for f in t.sub.item_fields} | {"_list_length": 10}]}))
        return out

    def _build_calc(self, t: S.CalcSpec, rng: random.Random) -> None:
        self.entities[t.tool_name] = []
        self.by_id[t.tool_name] = {}
        if t.kind == "fx":
            currencies = t.extra["currencies"]
            # Value of one unit in USD; log-uniform so rates are not guessable from the real world.
            self.fx_usd = {c: 1.0 if c == "USD" else round(math.exp(rng.uniform(math.log(0.004), math.log(2.5))), 6)
                           for c in currencies}
            cur = _param("from_currency", "STRING", f"ISO code of the currency to convert from. One of: {', '.join(currencies)}.", "USD")
            to = _param("to_currency", "STRING", "ISO code of the currency to convert to.", "EUR")
            self.apis += [
                Api(t.category, t.tool_name, "Convert Currency", "fx_convert",
                    [_param("amount", "NUMBER", "Amount to convert.", "100"), cur, to], [],
                    "Convert an amount between two currencies at today's rate.",
                    {"amount": "float", "from": "str", "to": "str", "rate": "float", "result": "float"}),
                Api(t.category, t.tool_name, "Exchange Rate", "fx_rate",
                    [_param("base", "STRING", "ISO code of the base currency.", "USD"),
                     _param("target", "STRING", "ISO code of the target currency.", "EUR")], [],
                    "Today's exchange rate: how many units of target one unit of base buys.",
                    {"base": "str", "target": "str", "rate": "float", "date": "str"}),
                Api(t.category, t.tool_name, "List Currencies", "fx_list", [], [],
                    "All supported currency codes.", {"currencies": ["list of str with length 12"]}),
            ]
        elif t.kind == "mortgage":
            params = [_param("principal", "NUMBER", "Loan amount in USD.", "250000"),
                      _param("annual_rate", "NUMBER", "Yearly interest rate in percent, e.g. 4.5.", "4.5"),
                      _param("years", "NUMBER", "Term of the loan in years.", "30")]
            self.apis += [
                Api(t.category, t.tool_name, "Monthly Payment", "mortgage_payment", params, [],
                    "Monthly payment of a fixed-rate loan.",
                    {"principal": "float", "annual_rate": "float", "years": "int", "monthly_payment": "float"}),
                Api(t.category, t.tool_name, "Total Interest", "mortgage_interest", params, [],
                    "Total interest paid over the life of a fixed-rate loan.",
                    {"principal": "float", "annual_rate": "float", "years": "int", "total_interest": "float"}),
            ]
        else:
            raise ValueError(f"unknown calculator kind {t.kind!r}")

    # ------------------------------------------------------------------------------ lookup
    @staticmethod
    def id_param(tool: S.ToolSpec) -> str:
        return f"{standardize(tool.entity)}_id"

    def tool_descriptions(self) -> dict[str, str]:
        return {name: t.description for name, t in self.tools.items()}

    def tool_apis(self, tool_name: str) -> list[Api]:
        return [a for a in self.apis if a.tool_name == tool_name]

    def api(self, tool_name: str, api_name: str) -> Api | None:
        """Find an API by its names, written as in the docs or standardized (as StableToolBench does)."""
        return self._index.get((standardize(tool_name), standardize(api_name)))

    @cached_property
    def categories(self) -> list[str]:
        return sorted({t.category for t in self.tools.values()})

    def catalog(self) -> dict:
        """Everything a user or a stage needs to know about the world, as JSON-able data."""
        tools = []
        for name, t in self.tools.items():
            tools.append({
                "category_name": t.category,
                "tool_name": name,
                "tool_description": t.description,
                "api_list": [a.doc() for a in self.tool_apis(name)],
            })
        return {
            "world": "toolworld",
            "seed": self.seed,
            "entities_per_tool": self.entities_per_tool,
            "rate_limit_prob": self.rate_limit_prob,
            "sizes": {"categories": len(self.categories), "tools": len(self.tools), "apis": len(self.apis),
                      "entities": sum(len(v) for v in self.entities.values())},
            "fingerprint": self.fingerprint(),
            "tools": tools,
        }

    def fingerprint(self) -> str:
        """Hash of all docs and data: two worlds with the same fingerprint answer every call alike."""
        h = hashlib.sha256()
        h.update(canonical_json([a.doc() for a in self.apis]).encode())
        for tool, ents in self.entities.items():
            h.update(canonical_json([[tool, e.id, e.name, e.split, e.values, e.items] for e in ents]).encode())
        h.update(canonical_json(self.fx_usd).encode())
        h.update(str(self.rate_limit_prob).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------------------ calling
    def call(self, category: str, tool_name: str, api_name: str, tool_input: str | dict | None,
             *, episode: str = "", attempt: int = 0) -> dict:
        """Answer one call with the StableToolBench envelope ``{"error": str, "response": ...}``.

        `tool_input` is the agent's argument text (JSON) or an already parsed dict. `episode` and
        `attempt` (how many times this exact call was made before in the episode) only seed the
        transient rate limit.
        """
        api = self.api(tool_name, api_name)
        if api is None or (category and category_dir(category) != category_dir(api.category)):
            return {"error": "", "response": {"message": "API doesn't exists"}}
        if isinstance(tool_input, dict):
            args = tool_input
        elif tool_input is None or str(tool_input).strip() == "":
            args = {}
        else:
            try:
                args = untrusted.loads(tool_input)
            except (json.JSONDecodeError, TypeError, RecursionError):
                return {"error": PARSE_ERROR, "response": ""}
            if not isinstance(args, dict):
                return {"error": PARSE_ERROR, "response": ""}
        key = canonical_json(args)
        if self.rate_limit_prob > 0 and unit_hash(self.seed, episode, api.function_name, key, attempt) < self.rate_limit_prob:
            return {"error": RATE_LIMIT_ERROR,
                    "response": "429 Too Many Requests: you have exceeded the rate limit per minute for this API. "
                                "Please retry in a moment."}
        fn = standardize(api.api_name)
        names = [p["name"] for p in api.required + api.optional]
        for k in args:
            if k not in names:
                return {"error": f"Function executing error...\n{fn}() got an unexpected keyword argument '{k}'",
                        "response": ""}
        missing = [p["name"] for p in api.required if p["name"] not in args]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            listed = " and ".join(f"'{m}'" for m in missing)
            return {"error": f"Function executing error...\n{fn}() missing {len(missing)} required positional "
                             f"argument{plural}: {listed}", "response": ""}
        clean: dict[str, Any] = {}
        for p in api.required + api.optional:
            if p["name"] not in args:
                continue
            value, problem = _check_type(args[p["name"]], p["type"])
            if problem:
                return {"error": "", "response": {"status": 400, "message": f"Invalid value for '{p['name']}': {problem}"}}
            clean[p["name"]] = value
        return {"error": "", "response": self._execute(api, clean)}

    def execute(self, tool_name: str, api_name: str, args: dict) -> Any:
        """The `response` of a well-formed call, without transient failures (for task generation)."""
        api = self.api(tool_name, api_name)
        if api is None:
            raise KeyError(f"no API {api_name!r} in tool {tool_name!r}")
        return self._execute(api, args)

    def _execute(self, api: Api, args: dict) -> Any:
        if api.kind.startswith("fx_"):
            return self._fx(api, args)
        if api.kind.startswith("mortgage_"):
            return self._mortgage(api, args)
        tool: S.ToolSpec = self.tools[api.tool_name]  # type: ignore[assignment]
        idp = self.id_param(tool)
        limit = args.get("limit", 5)
        if limit != int(limit) or not 1 <= limit <= MAX_LIMIT:
            return {"status": 400, "message": f"Invalid value for 'limit': must be between 1 and {MAX_LIMIT}, got {limit}"}
        ents = self.entities[api.tool_name]
        if api.kind == "search":
            q = args["query"].strip().lower()
            tokens = _words(q)
            if not tokens:
                return {"status": 400, "message": "Invalid value for 'query': must not be empty"}
            hits = [e for e in ents if set(tokens) <= set(_words(e.name))]
            hits.sort(key=lambda e: (e.name.lower() != q, e.name))
            teaser = tool.search_teaser
            return {"query": args["query"], "total": len(hits),
                    "results": [{idp: e.id, "name": e.name, **({teaser: e.values[teaser]} if teaser else {})}
                                for e in hits[:int(limit)]]}
        if api.kind == "list_by":
            fname = tool.filter_field
            want = args[fname].strip().lower()
            hits = sorted((e for e in ents if str(e.values[fname]).lower() == want), key=lambda e: e.name)
            return {fname: args[fname], "total": len(hits),
                    "results": [{idp: e.id, "name": e.name} for e in hits[:int(limit)]]}
        ent = self.by_id[api.tool_name].get(args[idp].strip())
        if ent is None:
            return {"status": 404, "message": f"No {tool.entity} found with id '{args[idp]}'"}
        if api.kind == "details":
            return {idp: ent.id, "name": ent.name, **ent.values}
        if api.kind == "sub":
            return {idp: ent.id, tool.sub.key: ent.items}
        raise AssertionError(api.kind)

    def fx_rate(self, base: str, target: str) -> float:
        return round(self.fx_usd[base] / self.fx_usd[target], 4)

    def _fx(self, api: Api, args: dict) -> Any:
        if api.kind == "fx_list":
            return {"currencies": sorted(self.fx_usd)}
        src, dst = (args["from_currency"], args["to_currency"]) if api.kind == "fx_convert" else (args["base"], args["target"])
        src, dst = src.strip().upper(), dst.strip().upper()
        for code in (src, dst):
            if code not in self.fx_usd:
                return {"status": 404, "message": f"Unknown currency code '{code}'"}
        rate = self.fx_rate(src, dst)
        if api.kind == "fx_rate":
            return {"base": src, "target": dst, "rate": rate, "date": "2025-06-30"}
        return {"amount": args["amount"], "from": src, "to": dst, "rate": rate,
                "result": round(args["amount"] * rate, 2)}

    @staticmethod
    def monthly_payment(principal: float, annual_rate: float, years: float) -> float:
        n, r = years * 12, annual_rate / 100 / 12
        denom = 1 - (1 + r) ** -n if r > 0 else 0.0
        return round(principal * r / denom if denom > 0 else principal / n, 2)  # a rate too small to matter: 0

    def _mortgage(self, api: Api, args: dict) -> Any:
        p, rate, years = args["principal"], args["annual_rate"], args["years"]
        if p <= 0 or not 1 / 12 <= years <= 100 or not 0 <= rate <= 50:
            return {"status": 400, "message": "principal must be positive, years in [1/12, 100], annual_rate in [0, 50]"}
        pay = self.monthly_payment(p, rate, years)
        out = {"principal": p, "annual_rate": rate, "years": years}
        if api.kind == "mortgage_payment":
            return out | {"monthly_payment": pay}
        return out | {"total_interest": round(pay * years * 12 - p, 2)}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


MAX_NUMBER = 1e12  # larger magnitudes (and NaN, inf) are refused like a real API's validation would


def _check_type(value: Any, type_: str) -> tuple[Any, str]:
    """Coerce a parameter as a web API would (numbers may come as numeric strings). Returns (value, problem):
    a number must be finite and at most MAX_NUMBER in magnitude, so no later arithmetic can overflow or raise."""
    if type_ == "NUMBER":
        if isinstance(value, bool):
            return None, f"expected a number, got {json.dumps(value)}"
        if isinstance(value, str):
            try:
                value = float(value.replace(",", ""))
            except ValueError:
                return None, f"expected a number, got {json.dumps(value)[:80]}"
        if not isinstance(value, (int, float)):
            return None, f"expected a number, got {type(value).__name__}"
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_NUMBER:
            return None, f"expected a finite number of magnitude at most {MAX_NUMBER:g}, got {value!r}"
        num = float(value)
        return (int(num) if num.is_integer() else num), ""
    if isinstance(value, (dict, list)) or value is None:
        return None, f"expected a string, got {json.dumps(value)}"
    return str(value), ""
