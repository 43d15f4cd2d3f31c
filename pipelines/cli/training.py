"""`ganpipe train`, `config` and `sweep`: parsed options in, printed results out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def cmd_config(args: argparse.Namespace) -> int:
    from pipelines.spec.from_options import train_spec

    spec = train_spec(vars(args))
    width = max(len(k) for k in spec.flat())
    for key, value in spec.flat().items():
        print(f"{key:<{width}}  {value!r}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.spec.from_options import train_spec
    from pipelines.training.train import train

    outcome = train(train_spec(vars(args)), progress=not args.no_progress)
    print(f"\nrun {outcome.run_name}: {outcome.steps} steps, MLflow run {outcome.run_id}")
    for key, value in sorted(outcome.metrics.items()):
        print(f"  {key:<22} {value:.4f}")
    print(f"registered {outcome.model_uri} (alias {outcome.spec.track.alias})")
    print(f"use it:    {usage_hint(outcome.spec.family, f'models:/{outcome.model_name}@{outcome.spec.track.alias}')}")
    return 0


def usage_hint(family: str, model: str) -> str:
    """The command that puts a freshly registered generator of `family` to use."""
    from gan_models import get_family

    kind = get_family(family).dataset_kind
    if kind == "captioned":
        return f'ganpipe generate --model {model} --prompt "a caption" --out generated.png'
    if kind == "attributes":
        return f"ganpipe translate --model {model} --input IMAGES --out OUT --set NAME=1"
    if kind in ("paired", "unpaired"):
        return f"ganpipe translate --model {model} --input IMAGES --out OUT"
    return f"ganpipe sample --model {model}"


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.spec.config import apply_overrides
    from pipelines.spec.from_options import recipe_spec
    from pipelines.training.sweep import SweepConfig, run_sweep

    spec = recipe_spec(recipe=args.recipe, family=args.family, dataset=args.dataset)
    flags = {"loop.steps": args.steps, "track.tracking_uri": args.tracking_uri, "track.register_as": args.register_as,
             "store": args.store}
    spec = apply_overrides(spec, [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides))
    name = args.name or f"{spec.family}-{Path(spec.data.dataset).name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = SweepConfig(name=name, metric=args.metric, mode=args.mode, num_samples=args.num_samples, space=args.space,
                      scheduler=args.scheduler, search=args.search, max_concurrent=args.max_concurrent,
                      workers_per_trial=args.workers_per_trial, gpus_per_worker=args.gpus_per_worker,
                      report_every=args.report_every)
    out = run_sweep(spec, cfg, progress=not args.no_progress)
    print(f"\nsweep {out.name}: {len(out.records)} trials (MLflow parent run {out.parent_run_id})")
    print(f"  {'TRIAL':<14} {'STATUS':<9} {'STEP':>6} {cfg.metric:>12}  CONFIG")
    for r in out.records:
        mark = " *" if out.best is not None and r.trial_id == out.best.trial_id else ""
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.config.items())
        print(f"  {r.trial_id:<14} {r.status:<9} {r.step:>6} {r.value:>12.5g}  {shown}{mark}")
    if out.best is None:
        print("no trial finished with a finite metric: nothing registered")
        return 1
    print(f"best      {out.best.trial_id}: {cfg.metric}={out.best.value:.5g} (run {out.best.run_id})")
    print(f"registered {out.model_uri} (alias {spec.track.alias}); artifacts on the parent run: "
          f"{', '.join(out.artifacts)}")
    return 0
