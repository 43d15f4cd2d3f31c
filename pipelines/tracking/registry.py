"""The model registry as ganpipe uses it: finding a version's evaluations, `ganpipe models ls` and
`ganpipe promote` (move `champion` only to a version that beats it on the same evaluation set, and record why).
Model references resolve in pipelines/tracking/loading.py."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

CHAMPION = "champion"
CANDIDATE = "candidate"
EVAL_MODEL_TAG = "ganpipe.eval.model"  # on an eval run: NAME/VERSION (or runs:/ID) of the model it evaluated
EVAL_SET_TAG = "ganpipe.eval.set"  # hash of (manifest digest, split, real count, n, seed)
EVAL_INCEPTION_TAG = "ganpipe.eval.inception_sha256"
EVAL_EVALUATOR_TAG = "ganpipe.eval.evaluator_sha256"
PROMOTION_TAG = "ganpipe.promotion"
PARTNER_TAG = "ganpipe.partner"  # on a model version: NAME/VERSION of the other direction (CycleGAN)
INCEPTION_METRICS = ("eval/fid", "eval/kid", "eval/kid_std")
KEY_METRICS = ("eval/fid", "eval/kid", "eval/fd", "eval/kd", "eval/cls_score", "eval/confident_share")


@dataclass(frozen=True)
class ModelRef:
    uri: str  # loadable: models:/NAME/VERSION or runs:/RUN_ID/generator
    run_id: str  # the run that logged the generator
    name: str = ""  # registered name and version, when the model is registered
    version: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}" if self.name else f"runs:/{self.run_id}"


def eval_runs(mlf: Any, ref: ModelRef) -> list[Any]:
    """The evaluation runs of a model, newest first (they live in the experiment of its training run)."""
    experiment_id = mlf.get_run(ref.run_id).info.experiment_id
    return mlf.search_runs([experiment_id], filter_string=f"tags.`{EVAL_MODEL_TAG}` = '{ref.label}'",
                           order_by=["attributes.start_time DESC"], max_results=200)


def comparable_key(run: Any, metric: str) -> tuple[str, str]:
    """Two runs' values of `metric` compare only if they share the evaluation set and the feature network."""
    tags = run.data.tags
    network = tags.get(EVAL_INCEPTION_TAG, "") if metric in INCEPTION_METRICS else tags.get(EVAL_EVALUATOR_TAG, "")
    return tags.get(EVAL_SET_TAG, ""), network


def describe_eval(run: Any) -> str:
    p = run.data.params
    return (f"{p.get('dataset_name', '?')}@{p.get('manifest_sha256', '?')[:12]} {p.get('split', '?')} split, "
            f"n={p.get('n', '?')}, seed={p.get('seed', '?')}, inception={p.get('inception_sha256', '')[:12] or 'none'}")


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    candidate: str
    previous: str = ""


