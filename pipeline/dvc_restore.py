"""Putting back the outputs DVC removed before a stage that then refused its input or failed.

`dvc repro` deletes a stage's (non-persistent) outputs before it runs the command, so a stage that exits at
once on a bad param would leave its previous outputs gone (`make repro` checks the params before DVC runs, but
`dvc repro` and `dvc exp run -S key=bad` do not), and a stage that refuses its input or crashes midway would
leave them gone too. When a stage run by DVC (DVC sets DVC_STAGE and DVC_ROOT) ends with any error, refusal or
crash, `pipeline/runner.py` calls `restore_outputs`: every output dvc.lock records for the stage
is copied back from the local DVC cache (a directory through its `.dir` manifest), so the workspace is as it
was and only the refusal is new. Outputs not in the cache (`cache: false`, or never built) are left alone.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
from pathlib import Path

import yaml


def cache_dir(root: Path) -> Path:
    """The local DVC cache: `cache.dir` of .dvc/config (relative to .dvc/), else .dvc/cache."""
    cfg = configparser.ConfigParser()
    cfg.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    configured = cfg.get("cache", "dir", fallback=None) if cfg.has_section("cache") else None
    return (root / ".dvc" / configured).resolve() if configured else root / ".dvc" / "cache"


def _cached(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def restore_outputs(root: Path, stage: str) -> list[str]:
    """Copy back each output of `stage` (its dvc.lock name, e.g. 'train@steptool-0') that is missing from the
    workspace and whole in the cache; returns the paths restored. Never raises: a restore that cannot be
    done leaves things as DVC left them."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8")) or {}
        outs = (lock.get("stages") or {}).get(stage, {}).get("outs") or []
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    cache, restored = cache_dir(root), []
    for out in outs:
        path, md5 = root / out.get("path", ""), out.get("md5")
        if not md5 or path.exists():
            continue
        try:
            src = _cached(cache, md5)
            if md5.endswith(".dir"):
                entries = json.loads(src.read_text())
                if not all(_cached(cache, e["md5"]).exists() for e in entries):
                    continue
                tmp = path.with_name(f".{path.name}.restore")
                shutil.rmtree(tmp, ignore_errors=True)
                for e in entries:
                    dest = tmp / e["relpath"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(_cached(cache, e["md5"]), dest)
                os.replace(tmp, path)
            elif src.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, path)
            else:
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        restored.append(out["path"])
    return restored
