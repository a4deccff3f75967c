"""The `steptool` command line: every DVC stage under its `dvc.yaml` name, plus tools. It sits on top of the
import graph (pipeline, trainer <- stages <- steptool); nothing imports it."""
