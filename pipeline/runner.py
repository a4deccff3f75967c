"""Running a stage from the command line: one argparse path for `python -m stages.<name>` (what `dvc.yaml`
runs) and for `steptool <name>` (the CLI builds its stage subcommands with `add_stage_arguments` too).

A stage module holds a docstring (its help), `run(params, root, **args) -> str` (the one-line summary it
prints) and `ARGS`, its arguments as (name, argparse keyword arguments) pairs (positional, or options such as
`--out` with a `dest`). This module
imports no stage: stages import it, and the CLI imports both.

Every user error (bad params, a missing file, a port in use) is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from pipeline.errors import SteptoolError

Positional = tuple[tuple[str, dict], ...]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "httpx", "httpx2", "filelock"):  # httpx2: the openai SDK's transport from 3.0
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_common(parser: argparse.ArgumentParser) -> None:
    """--params, --root and -v, shared by every stage."""
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    parser.add_argument("--root", default=".", help="directory that holds data/ (default: the current one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def guard(fn: Callable[[], int | None]) -> int:
    """Run `fn`; a SteptoolError, or an OSError that names a path, becomes one line on stderr and exit status 2."""
    try:
        return fn() or 0
    except SteptoolError as e:
        print(f"steptool: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steptool: interrupted (partial work is kept; rerun to continue)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `steptool params | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the machine refused (no space, no permission, a path in the way): one line, naming it
        if e.filename is None:
            raise
        logging.getLogger(__name__).debug("the operating system's error", exc_info=True)  # -v shows where
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else e.filename
        print(f"steptool: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2


def add_stage_arguments(parser: argparse.ArgumentParser, run: Callable, positional: Positional = ()) -> None:
    """The stage's positional arguments and the common flags; `args.func` runs it (see `run_parsed`)."""
    for arg, kwargs in positional:
        parser.add_argument(arg, **kwargs)
    add_common(parser)
    names = tuple(kw.get("dest") or arg.lstrip("-").replace("-", "_") for arg, kw in positional)
    parser.set_defaults(func=lambda args: run_parsed(run, args, names))


def run_parsed(run: Callable, args: argparse.Namespace, names: tuple[str, ...] = ()) -> int:
    """Load the params, run the stage with its positional arguments by name, print its summary and time."""
    from pipeline.config import load_params

    t0 = time.perf_counter()
    try:
        params = load_params(args.params)
        summary = run(params, Path(args.root), **{n: getattr(args, n) for n in names})
    except KeyboardInterrupt:
        raise  # partial work stays where it is, for the rerun to continue
    except BaseException as e:  # a refusal (SteptoolError) or a crash: nothing of the previous run is lost
        restored = restore_after_failure()
        if restored:
            said = f"the previous outputs are back: {', '.join(restored)}"
            if isinstance(e, SteptoolError):
                e.args = (f"{e} ({said})",) + e.args[1:]
            else:
                print(f"steptool: {said}", file=sys.stderr)
        raise
    print(f"{summary} [{time.perf_counter() - t0:.1f}s]")
    return 0


def restore_after_failure() -> list[str]:
    """Under `dvc repro` (DVC_STAGE and DVC_ROOT set), the outputs DVC removed before running this stage, put back
    from its cache when the stage fails (pipeline/dvc_restore.py); outside DVC nothing (nothing was removed)."""
    stage, dvc_root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not (stage and dvc_root):
        return []
    from pipeline.dvc_restore import restore_outputs

    return restore_outputs(Path(dvc_root), stage)


def run_stage(name: str, doc: str | None, run: Callable, argv: list[str] | None = None,
              positional: Positional = ()) -> int:
    """Entry point of `python -m stages.<name>`."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage_arguments(parser, run, positional)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return guard(lambda: args.func(args))
