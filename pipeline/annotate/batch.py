"""`annotate.mode: batch`: the judge's first-attempt calls through the OpenAI Batch API (half the price of
online calls, answered within its 24 h window), then the usual run.

The batch only fills the judge cache: every first-attempt request the cache lacks becomes one JSONL line
(custom_id = its cache key), the answers that come back are stored under those keys, and the online run that
follows finds them there. So everything after (validation, votes, the failure accounting) is the online
path's, and only retries of invalid answers are paid at the online price.

Resumable: the batch id is written (atomically) beside the cache, keyed by the set of requests, before the
first poll; a killed or timed-out run retrieves the same batch on its rerun instead of paying for a second.
"""
from __future__ import annotations

import hashlib
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


def prefill(judge, items: list) -> dict:
    """Send the uncached first attempts of `items` (judge.first_requests) as one batch, wait for it, cache its
    answers. Returns the batch's statistics (merged into the judge's)."""
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
    digest = hashlib.sha256("\n".join(sorted(pending)).encode()).hexdigest()[:16]
    state_path = _state_file(Path(cache.path))
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    client = OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                    timeout=cfg.timeout_s, max_retries=cfg.max_retries)
    if digest in state:
        batch = client.batches.retrieve(state[digest])
        log.info("%s: resuming batch %s (%s) of %d requests", judge.desc, batch.id, batch.status, len(pending))
    else:
        lines = "".join(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": cfg.model, **req}}, ensure_ascii=False) + "\n"
                        for key, req in pending.items())
        upload = client.files.create(file=("steptool-judge.jsonl", io.BytesIO(lines.encode("utf-8"))),
                                     purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"purpose": f"judge calls ({judge.desc})"})
        state[digest] = batch.id
        write_json(state_path, state)
        log.info("%s: batch %s submitted, %d requests", judge.desc, batch.id, len(pending))
    deadline = time.monotonic() + cfg.batch_max_wait_h * 3600
    while batch.status in RUNNING:
        if time.monotonic() > deadline:
            raise SteptoolError(f"batch {batch.id} is still {batch.status} after annotate.batch_max_wait_h = "
                                f"{cfg.batch_max_wait_h} h; rerun to keep waiting for it (its id is in {state_path})")
        time.sleep(cfg.batch_poll_s)
        batch = client.batches.retrieve(batch.id)
    answered = prompt = completion = 0
    if batch.output_file_id:
        for line in client.files.content(batch.output_file_id).text.splitlines():
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
    if batch.status != "completed":
        log.warning("%s: batch %s ended %s; %d answers kept, the rest go online", judge.desc, batch.id, batch.status,
                    answered)
    state.pop(digest, None)  # done: a rerun with new requests submits a new batch
    write_json(state_path, state)
    stats.update(batch_id=batch.id, batch_status=batch.status, batch_answered=answered,
                 batch_failed=len(pending) - answered, batch_prompt_tokens=prompt, batch_completion_tokens=completion,
                 batch_cost_usd=round(BATCH_PRICE_FACTOR * cost_usd(prompt, completion, cfg), 8))
    log.info("%s: batch %s %s: %d of %d answered", judge.desc, batch.id, batch.status, answered, len(pending))
    return stats
