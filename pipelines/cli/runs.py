"""`ganpipe run`, `runs ls|show` and `lineage`: parsed options in, printed results out."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from pipelines.tracking.registry import missing_is_user_error


def cmd_run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    from pipelines.orchestration.runner import run_pipeline
    from pipelines.orchestration.stage_kinds import load_pipeline

    pipe = load_pipeline(args.pipeline)
    outcome = run_pipeline(pipe, only=args.only, force=args.force, dry_run=args.dry_run, engine=args.engine, out=out)
    if args.dry_run:  # a plan is fine as it is, unless the run would need something it cannot reach
        return 2 if outcome.unreachable else 0
    return 0 if outcome.ok else 1


def cmd_runs(args: argparse.Namespace) -> int:
    from pipelines.orchestration.lineage import list_runs, show_run
    from pipelines.tracking.runs import client, resolve_tracking_uri

    mlf = client(resolve_tracking_uri(args.tracking_uri))
    if args.runs_command == "ls":
        return list_runs(mlf, experiment=args.experiment, pipeline=args.pipeline, limit=args.limit)
    parent = show_run(mlf, args.run, experiment=args.experiment)
    return 0 if parent.info.status == "FINISHED" else 1



def cmd_lineage(args: argparse.Namespace) -> int:
    from pipelines.orchestration.lineage import lineage, print_lineage
    from pipelines.tracking.runs import client, resolve_tracking_uri

    with missing_is_user_error():
        info = lineage(client(resolve_tracking_uri(args.tracking_uri)), args.model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_lineage(info)
    return 0
