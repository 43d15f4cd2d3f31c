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
import contextlib
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.spec.defaults import FORWARDED_ENV
from pipelines.spec.errors import UserError
from pipelines.spec.options import build_parser, subcommands
from pipelines.spec.provenance import git_commit

# Non-secret settings a job needs to reach the store and the tracking server (ray_train forwards the same
# ones on to its workers).
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|SESSION|PRIVATE|_KEY$|^AWS_ACCESS_KEY_ID$")
NOT_SECRET = re.compile(r"_(PATH|FILE|MODE|DIR)$")  # e.g. RAY_AUTH_TOKEN_PATH names a file, it is not one
EXCLUDES = [".venv/", ".ganpipe/", ".git/", "__pycache__/", "*.egg-info/", ".pytest_cache/", ".ruff_cache/",
            "build/", "dist/"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def project_root() -> Path | None:
    """The source checkout this ganpipe runs from (None when it is installed as a plain package)."""
    root = Path(__file__).resolve().parents[2]  # pipelines/ops/jobs.py -> the checkout
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
            raise UserError(f"the {what} contains the value of ${name}; secrets must reach a job through the "
                           "cluster's environment, not its command line")


def forwarded_env(extra: list[str], *, address: str) -> tuple[dict[str, str], list[str]]:
    """The env_vars of the runtime environment, and notes for the user (never containing a value of a secret)."""
    names = list(FORWARDED_ENV)
    for name in extra:
        if SECRET_NAME.search(name):
            raise UserError(f"--env {name}: looks like a credential; give it to the cluster's nodes instead "
                           "(README: Running it safely)")
        names.append(name)
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    notes = []
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if urlsplit(uri).password:
        raise UserError("MLFLOW_TRACKING_URI holds a password; set MLFLOW_TRACKING_USERNAME/PASSWORD on the "
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

    if words and words[0] == "--":
        words = words[1:]
    if words and Path(words[0]).name == "ganpipe":
        words = words[1:]
    if not words:
        raise UserError("give the ganpipe command to run after --, e.g. ganpipe submit -- train --recipe dcgan")
    if gpus is not None:
        if workers is not None and workers != gpus:
            raise UserError(f"--gpus {gpus} means {gpus} workers with one GPU each; it contradicts --workers {workers}")
        workers = gpus
    parser = build_parser()
    subparser = subcommands(parser).get(words[0])
    if subparser is None:
        raise UserError(f"unknown ganpipe command {words[0]!r}; commands: {', '.join(subcommands(parser))}")
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
            raise UserError(f"--workers/--gpus do not apply to `ganpipe {words[0]}`")
    words = [*words, *added]
    if not {"-h", "--help"} & set(words):
        try:  # catch a typo here rather than after the cluster has set up the job
            parser.parse_args(words)
        except SystemExit as exc:
            raise UserError(f"`ganpipe {shlex.join(words)}` does not parse (see above)") from exc
    return words


@contextlib.contextmanager
def jobs_client(address: str | None) -> Iterator:
    """A JobSubmissionClient for `address` (else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS / the local cluster).

    The client lets those variables override its argument; an explicit --address should win, so it is put
    in RAY_API_SERVER_ADDRESS for the call.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    if address:
        os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        where = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "auto"
        try:
            client = JobSubmissionClient(address)
        except AuthenticationError:
            raise UserError(auth_hint(where)) from None
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot reach the Ray Jobs API at {where}: {first}") from None
        yield client
    finally:
        if address:
            if saved is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = saved


def auth_hint(where: str) -> str:
    """What to set when the cluster at `where` refused this shell for want of its token (one line)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"the Ray cluster at {where} requires token authentication: export RAY_AUTH_MODE=token in this "
                "shell (the token is read from $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token)")
    return (f"the Ray cluster at {where} refused this shell's token: give it the cluster's own, in $RAY_AUTH_TOKEN, "
            "the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token")


def build_submission(args: argparse.Namespace) -> dict:
    """The keyword arguments of JobSubmissionClient.submit_job for `ganpipe submit` (also used by tests)."""

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
            raise UserError("ganpipe is not running from a source checkout: give --working-dir DIR, or run on "
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


def quiet_upload_logs() -> None:
    # Ray logs every ignored file and the package upload at INFO; warnings still show.
    import logging

    import ray.dashboard.modules.dashboard_sdk  # noqa: F401 - sets its logger's level on import; override after

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)


