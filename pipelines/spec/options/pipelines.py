"""Options of the pipeline commands: `run`, `runs ls|show`, `lineage`."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.spec.argtypes import positive_int
from pipelines.spec.defaults import DEFAULT_EXPERIMENT
from pipelines.spec.options.common import add_tracking_arg


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run a pipeline file: its stages as Ray tasks, cached by key, tracked in MLflow",
        description="Build the stage DAG of a pipeline file (YAML) or Python recipe (module:function or "
                    "file.py:function), reject cycles and dangling references, then run the stages: independent "
                    "ones concurrently as Ray tasks (in this process with `engine: local`), each reused when a "
                    "finished stage with the same cache key exists. A failed stage stops only its dependents; "
                    "running again resumes there. README: Pipelines.",
        epilog="examples:\n  ganpipe run pipelines/examples/course.yaml --dry-run\n"
               "  ganpipe run pipelines/examples/course.yaml --only train_dcgan\n"
               "  ganpipe run my.yaml --force prep      # re-run prep and everything after it\n"
               "  ganpipe submit -- run pipelines/examples/course.yaml   # the same on a Ray cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", metavar="PIPELINE", help="a pipeline YAML file, or module:function / file.py:function")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (and what they need)")
    p.add_argument("--force", nargs="+", metavar="STAGE", help="re-run these stages and everything downstream")
    p.add_argument("--dry-run", action="store_true", help="validate and show what would run or be reused")
    p.add_argument("--engine", choices=("ray", "local"), help="override the file's engine")

    p = sub.add_parser("runs", help="pipeline runs: list them, or show one's stage DAG with status and outputs")
    runs_sub = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    ls = runs_sub.add_parser("ls", help="recent pipeline runs, newest first")
    ls.add_argument("--pipeline", default="", help="only runs of this pipeline name")
    ls.add_argument("--limit", type=positive_int, default=20)
    show = runs_sub.add_parser("show", help="one pipeline run's DAG: each stage's status, duration and outputs")
    show.add_argument("run", metavar="RUN", help="pipeline run id (or a unique prefix, as `ganpipe run` prints)")
    for q in (ls, show):
        q.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"(default {DEFAULT_EXPERIMENT})")
        add_tracking_arg(q)

    p = sub.add_parser("lineage", help="trace a registered model version back to its pipeline, sweep, dataset "
                                       "and code", description="Follow a model version's training run to the "
                                       "pipeline stage that made it and the stages upstream of it.")
    p.add_argument("model", metavar="MODEL", help="models:/NAME/VERSION, models:/NAME@ALIAS or a run id")
    p.add_argument("--json", action="store_true", help="print the lineage as JSON")
    add_tracking_arg(p)
