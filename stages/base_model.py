"""Stage `base_model`: write the base policy as an HF checkpoint in data/models/base (from params base_model.source)."""
from __future__ import annotations

from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.models import build_base_model
from pipeline.runner import run_stage

ARGS = ()


def run(params: Params, root: Path = Path(".")) -> str:
    s = build_base_model(params.base_model.source, root / layout.BASE_MODEL, params.base_model.dtype)
    return f"base_model: {s['source']} -> {s['out']} ({s['params_m']}M parameters, vocab {s['vocab']}, {s['dtype']})"


def main(argv: list[str] | None = None) -> int:
    return run_stage("base_model", __doc__, run, argv, ARGS)


if __name__ == "__main__":
    raise SystemExit(main())
