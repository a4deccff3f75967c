"""A study too long for one sitting, in pieces: one training seed per piece, each run in its own fresh clone
(`make study-piece SEED=k`), its small outputs kept under reports/study/pieces/s<k>/ (committed: DVC's cache and
data/ do not outlive a session), and the report made over all pieces at the end (`make study-report`). A seed
whose variants do not fit one sitting either is split further by variant (`make study-piece SEED=k
VARIANTS="steptool ppo_outcome"`, kept in reports/study/pieces/s<k>-steptool-ppo_outcome/): each such piece
repeats the seed's warm start and collection, and its variant-free per-seed outputs (the collection's metrics, the
greedy replay before training) must then agree across the pieces, as sft's evaluation must.

A piece keeps exactly what the report stage reads (pipeline/report.py): every evaluation's results.parquet, the
per-seed round tables, metrics, training curves and greedy replays. Everything else (models, trajectories,
annotations) stays behind. Merging concatenates the evaluation results of the trained variants over the pieces;
a model evaluated by every piece without a training seed (base, sft: the same checkpoint, greedy, so the same
answers) is taken once, and pieces that disagree on it are refused rather than averaged.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import polars as pl

from pipeline import layout, variants
from pipeline.errors import SteptoolError
from pipeline.fsutil import atomic_path
from pipeline.schema import EVAL_RESULTS, read_table, write_table

# what the report reads, relative to the workspace (glob patterns over the layout's folders)
_RESULTS = layout.table(Path(""), "results").name
PIECE_FILES = (
    str(layout.EVAL / "*" / _RESULTS),
    *(str(layout.ROUNDS / "*" / "s*" / "r*" / name) for name in layout.ROUND_FILES),
    str(layout.replay_dir(layout.ROUNDS / "*" / "s*" / "r*") / _RESULTS),
    str(layout.METRICS / "*.json"), str(layout.METRICS / "*" / "*.json"), str(layout.METRICS / "*" / "*" / "*.json"),
    str(layout.TRAIN_PLOTS / "*" / "*.json"),
    str(layout.replay_dir(layout.TRAJECTORIES / "s*") / _RESULTS),
    str(layout.RESULTS_MD), str(layout.REPORT_METRICS), "dvc.lock", "params.yaml",
)
_EVAL_RESULTS = str(layout.EVAL / "*" / _RESULTS)


def save_piece(workspace: Path, dest: Path) -> list[str]:
    """Copy a finished piece's report inputs from `workspace` to `dest` (replaced whole, atomically); the paths."""
    files = sorted({p for pattern in PIECE_FILES for p in workspace.glob(pattern) if p.is_file()})
    if not any(p.match(_EVAL_RESULTS) for p in files):
        raise SteptoolError(f"{workspace}: no {_EVAL_RESULTS}: the piece has not been evaluated")
    if dest.is_dir():  # replaced whole: only a piece this command (and make study-piece's RUN.md) wrote
        foreign = [p for p in sorted(dest.rglob("*")) if p.is_file() and p.relative_to(dest).as_posix() != "RUN.md"
                   and not any(p.relative_to(dest).match(pattern) for pattern in PIECE_FILES)]
        if foreign:
            raise SteptoolError(f"{dest}: holds {foreign[0].relative_to(dest)}, which no study piece has: refusing to "
                                "replace the folder (choose an empty or new one)")
    with atomic_path(dest) as tmp:
        for p in files:
            rel = p.relative_to(workspace)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, tmp / rel)
    return [str(p.relative_to(workspace)) for p in files]


def run_precision(params) -> str:
    """What the run's `precision` keys resolve to on this machine ('auto': bf16 on an AMX CPU or a bf16 GPU, else
    fp32), e.g. "agent bf16, warmstart bf16, train bf16": written into each piece's RUN.md."""
    from pipeline.devices import resolve_device, resolve_precision

    device = resolve_device(params.agent.device)
    return ", ".join(f"{k} {resolve_precision(getattr(params, k).precision, device)}"
                     for k in ("agent", "warmstart", "train"))


