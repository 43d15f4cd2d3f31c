"""The `ganpipe` command: parse with the one description of every command's options (pipelines.spec.options),
then dispatch through one table to the handler of the command group (pipelines.cli.data, training, models, runs,
ops). Handlers print; the work they call takes typed arguments."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Callable, Sequence

from pipelines.cli import data, models, ops, runs, training
from pipelines.spec.errors import UserError
from pipelines.spec.options import build_parser

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prep": data.cmd_prep, "datasets": data.cmd_datasets, "bench-data": data.cmd_bench_data,
    "train": training.cmd_train, "config": training.cmd_config, "sweep": training.cmd_sweep,
    "sample": models.cmd_sample, "eval": models.cmd_eval, "translate": models.cmd_translate,
    "generate": models.cmd_generate, "models": models.cmd_models, "promote": models.cmd_promote,
    "run": runs.cmd_run, "runs": runs.cmd_runs, "lineage": runs.cmd_lineage,
    "ui": ops.cmd_ui, "demo": ops.cmd_demo, "bench": ops.cmd_bench, "services": ops.cmd_services,
    "submit": ops.cmd_submit, "jobs": ops.cmd_jobs,
}


def is_user_error(exc: BaseException) -> bool:
    """Errors caused by input the user can fix: shown as one line instead of a traceback."""
    from data_prep.reader import DatasetNotFound
    from data_prep.sources import SourceError
    from data_prep.storage import StoreError
    from pipelines.tracking.runs import TrackingUnavailable

    return isinstance(exc, (UserError, StoreError, SourceError, DatasetNotFound, ValueError, FileNotFoundError,
                            TrackingUnavailable))


def _bench_overrides_last(argv: list[str]) -> list[str]:
    """`bench --batch 1 ngf=32` would read ngf=32 as a second batch size (--image-size and --batch take several
    values): the KEY=VALUE words go after `--`, where they can only be overrides."""
    if not argv or argv[0] != "bench" or "--" in argv:
        return argv
    overrides = [w for w in argv[1:] if "=" in w and not w.startswith("-")]
    return [w for w in argv if w not in overrides] + (["--", *overrides] if overrides else [])


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError may also come from a socket)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows) or no real stdout: assume it was stdout
        return True


def main(argv: Sequence[str] | None = None) -> int:
    words = _bench_overrides_last(list(sys.argv[1:] if argv is None else argv))
    # The local services' settings, unless the environment says otherwise; before parsing, so that --help shows
    # the defaults they make (store, tracking URI). `services` itself manages that file.
    if next((w for w in words if not w.startswith("-")), None) != "services":
        from pipelines.ops.services import load_env_file

        load_env_file()
    args = build_parser().parse_args(words)
    from pipelines.engine.quiet import quiet_logs
    from pipelines.engine.stop import on_sigterm

    quiet_logs()
    on_sigterm()
    if getattr(args, "s3_endpoint", None):
        os.environ["GANPIPE_S3_ENDPOINT"] = args.s3_endpoint
    try:
        code = HANDLERS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that went away fails here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # `ganpipe ... | head`: the reader has all it wanted. Point stdout at devnull so the flush at exit does
        # not fail again (the Python docs' recipe for SIGPIPE) and exit as a process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        print("ganpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # user errors become one line; anything else keeps its traceback
        if is_user_error(exc):
            print(f"ganpipe {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
