"""`ganpipe submit` and `ganpipe jobs`: run any ganpipe command on a Ray cluster through the Ray Jobs API.

Secrets never travel with a job. The runtime environment carries the project (working_dir, or a pip
spec / container image) and only the non-secret settings in `FORWARDED_ENV` (store endpoint, region,
tracking URI). Job metadata, entrypoints and runtime environments are readable by anyone who can reach
the dashboard and are kept in the cluster's GCS, so S3 keys, MLflow passwords and tokens must reach the job
through the cluster's own environment: a Kubernetes Secret in the pod spec, an instance role, or
variables set where `ray start` runs. `submit` refuses to send a command line that contains one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.argtypes import non_negative_int, positive_int
from pipelines.cli import CliError

# Non-secret settings a job needs to reach the store and the tracking server (ray_train forwards the same
# ones on to its workers).
FORWARDED_ENV = ("GANPIPE_S3_ENDPOINT", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
                 "AWS_DEFAULT_REGION", "AWS_REGION")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|SESSION|PRIVATE|_KEY$|^AWS_ACCESS_KEY_ID$")
NOT_SECRET = re.compile(r"_(PATH|FILE|MODE|DIR)$")  # e.g. RAY_AUTH_TOKEN_PATH names a file, it is not one
EXCLUDES = [".venv/", ".ganpipe/", ".git/", "__pycache__/", "*.egg-info/", ".pytest_cache/", ".ruff_cache/",
            "build/", "dist/"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def project_root() -> Path | None:
    """The source checkout this ganpipe runs from (None when it is installed as a plain package)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "ganpipe"' in pyproject.read_text():
        return root
    return None


