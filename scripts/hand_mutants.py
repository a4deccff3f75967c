"""The hand-made mutants that once survived the fast tests (docs/mutation.md), each applied alone to a copy of
the repository and run against the tests meant to catch it: every one must be killed.

    .venv/bin/python scripts/hand_mutants.py          # all;  ... 3 7   only those
The working tree is never touched: the copy is made under a temporary folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline import layout

REPO = Path(__file__).resolve().parents[1]
# (file, original text, mutant text, tests that must catch it)
MUTANTS = [
    ("trainer/step_ppo.py", "ratio.clamp(1.0 - a.cliprange, 1.0 + a.cliprange)",
     "ratio.clamp(1.0 + a.cliprange, 1.0 - a.cliprange)", "tests/test_loss.py"),
    ("trainer/step_ppo.py", "(ratio - 1).abs() > a.cliprange", "(ratio - 1).abs() >= a.cliprange", "tests/test_loss.py"),
    ("trainer/step_ppo.py", "pg_tok = torch.max(-adv * ratio,", "pg_tok = torch.min(-adv * ratio,", "tests/test_loss.py"),
    ("trainer/step_ppo.py", "v_err = torch.max(v_err, (v_clip - ret) ** 2)", "v_err = torch.min(v_err, (v_clip - ret) ** 2)",
     "tests/test_loss.py"),
    ("trainer/step_ppo.py", "vf = 0.5 * v_err[valid].mean()", "vf = 0.5 * v_err.mean()", "tests/test_loss.py"),
    ("trainer/step_ppo.py", "loss = pg + a.vf_coef * vf", "loss = pg - a.vf_coef * vf", "tests/test_loss.py"),
    ("trainer/step_ppo.py", "((ratio - 1) - log_ratio).mean()", "(-log_ratio).mean()", "tests/test_loss.py"),
    ("pipeline/stats.py", "[100 * ALPHA / 2, 100 * (1 - ALPHA / 2)]", "[100 * ALPHA, 100 * (1 - ALPHA)]",
     "tests/test_stats.py"),
    ("pipeline/toolworld/fact_judge.py", "{SOLVED: 1.0, UNSURE: 0.5}", "{SOLVED: 1.0, UNSURE: 1.0}", "tests/test_judge.py"),
    ("pipeline/toolworld/fact_judge.py", "if facts and stated == len(facts):", "if stated == len(facts):",
     "tests/test_judge.py"),
    ("pipeline/toolworld/fact_judge.py", "if decimals else 1e-9", "if decimals else 0.5", "tests/test_judge.py"),
    ("pipeline/annotate/succ_calling.py", "bool(containers) and all(not x", "bool(containers) and any(not x",
     "tests/test_annotate.py"),
    ("pipeline/annotate/succ_calling.py", "400 <= s < 600", "400 < s < 600", "tests/test_annotate.py"),
    ("pipeline/annotate/succ_calling.py", "_ERROR_WORDS.search(msg) and not data_keys", "_ERROR_WORDS.search(msg)",
     "tests/test_annotate.py"),
    ("pipeline/annotate/succ_calling.py", "len(x) > 40 for x in v.values())", "len(x) > 4000 for x in v.values())",
     "tests/test_annotate.py"),
    ("pipeline/annotate/succ_calling.py", 'e.lower() in ("none", "null")', 'e.lower() in ("null",)',
     "tests/test_annotate.py"),
    ("pipeline/annotate/succ_calling.py", "if len(v) <= SHORT and _ERROR_WORDS.search(v):",
     "if _ERROR_WORDS.search(v):", "tests/test_annotate.py"),
    ("pipeline/annotate/oracle.py", "query = task.query.casefold()", "query = task.query", "tests/test_annotate.py"),
    ("pipeline/annotate/oracle.py", "v.casefold() not in query", "v not in query", "tests/test_annotate.py"),
    ("pipeline/evaluate/passrate.py", "key=lambda k: int(k) if str(k).isdigit() else k", "key=lambda k: str(k)",
     "tests/test_passrate.py"),
    ("trainer/baselines.py", "first.setdefault(k, x)", "first[k] = x", "tests/test_baselines.py"),
    ("trainer/ppo_round.py", "return a * (log_a - log_b) - a + torch.exp(log_b)",
     "return a * (log_a - log_b) - a + 1.0", "tests/test_baselines.py tests/test_loss.py"),
    ("trainer/gae.py", "last = (delta + gamma * lam * last) * mask[:, t]", "last = (delta + gamma * lam * last)",
     "tests/test_trainer.py"),
    # a missing IsSolved read as Unsure (0.5) instead of 0, in the outcome term and in min_form's last q
    ("pipeline/rewards.py", 'then(pl.col("is_solved_score").fill_null(0.0)).otherwise(0.0)',
     'then(pl.col("is_solved_score").fill_null(0.5)).otherwise(0.0)', "tests/test_rewards.py"),
    ("pipeline/rewards.py", 'then(pl.col("is_solved_score").fill_null(0.0))\n',
     'then(pl.col("is_solved_score").fill_null(0.5))\n', "tests/test_rewards.py"),
]


def main(argv: list[str]) -> int:
    chosen = [int(a) for a in argv] or range(len(MUTANTS))
    alive = 0
    with tempfile.TemporaryDirectory(prefix="hand-mutants-") as tmp:
        ws = Path(tmp) / "repo"
        shutil.copytree(REPO, ws, ignore=shutil.ignore_patterns(".venv", ".git", str(layout.DATA), "build", "mutants",
                                                                ".dvc", ".hypothesis", ".pytest_cache", "*.egg-info"))
        env = {**os.environ, "STEPTOOL_EXTERNAL": os.environ.get("STEPTOOL_EXTERNAL",
                                                                 str(REPO.parent / "shared" / "external"))}
        for i in chosen:
            path, old, new, tests = MUTANTS[i]
            f = ws / path
            src = f.read_text(encoding="utf-8")
            if src.count(old) != 1:
                print(f"{i} STALE {path}: the original text is not there once: {old!r}")
                alive += 1
                continue
            f.write_text(src.replace(old, new), encoding="utf-8")
            try:
                r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                                    "-m", "not slow", *tests.split()], cwd=ws, env=env, capture_output=True, text=True)
            finally:
                f.write_text(src, encoding="utf-8")
            killed = r.returncode != 0
            alive += not killed
            print(f"{i} {'killed' if killed else 'ALIVE '} {path}: {new}", flush=True)
    print(f"{len(list(chosen)) - alive} of {len(list(chosen))} killed")
    return 1 if alive else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
