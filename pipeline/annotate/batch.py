"""`annotate.mode: batch`: the judge's first-attempt calls through the OpenAI Batch API (half the price of
online calls, answered within its 24 h window), then the usual run.

The batches only fill the judge cache: every first-attempt request the cache lacks becomes one JSONL line
(custom_id = its cache key), the answers that come back are stored under those keys, and the online run that
follows finds them there. So everything after (validation, votes, the failure accounting) is the online
path's, and only retries of invalid answers are paid at the online price.

Within the Batch API's limits: the requests are split into batches of at most `annotate.batch_max_requests`
lines and `annotate.batch_max_mb` MB (OpenAI: 50,000 and 200 MB per input file); a request too large for a
batch on its own goes online. Resumable: each batch's id and the keys it holds are written (atomically) beside
the cache as soon as it is created; a killed or timed-out run retrieves those batches on its rerun, submits
only the requests no batch holds, and forgets a batch once its answers are cached.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

from pipeline.annotate.cache import request_key
from pipeline.annotate.pricing import BATCH_PRICE_FACTOR, cost_usd, usage_tokens
from pipeline.errors import SteptoolError
from pipeline.fsutil import write_json

log = logging.getLogger("steptool.annotate")
RUNNING = ("validating", "in_progress", "finalizing")


def _state_file(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".batches.json")


def parts(lines: list[tuple[str, bytes]], max_requests: int, max_bytes: int) -> tuple[list[list[str]], list[str]]:
    """Pack (key, JSONL line) pairs, in order, into batches of at most `max_requests` lines and `max_bytes`
    bytes: (each batch's keys, the keys of lines larger than a whole batch may be, which go online)."""
    out: list[list[str]] = []
    too_big: list[str] = []
    keys: list[str] = []
    size = 0
    for key, line in lines:
        if len(line) > max_bytes:
            too_big.append(key)
            continue
        if keys and (len(keys) == max_requests or size + len(line) > max_bytes):
            out.append(keys)
            keys, size = [], 0
        keys.append(key)
        size += len(line)
    if keys:
        out.append(keys)
    return out, too_big


def _load_state(path: Path) -> dict[str, list[str]]:
    """batch id -> the keys it holds; a state file of the one-batch format ({digest: id}) maps each id to []
    (retrieved and read all the same)."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {str(v): [] for v in raw.values()} if raw and all(isinstance(v, str) for v in raw.values()) else raw


def prefill(judge, items: list) -> dict:
    """Send the uncached first attempts of `items` (judge.first_requests) as batches within the API's limits,
    wait for them, cache their answers. Returns the batches' statistics (merged into the judge's)."""
    from openai import OpenAI

    cfg, cache = judge.cfg, judge.cache
    pending: dict[str, dict] = {}
    for req in judge.first_requests(items):
        key = request_key(cfg.model, judge.prompt_version, req, endpoint=cfg.base_url)
        if not cache.has(key):
            pending[key] = req
    stats = {"batch_requests": len(pending)}
    if not pending:
        return stats
    state_path = _state_file(Path(cache.path))
    state = _load_state(state_path)
    client = OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                    timeout=cfg.timeout_s, max_retries=cfg.max_retries)
    batches = {bid: client.batches.retrieve(bid) for bid in state}
    for b in batches.values():
        log.info("%s: resuming batch %s (%s)", judge.desc, b.id, b.status)
    held = {k for keys in state.values() for k in keys}
    lines = [(key, (json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": cfg.model, **req}}, ensure_ascii=False) + "\n").encode("utf-8"))
             for key, req in pending.items() if key not in held]
    by_key = dict(lines)
    new_parts, too_big = parts(lines, cfg.batch_max_requests, int(cfg.batch_max_mb * 1e6))
    if too_big:
        log.warning("%s: %d requests are larger than annotate.batch_max_mb on their own: they go online", judge.desc,
                    len(too_big))
    for i, keys in enumerate(new_parts):
        upload = client.files.create(file=(f"steptool-judge-{i}.jsonl", io.BytesIO(b"".join(by_key[k] for k in keys))),
                                     purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h",
                                      metadata={"purpose": f"judge calls ({judge.desc}), part {i + 1} of {len(new_parts)}"})
        batches[batch.id] = batch
        state[batch.id] = keys
        write_json(state_path, state)  # before any wait: a rerun finds it
        log.info("%s: batch %s submitted, %d requests (part %d of %d)", judge.desc, batch.id, len(keys), i + 1,
                 len(new_parts))
    deadline = time.monotonic() + cfg.batch_max_wait_h * 3600
    while any(b.status in RUNNING for b in batches.values()):
        if time.monotonic() > deadline:
            running = [b for b in batches.values() if b.status in RUNNING]
            raise SteptoolError(f"batch {running[0].id} is still {running[0].status} (and {len(running) - 1} more "
                                f"running) after annotate.batch_max_wait_h = {cfg.batch_max_wait_h} h; rerun to keep "
                                f"waiting for them (their ids are in {state_path})")
        time.sleep(cfg.batch_poll_s)
        batches = {bid: (client.batches.retrieve(bid) if b.status in RUNNING else b) for bid, b in batches.items()}
    answered = prompt = completion = 0
    for b in batches.values():
        if b.output_file_id:
            for line in client.files.content(b.output_file_id).text.splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key, resp = row["custom_id"], row.get("response") or {}
                except (ValueError, KeyError, TypeError):
                    continue  # an unreadable line: its request goes online
                if key in pending and resp.get("status_code") == 200 and isinstance(resp.get("body"), dict):
                    body = resp["body"]
                    cache.put(key, cfg.model, judge.prompt_version, pending[key], body)
                    tokens = usage_tokens(body)
                    prompt += tokens[0]
                    completion += tokens[1]
                    answered += 1
        if b.status != "completed":
            log.warning("%s: batch %s ended %s; its other requests go online", judge.desc, b.id, b.status)
        state.pop(b.id, None)  # read: a rerun with new requests submits new batches
    write_json(state_path, state)
    statuses = sorted({b.status for b in batches.values()})
    stats.update(batch_ids=sorted(batches), batches=len(batches), batch_status=statuses[0] if len(statuses) == 1 else
                 ",".join(statuses), batch_answered=answered, batch_failed=len(pending) - answered,
                 batch_online=len(too_big), batch_prompt_tokens=prompt, batch_completion_tokens=completion,
                 batch_cost_usd=round(BATCH_PRICE_FACTOR * cost_usd(prompt, completion, cfg), 8))
    log.info("%s: %d batches %s: %d of %d answered", judge.desc, len(batches), stats["batch_status"], answered,
             len(pending))
    return stats