def secret_values(env: dict[str, str] | None = None) -> dict[str, str]:
    """name -> value of every environment variable whose name marks it as a credential."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if SECRET_NAME.search(k) and not NOT_SECRET.search(k) and len(v) >= 6}


def redact(text: str, secrets: dict[str, str] | None = None) -> str:
    for name, value in (secret_values() if secrets is None else secrets).items():
        text = text.replace(value, f"<{name}>")
    return text


def _check_no_secret(text: str, what: str) -> None:
    for name, value in secret_values().items():
        if value in text:
            raise CliError(f"the {what} contains the value of ${name}; secrets must reach a job through the "
                           "cluster's environment, not its command line")


def forwarded_env(extra: list[str], *, address: str) -> tuple[dict[str, str], list[str]]:
    """The env_vars of the runtime environment, and notes for the user (never containing a value of a secret)."""
    names = list(FORWARDED_ENV)
    for name in extra:
        if SECRET_NAME.search(name):
            raise CliError(f"--env {name}: looks like a credential; give it to the cluster's nodes instead "
                           "(README: Running it safely)")
        names.append(name)
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    notes = []
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if urlsplit(uri).password:
        raise CliError("MLFLOW_TRACKING_URI holds a password; set MLFLOW_TRACKING_USERNAME/PASSWORD on the "
                       "cluster's nodes and use a URI without one")
    if not uri or uri.startswith(("sqlite:", "file:", "/", ".")):
        notes.append("note: no MLflow tracking server in MLFLOW_TRACKING_URI: the job tracks into a file inside "
                     "its own working directory, which goes away with the job")
    remote = urlsplit(address if "://" in address else f"http://{address}").hostname not in (
        None, "127.0.0.1", "localhost")
    for k, v in env.items():
        if remote and urlsplit(v).hostname in ("127.0.0.1", "localhost"):
            notes.append(f"note: {k}={v} is this machine's loopback address; the cluster cannot reach it")
    for k in env:
        _check_no_secret(env[k], f"variable {k}")
    return env, notes


def inner_command(words: list[str], *, workers: int | None, gpus: int | None) -> list[str]:
    """The ganpipe command to run, with --workers/--gpus turned into that command's own settings."""
    from pipelines.cli import build_parser

    if words and words[0] == "--":
        words = words[1:]
    if words and Path(words[0]).name == "ganpipe":
        words = words[1:]
    if not words:
        raise CliError("give the ganpipe command to run after --, e.g. ganpipe submit -- train --recipe dcgan")
    if gpus is not None:
        if workers is not None and workers != gpus:
            raise CliError(f"--gpus {gpus} means {gpus} workers with one GPU each; it contradicts --workers {workers}")
        workers = gpus
    parser = build_parser()
    subparser = subcommands(parser).get(words[0])
    if subparser is None:
        raise CliError(f"unknown ganpipe command {words[0]!r}; commands: {', '.join(subcommands(parser))}")
    dests = {a.dest: a for a in subparser._actions}
    added: list[str] = []
    if workers is not None or gpus is not None:
        overrides = dests.get("overrides")
        takes_spec = "--recipe" in subparser._option_string_actions  # a TrainSpec command: train, config, ...
        if overrides is not None and overrides.metavar == "KEY=VALUE" and takes_spec:
            added = [f"scale.workers={workers}"] + (["scale.use_gpu=true"] if gpus else [])
        elif "workers" in dests and gpus is None:
            added = ["--workers", str(workers)]
        else:
            raise CliError(f"--workers/--gpus do not apply to `ganpipe {words[0]}`")
    words = [*words, *added]
    if not {"-h", "--help"} & set(words):
        try:  # catch a typo here rather than after the cluster has set up the job
            parser.parse_args(words)
        except SystemExit as exc:
            raise CliError(f"`ganpipe {shlex.join(words)}` does not parse (see above)") from exc
    return words


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """name -> sub-parser of every ganpipe command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@contextlib.contextmanager
def _client(address: str | None) -> Iterator:
    """A JobSubmissionClient for `address` (else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS / the local cluster).

    The client lets those variables override its argument; an explicit --address should win, so it is put
    in RAY_API_SERVER_ADDRESS for the call.
    """
    from ray.job_submission import JobSubmissionClient

    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    if address:
        os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        try:
            client = JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "auto"
            first = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CliError(f"cannot reach the Ray Jobs API at {where}: {first}") from None
        yield client
    finally:
        if address:
            if saved is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = saved


def build_submission(args: argparse.Namespace) -> dict:
    """The keyword arguments of JobSubmissionClient.submit_job for `ganpipe submit` (also used by tests)."""
    from pipelines.tracking import git_commit

    words = inner_command(args.inner, workers=args.workers, gpus=args.gpus)
    entrypoint = "python -m pipelines.cli " + shlex.join(words)
    _check_no_secret(entrypoint, "command")
    env, notes = forwarded_env(args.env or [], address=args.address or "")
    runtime_env: dict = {"env_vars": env} if env else {}
    if args.image:
        runtime_env["image_uri"] = args.image
    if args.pip:
        runtime_env["pip"] = list(args.pip)
    if not args.no_working_dir and not args.image:
        wd = Path(args.working_dir) if args.working_dir else project_root()
        if wd is None:
            raise CliError("ganpipe is not running from a source checkout: give --working-dir DIR, or run on "
                           "nodes that have ganpipe installed with --no-working-dir / --pip / --image")
        runtime_env["working_dir"] = str(wd)
        runtime_env["excludes"] = EXCLUDES
    metadata = {"ganpipe.command": words[0], "ganpipe.git_commit": git_commit() or "unknown"}
    for what, text in (("metadata", repr(metadata)), ("runtime environment", repr(runtime_env))):
        _check_no_secret(text, what)
    kwargs = {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": metadata}
    if args.submission_id:
        kwargs["submission_id"] = args.submission_id
    return {"kwargs": kwargs, "notes": notes}


def _print(line: str = "") -> None:
    print(redact(line))


def _quiet_upload_logs() -> None:
    # Ray logs every ignored file and the package upload at INFO; warnings still show.
    import logging

    import ray.dashboard.modules.dashboard_sdk  # noqa: F401 - sets its logger's level on import; override after

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


def cmd_submit(args: argparse.Namespace) -> int:
    _quiet_upload_logs()
    plan = build_submission(args)
    kwargs = plan["kwargs"]
    for note in plan["notes"]:
        print(redact(note), file=sys.stderr)
    with _client(args.address) as client:
        job_id = client.submit_job(**kwargs)
        where = f" --address {args.address}" if args.address else ""
        _print(f"submitted {job_id}: {kwargs['entrypoint']}")
        if kwargs["runtime_env"].get("env_vars"):
            _print(f"  environment: {', '.join(sorted(kwargs['runtime_env']['env_vars']))}")
        _print(f"follow:  ganpipe jobs logs {job_id} --follow{where}")
        _print(f"status:  ganpipe jobs status {job_id}{where}")
        _print(f"stop:    ganpipe jobs stop {job_id}{where}")
        if args.follow:
            return _follow(client, job_id)
    return 0


def _follow(client, job_id: str) -> int:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(redact(chunk))
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except RuntimeError:  # the log stream closed early: fall back to polling the status
        pass
    status = str(client.get_job_status(job_id).value)
    while status not in TERMINAL:
        time.sleep(1)
        status = str(client.get_job_status(job_id).value)
    _print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        return _jobs(args)
    except RuntimeError as exc:  # the Jobs API's answer to an unknown job id and other refused requests
        first = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(first) from None


def _jobs(args: argparse.Namespace) -> int:
    with _client(args.address) as client:
        if args.action == "ls":
            jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
            _print(f"{'submission id':<30} {'status':<10} {'started':<19}  entrypoint")
            for j in jobs:
                entry = j.entrypoint if len(j.entrypoint) <= 70 else j.entrypoint[:67] + "..."
                job_id = j.submission_id or j.job_id or "-"
                _print(f"{job_id:<30} {j.status.value:<10} {_when(j.start_time):<19}  {entry}")
            return 0
        if args.job_id is None:
            raise CliError(f"`ganpipe jobs {args.action}` needs a job id (see `ganpipe jobs ls`)")
        if args.action == "status":
            info = client.get_job_info(args.job_id)
            _print(f"job        {args.job_id}")
            _print(f"status     {info.status.value}{f' ({info.message})' if info.message else ''}")
            _print(f"started    {_when(info.start_time)}")
            _print(f"ended      {_when(info.end_time)}")
            _print(f"entrypoint {info.entrypoint}")
            for k, v in sorted((info.metadata or {}).items()):
                _print(f"metadata   {k}={v}")
            return 0 if info.status.value != "FAILED" else 1
        if args.action == "logs":
            if args.follow:
                return _follow(client, args.job_id)
            sys.stdout.write(redact(client.get_job_logs(args.job_id)))
            return 0
        stopped = client.stop_job(args.job_id)
        _print(f"job {args.job_id}: {'stop requested' if stopped else 'was not running'}")
        return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "submit", help="run a ganpipe command on a Ray cluster as a Ray job (Jobs API)",
        description="Submit `ganpipe COMMAND ...` as a Ray job. The project goes along as the job's working_dir "
                    "(or use --pip/--image on clusters that install ganpipe). Only non-secret settings are "
                    f"forwarded ({', '.join(FORWARDED_ENV)}); credentials must be in the cluster's environment.",
        epilog="examples:\n  ganpipe submit --address http://HEAD:8265 --gpus 4 -- train --recipe dcgan "
               "--store s3://bucket/team\n  ganpipe submit -- prep mnist5k --store s3://bucket/team",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_address(p)
    p.add_argument("--workers", type=non_negative_int, help="Ray Train workers of a training command (scale.workers=N)")
    p.add_argument("--gpus", type=positive_int, help="N GPU workers, one GPU each (scale.workers=N scale.use_gpu=true)")
    p.add_argument("--working-dir", help="folder shipped as the job's working_dir (default: this project)")
    p.add_argument("--no-working-dir", action="store_true", help="ship no code: the nodes have ganpipe installed")
    p.add_argument("--pip", action="append", metavar="SPEC", help="pip requirement for the job (repeatable)")
    p.add_argument("--image", help="container image for the job (runtime_env image_uri)")
    p.add_argument("--env", action="append", metavar="NAME",
                   help="also forward this (non-secret) environment variable (repeatable)")
    p.add_argument("--submission-id", help="job id to use (default: Ray picks one)")
    p.add_argument("--follow", action="store_true",
                   help="stream the logs until the job ends; exit status 1 unless it succeeded")
    p.add_argument("inner", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the ganpipe command to run")

    p = sub.add_parser("jobs", help="list Ray jobs, show one's status or logs, stop one",
                       description="Ray Jobs API: ls, status ID, logs ID [--follow], stop ID.")
    p.add_argument("action", choices=("ls", "status", "logs", "stop"))
    p.add_argument("job_id", nargs="?", help="submission id (from `ganpipe submit` or `ganpipe jobs ls`)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    _add_address(p)


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray dashboard / Jobs API, e.g. http://HEAD:8265 "
                                     "(default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, then a local cluster)")
