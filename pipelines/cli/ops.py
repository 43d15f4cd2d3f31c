"""`ganpipe ui`, `demo`, `bench`, `services`, `submit` and `jobs`: parsed options in, printed results out."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from pipelines.ops import jobs, services
from pipelines.spec.defaults import DEFAULT_HOME, STORE_ENV
from pipelines.spec.errors import UserError


def cmd_ui(args: argparse.Namespace) -> int:
    from pipelines.ops.ui import is_server, run_in_own_group, server_answers
    from pipelines.tracking.runs import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if is_server(uri):  # a server shows its own UI; `mlflow ui` would take its URL for a store and fail
        why = server_answers(uri)
        if why:
            raise UserError(f"the MLflow tracking server at {uri} does not answer ({why}); start it "
                            "(`ganpipe services up` for the local one) or give another --tracking-uri")
        print(f"MLflow UI: {uri} (the tracking server's own; nothing started, --host/--port unused)")
        return 0
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    # MLflow's GenAI job runner (eight huey consumer processes) is not used by ganpipe (as in services.py).
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    code = run_in_own_group(cmd, env=env)
    if code > 128:
        print(f"ganpipe ui: stopped by {signal.Signals(code - 128).name}", file=sys.stderr)
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    if args.family in ("pix2pix", "cyclegan"):
        from pipelines.demos.i2i import run_i2i_demo

        out = Path(args.out or f".ganpipe/demo-{args.family}")
        return run_i2i_demo(family=args.family, steps=args.steps, workers=args.workers, seed=args.seed, out=out)
    from pipelines.demos.dcgan import run_demo

    if args.family in ("stargan", "text2img"):
        from pipelines.demos.conditional import run_conditional_demo

        out = Path(args.out or f".ganpipe/demo-{args.family}")
        return run_conditional_demo(family=args.family, steps=args.steps, workers=args.workers, seed=args.seed,
                                    out=out)
    return run_demo(steps=args.steps, workers=args.workers, seed=args.seed, out=Path(args.out or ".ganpipe/demo"))


def cmd_bench(args: argparse.Namespace) -> int:
    from pipelines.ops.bench import Setting, bench_settings, format_breaks, format_table, graph_breaks, write_json

    overrides = dict(item.split("=", 1) for item in args.overrides)
    if args.explain:
        rows = [row for size in args.image_size for batch in args.batch
                for row in graph_breaks(family=args.family, image_size=size, channels=args.channels, batch=batch,
                                        overrides=overrides)]
        print(format_breaks(rows))
        print(f"wrote {write_json(rows, args.out)}")
        return 0
    precisions = args.precision or (["bf16"] if args.amp else ["fp32"])
    settings = [Setting(compile=mode, amp=precision == "bf16", layout=layout)
                for precision in precisions for layout in args.layout for mode in args.compile]
    results = [
        row
        for size in args.image_size for batch in args.batch
        for row in bench_settings(family=args.family, image_size=size, channels=args.channels, batch=batch,
                                  settings=settings, device=args.device, steps=args.steps, warmup=args.warmup,
                                  repeats=args.repeats, overrides=overrides)
    ]
    print(format_table(results))
    print(f"wrote {write_json(results, args.out)}")
    return 0


def format_status(rows: list[services.Health]) -> str:
    lines = [f"{'service':<10} {'state':<10} {'url':<24} {'pid':<8} log"]
    for r in rows:
        lines.append(f"{r.name:<10} {r.state:<10} {r.url or '-':<24} {r.pid or '-'!s:<8} {r.log}")
    return "\n".join(lines)


def cmd_services(args: argparse.Namespace) -> int:
    home = DEFAULT_HOME
    if args.action == "down":
        services.down(home)
        return 0
    if args.action == "up":
        rows = services.up(home, s3_port=args.s3_port, mlflow_port=args.mlflow_port, bucket=args.bucket,
                           timeout_s=args.timeout)
    else:
        rows = services.status(home)
    print(format_status(rows))
    if args.action == "up" or all(r.state == "healthy" for r in rows):
        layout = services.Layout.of(home)
        state = services.load_state(layout)
        if args.action == "up" or layout.env.exists():
            env = services.service_env(layout, state)
            shown = {k: ("<in the env file>" if k in services.SECRET_KEYS else v) for k, v in env.items()}
            print(f"\nganpipe commands run from this folder pick these up from {layout.env} (mode 0600).")
            print("For other shells and tools (ray start, mlflow, aws):")
            print(f"  set -a; . {layout.env}; set +a")
            print("which exports:")
            print("\n".join(f"  {k}={v}" for k, v in shown.items()))
            print(f"Commands without --store use {env[STORE_ENV]} (${STORE_ENV}).")
    return 0 if all(r.state == "healthy" for r in rows) else 1


def _print(line: str = "") -> None:
    print(jobs.redact(line))


def cmd_submit(args: argparse.Namespace) -> int:
    jobs.quiet_upload_logs()
    plan = jobs.build_submission(args)
    kwargs = plan["kwargs"]
    for note in plan["notes"]:
        print(jobs.redact(note), file=sys.stderr)
    with jobs.jobs_client(args.address) as client:
        try:
            job_id = client.submit_job(**kwargs)
        except RuntimeError as exc:  # the Jobs API refused it, e.g. "No available agent" just after `ray start`
            raise UserError(f"the Ray Jobs API did not take the job: {_first_line(exc)}") from None
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
            sys.stdout.write(jobs.redact(chunk))
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except RuntimeError:  # the log stream closed early: fall back to polling the status
        pass
    status = str(client.get_job_status(job_id).value)
    while status not in jobs.TERMINAL:
        time.sleep(1)
        status = str(client.get_job_status(job_id).value)
    _print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _first_line(exc: BaseException) -> str:
    return jobs.redact(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        return _jobs(args)
    except RuntimeError as exc:  # the Jobs API's answer to an unknown job id and other refused requests
        raise UserError(_first_line(exc)) from None


def _jobs(args: argparse.Namespace) -> int:
    with jobs.jobs_client(args.address) as client:
        if args.action == "ls":
            listed = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
            _print(f"{'submission id':<30} {'status':<10} {'started':<19}  entrypoint")
            for j in listed:
                entry = j.entrypoint if len(j.entrypoint) <= 70 else j.entrypoint[:67] + "..."
                job_id = j.submission_id or j.job_id or "-"
                _print(f"{job_id:<30} {j.status.value:<10} {_when(j.start_time):<19}  {entry}")
            return 0
        if args.job_id is None:
            raise UserError(f"`ganpipe jobs {args.action}` needs a job id (see `ganpipe jobs ls`)")
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
            sys.stdout.write(jobs.redact(client.get_job_logs(args.job_id)))
            return 0
        stopped = client.stop_job(args.job_id)
        _print(f"job {args.job_id}: {'stop requested' if stopped else 'was not running'}")
        return 0
