"""A content-addressed cache of judge calls, in SQLite, shared across runs.

Key: sha256 of (endpoint, model, prompt version, the full request as sent: messages, tools, temperature,
seed…): another endpoint serving a model of the same name never answers from this one's entries.
Value: the raw response body. Every answer is committed the moment it arrives (WAL journal), so a
killed run loses at most the calls in flight, and rerunning the stage, or running it after adding
trajectories, pays only for requests never answered before. Only answers that validate are cached (the
caller's check, e.g. llm_judge.parse_answer): an invalid one is retried with a new request and, on a rerun,
asked again; a cached answer that no longer validates is dropped. Transport failures (429, 5xx, timeouts)
are not answers and are never cached.
The API key is not part of a request and is never stored.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from pipeline.annotate.pricing import usage_tokens
from pipeline.errors import SteptoolError


def request_key(model: str, prompt_version: str, request: dict, endpoint: str = "") -> str:
    blob = json.dumps({"endpoint": endpoint.rstrip("/"), "model": model, "prompt_version": prompt_version,
                       "request": request},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise SteptoolError(f"{self.path}: a folder, not a judge cache file (annotate.cache_path names a file)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("""CREATE TABLE IF NOT EXISTS calls (
                key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT, request TEXT, response TEXT,
                created REAL, prompt_tokens INTEGER, completion_tokens INTEGER)""")
            self._db.execute("SELECT key, response FROM calls LIMIT 1").fetchall()
        except (sqlite3.Error, OSError) as e:
            raise SteptoolError(f"{self.path}: not a usable judge cache ({e}): move it aside (annotate.cache_path), "
                                "and the next run starts a new one") from None

    def get(self, key: str) -> dict | None:
        """The cached answer, or None (also for an entry that is not JSON: it is asked again)."""
        with self._lock:
            row = self._db.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
        try:
            return json.loads(row[0]) if row else None
        except (TypeError, ValueError, RecursionError):
            return None

    def has(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, model: str, prompt_version: str, request: dict, response: dict) -> None:
        prompt, completion = usage_tokens(response)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (key, model, prompt_version, json.dumps(request, ensure_ascii=False),
                              json.dumps(response, ensure_ascii=False), time.time(),
                              prompt, completion))

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM calls WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