_PRECISION_LINE = re.compile(r"^- precision: (.+)$", re.M)
_AMX_LINE = re.compile(r"AMX: (yes|no)\b")


def piece_precision(piece: Path) -> str | None:
    """The precisions a piece ran in, from its RUN.md: the line `make study-piece` writes ("- precision: agent bf16,
    ..."), or for a piece made before it did, what 'auto' resolved to on the CPU its machine line names (bf16 with
    AMX, fp32 without: every key of the study profile was 'auto'). None when RUN.md says neither."""
    run = piece / "RUN.md"
    if m := _PRECISION_LINE.search(run.read_text() if run.exists() else ""):
        return m.group(1).strip()
    if (amx := piece_amx(piece)) is not None:
        p = "bf16" if amx else "fp32"
        return f"agent {p}, warmstart {p}, train {p}"
    return None


def piece_amx(piece: Path) -> bool | None:
    """Whether the machine a piece ran on had AMX (its RUN.md's machine line), None when RUN.md does not say."""
    run = piece / "RUN.md"
    m = _AMX_LINE.search(run.read_text()) if run.exists() else None
    return None if m is None else m.group(1) == "yes"


def check_machine(pieces_root: Path, precision: str, amx: bool | None = None) -> None:
    """Refuse to start a piece on a machine where the run's precision resolves otherwise than in the pieces already
    made: their warm start and evaluations would differ (another sft), and `merge_pieces` would refuse the piece
    after hours of work. `precision`: `run_precision`'s string for this machine; `amx`: whether its CPU matmuls use
    AMX (`devices.cpu_amx_kernels`; None on a GPU). bf16 with and without AMX are different kernels, not the same
    precision: an AMD EPYC's AVX512-BF16 warm start began at loss 1.372 where every AMX piece's began at 1.3693."""
    for piece in sorted(p for p in pieces_root.glob("s*") if p.is_dir()):
        theirs = piece_precision(piece)
        if theirs is not None and theirs != precision:
            raise SteptoolError(f"{piece}: made with precision {theirs}, this machine gives {precision}: a piece made "
                                "here would not merge with it (another sft). Run the piece on a machine like the "
                                "others' (its RUN.md names it), or set the profile's precision keys explicitly and "
                                "remake every piece.")
        their_amx = piece_amx(piece)
        if "bf16" in precision and amx is not None and their_amx is not None and their_amx != amx:
            raise SteptoolError(f"{piece}: made in bf16 on a CPU {'with' if their_amx else 'without'} AMX, this "
                                f"machine's bf16 runs {'on' if amx else 'without'} it: the matmuls round "
                                "differently, so a piece made here would not merge with it (another sft). Run the "
                                "piece on a machine like the others' (its RUN.md names it).")


def per_seed(rel: Path) -> bool:
    """Whether a path belongs to one training seed (a part named s<k>, or a file s<k>.json / s<k>.parquet)."""
    return any(re.fullmatch(r"s\d+(\.json|\.parquet)?", part) for part in rel.parts)


def per_variant(rel: Path) -> bool:
    """Whether a path belongs to one trained variant (a part named after one: data/rounds/<variant>/...)."""
    return any(part in variants.REGISTRY for part in rel.parts)


def _same_answers(frames: list[pl.DataFrame], pieces: list[Path], what: str) -> pl.DataFrame:
    """The first of `frames` (one per piece) when every piece judged the same answers; otherwise refused."""
    key = ["task_id", "sample_idx"]
    first = frames[0].sort(key).select("task_id", "sample_idx", "statuses")
    for other, piece in zip(frames[1:], pieces[1:]):
        if not other.sort(key).select("task_id", "sample_idx", "statuses").equals(first):
            raise SteptoolError(f"{piece}: {what}'s judged answers differ from {pieces[0]}'s (the pieces did not "
                                "evaluate the same checkpoint: another machine kind or code?)")
    return frames[0]