def promote(
    *, mlf: Any, name: str, metric: str, mode: str, version: str | None = None, force: bool = False,
) -> Decision:
    """Move `champion` to the candidate when it beats the champion on `metric` over the same evaluation set.

    The candidate is `version`, else the version aliased `candidate`, else the newest. The reason is
    stored on the candidate as the `ganpipe.promotion` tag, whatever the outcome.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"--mode must be min or max, not {mode!r}")
    cand = _version(mlf, name, version)
    ref = ModelRef(uri=f"models:/{name}/{cand.version}", run_id=cand.run_id, name=name, version=str(cand.version))
    cand_runs = [r for r in eval_runs(mlf, ref) if metric in r.data.metrics]
    champ = alias_version(mlf, name, CHAMPION)
    if champ is not None and str(champ.version) == str(cand.version):
        return Decision(False, f"v{cand.version} already is {CHAMPION}", str(cand.version), str(champ.version))

    def decide(promoted: bool, reason: str) -> Decision:
        forced = force and not promoted
        if forced:
            reason = f"forced (--force): {reason}"
        if promoted or forced:
            mlf.set_registered_model_alias(name, CHAMPION, cand.version)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        verdict = "promoted" if promoted or forced else "not promoted"
        mlf.set_model_version_tag(name, cand.version, PROMOTION_TAG, f"{stamp}: {verdict}: {reason}"[:5000])
        return Decision(promoted or forced, reason, str(cand.version), str(champ.version) if champ else "")

    if not cand_runs:
        return decide(False, f"v{cand.version} has no evaluation with {metric}; run "
                             f"`ganpipe eval --model models:/{name}/{cand.version}` first")
    if champ is None:
        value = cand_runs[0].data.metrics[metric]
        return decide(True, f"no {CHAMPION} yet; v{cand.version} {metric}={value:.6g} ({describe_eval(cand_runs[0])})")
    champ_ref = ModelRef(uri="", run_id=champ.run_id, name=name, version=str(champ.version))
    champ_runs = [r for r in eval_runs(mlf, champ_ref) if metric in r.data.metrics]
    pair = next(((c, h) for c in cand_runs for h in champ_runs
                 if comparable_key(c, metric) == comparable_key(h, metric)), None)
    if pair is None:
        latest = cand_runs[0]
        champ_desc = describe_eval(champ_runs[0]) if champ_runs else f"never evaluated with {metric}"
        return decide(False, (
            f"no common evaluation set for {metric}: v{cand.version} was evaluated on {describe_eval(latest)}; "
            f"{CHAMPION} v{champ.version}: {champ_desc}. Evaluate the {CHAMPION} the same way: "
            f"{_eval_command(name, str(champ.version), latest)}"))
    c_val, h_val = pair[0].data.metrics[metric], pair[1].data.metrics[metric]
    better = c_val < h_val if mode == "min" else c_val > h_val
    sign = ("<" if c_val < h_val else ">=") if mode == "min" else (">" if c_val > h_val else "<=")
    comparison = (f"v{cand.version} {metric} {c_val:.6g} {sign} v{champ.version} {h_val:.6g} ({mode}) "
                  f"on {describe_eval(pair[0])}")
    return decide(better, comparison if better else f"does not beat the {CHAMPION}: {comparison}")


def _eval_command(name: str, version: str, run: Any) -> str:
    p = run.data.params
    parts = [f"ganpipe eval --model models:/{name}/{version}", f"--n {p.get('n', '')}", f"--seed {p.get('seed', 0)}",
             f"--dataset {p.get('dataset_url', '')}", f"--split {p.get('split', '')}",
             f"--n-real {p.get('n_real', '')}"]
    if p.get("inception_sha256"):
        parts.append("--inception-weights PATH")
    return " ".join(parts)


@contextlib.contextmanager
def missing_is_user_error() -> Iterator[None]:
    """An unknown model, version, alias or run is the user's typo: one line (ValueError), not a traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ValueError(exc.message.splitlines()[0]) from None
        raise


def alias_version(mlf: Any, name: str, alias: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return mlf.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _version(mlf: Any, name: str, version: str | None) -> Any:
    if version:
        return mlf.get_model_version(name, version)
    found = alias_version(mlf, name, CANDIDATE)
    if found is not None:
        return found
    versions = mlf.search_model_versions(f"name='{name}'")
    if not versions:
        raise ValueError(f"registered model {name!r} has no versions")
    return max(versions, key=lambda v: int(v.version))


def list_models(*, mlf: Any, name: str | None = None, out: Callable[[str], Any] = print) -> int:
    """`ganpipe models ls`: every registered model, or every version of one with aliases and key metrics."""
    if not name:
        models = mlf.search_registered_models(max_results=1000)
        if not models:
            out("no registered models")
            return 0
        out(f"{'MODEL':<28} {'VERSIONS':>8}  {'ALIASES':<32} UPDATED")
        for m in sorted(models, key=lambda m: m.name):
            n_versions = len(mlf.search_model_versions(f"name='{m.name}'"))
            aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(m.aliases.items())) or "-"
            out(f"{m.name:<28} {n_versions:>8}  {aliases:<32} {_time(m.last_updated_timestamp)}")
        return 0
    model = mlf.get_registered_model(name)
    aliases_of: dict[str, list[str]] = {}
    for alias, v in model.aliases.items():
        aliases_of.setdefault(str(v), []).append(alias)
    out(f"{'VERSION':>7}  {'ALIASES':<20} {'CREATED':<17} {'DATASET':<13} {'RUN':<9} METRICS")
    for mv in sorted(mlf.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
        ref = ModelRef(uri="", run_id=mv.run_id, name=name, version=str(mv.version))
        runs = eval_runs(mlf, ref)
        if runs:
            metrics, source = runs[0].data.metrics, f"eval n={runs[0].data.params.get('n', '?')}"
        else:
            metrics, source = mlf.get_run(mv.run_id).data.metrics, "training"
        shown = " ".join(f"{k.removeprefix('eval/')}={metrics[k]:.4g}" for k in KEY_METRICS if k in metrics)
        digest = mv.tags.get("ganpipe.manifest_sha256", "")[:12] or "-"
        out(f"{mv.version:>7}  {','.join(sorted(aliases_of.get(str(mv.version), []))) or '-':<20} "
            f"{_time(mv.creation_timestamp):<17} {digest:<13} {mv.run_id[:8]:<9} "
            f"{shown or '-'}{f' ({source})' if shown else ''}")
    return 0


def _time(ms: int | None) -> str:
    return dt.datetime.fromtimestamp((ms or 0) / 1000).strftime("%Y-%m-%d %H:%M") if ms else "-"