def _shared_results(root: Path) -> dict[Path, Path]:
    """The results a piece shares with every other piece, by path relative to `root`: the evaluations of a model
    without a training seed (sft, base) and each seed's greedy replay before training (variant-free)."""
    out = {}
    for p in sorted(root.glob(f"{layout.DATA}/**/{_RESULTS}")):
        rel = p.relative_to(root)
        if rel.match(_EVAL_RESULTS):
            seeds = pl.read_parquet(p, columns=["seed"])["seed"]
            if seeds.null_count() == seeds.len():
                out[rel] = p
        elif per_seed(rel) and not per_variant(rel):
            out[rel] = p
    return out


def check_answers(workspace: Path, pieces: list[Path]) -> list[str]:
    """Refuse a piece half-way, before its training: the shared results `workspace` has made so far (sft's evaluation,
    the seed's greedy replay before training) must judge the same answers as every piece that has them, or the merge
    would refuse the piece after hours of work (another machine kind, or code that generates otherwise: bf16 greedy
    answers depend on how the rows were batched, with continuous batching sft took other steps on 13 of 36 test
    tasks than with the code before it, on an AVX512-BF16 CPU). Returns what was compared ('path: n pieces')."""
    compared = []
    for rel in _shared_results(workspace):
        theirs = [piece for piece in pieces if (piece / rel).is_file()]
        if theirs:
            _same_file_answers(rel, [workspace, *theirs])
            compared.append(f"{rel}: {len(theirs)} pieces")
    return compared


def _same_file_answers(rel: Path, roots: list[Path]) -> None:
    """Refuse unless the results file `rel` judges the same answers under every one of `roots`."""
    _same_answers([pl.from_arrow(read_table(root / rel, EVAL_RESULTS)) for root in roots], roots, str(rel))


def merge_pieces(pieces: list[Path], workspace: Path) -> dict:
    """Lay the pieces' files out in `workspace`'s data/ as one run with every seed would have: per-seed files side
    by side, evaluation results concatenated (a seedless model once). Returns {model-strategy: seeds}."""
    if not pieces:
        raise SteptoolError("no study piece to merge (reports/study/pieces/s<k>/ from `make study-piece SEED=k`)")
    evals: dict[str, list[pl.DataFrame]] = {}
    replays: dict[Path, list[Path]] = {}  # a seed's greedy replay before training: the pieces that have it
    for piece in pieces:
        for rel in _shared_results(piece):
            if not rel.match(_EVAL_RESULTS):  # the seedless evaluations are compared below, by model
                replays.setdefault(rel, []).append(piece)
    for rel, where in replays.items():
        _same_file_answers(rel, where)
    for piece in pieces:
        for p in sorted(piece.glob(f"{layout.DATA}/**/*")):
            rel = p.relative_to(piece)
            if not p.is_file() or rel.match(_EVAL_RESULTS):
                continue
            out = workspace / rel
            if out.exists():
                if per_variant(rel):
                    raise SteptoolError(f"{p}: {rel} is in another piece too (two pieces of the same seed and "
                                        "variant?)")
                continue  # shared by the pieces (the warm start's, a seed's collection metrics): the first piece's
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out)
        for p in sorted(piece.glob(_EVAL_RESULTS)):
            evals.setdefault(p.parent.name, []).append(pl.from_arrow(read_table(p, EVAL_RESULTS)))
    seeds = {}
    for name, frames in evals.items():
        seedless = [f for f in frames if f["seed"].null_count() == f.height]
        if seedless and len(seedless) == len(frames):  # base / sft: the same checkpoint in every piece
            merged = _same_answers(seedless, pieces, name)
        else:
            merged = pl.concat(frames, how="vertical_relaxed")
            dup = merged.group_by("seed", "task_id", "sample_idx").len().filter(pl.col("len") > 1)
            if dup.height:
                raise SteptoolError(f"{name}: seed {dup['seed'][0]} is in more than one piece")
        write_table(merged.to_arrow(), workspace / layout.table(layout.EVAL / name, "results"), EVAL_RESULTS)
        seeds[name] = sorted(s for s in merged["seed"].unique().to_list() if s is not None)
    return seeds
