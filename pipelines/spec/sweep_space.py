"""Search spaces of `ganpipe sweep`: each family's default space (named after the paper's λs), the YAML format,
validation against the TrainSpec, and their translation into Ray Tune's sampling primitives.

A space maps a name to one distribution. The name is a TrainSpec key (`model.lambda_l1`) or, with `sets:`, a
named parameter tied to several keys (CycleGAN's λ_cyc sets both λ_A and λ_B):

    model.lambda_l1: {loguniform: [1, 300]}        # log-uniform in [1, 300)
    model.lambda_identity: {uniform: [0, 1]}        # uniform in [0, 1)
    data.batch_size: {choice: [16, 32, 64]}         # one of, drawn at random
    model.ngf: {randint: [16, 65]}                  # integer in [16, 65)
    model.lr: {grid: [1.0e-4, 2.0e-4, 4.0e-4]}      # every value (grid points multiply the trials)
    lambda_cycle: {loguniform: [1, 30], sets: [model.lambda_a, model.lambda_b]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.spec.config import TrainSpec, apply_overrides

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
RANGES = ("loguniform", "uniform", "randint")

# One entry per family, in the YAML format above; the keys are checked against the family's Config when a sweep
# uses them (and by tests for every registered family). Learning rates around each paper's value; λ ranges
# spanning a decade or more on both sides of the paper's default where a log scale fits.
SPACES: dict[str, dict[str, dict[str, Any]]] = {
    # Isola et al. 2017: λ_L1 = 100.
    "pix2pix": {"model.lambda_l1": {"loguniform": [1, 300]}},
    # Zhu et al. 2017: λ_cyc = 10 in both directions (tied here), λ_identity = 0.5 (relative to λ_cyc).
    "cyclegan": {
        "lambda_cycle": {"loguniform": [1, 30], "sets": ["model.lambda_a", "model.lambda_b"]},
        "model.lambda_identity": {"uniform": [0, 1]},
    },
    # Choi et al. 2018: λ_cls = 1, λ_rec = 10, λ_gp = 10.
    "stargan": {
        "model.lambda_cls": {"loguniform": [0.1, 10]},
        "model.lambda_rec": {"loguniform": [1, 100]},
        "model.lambda_gp": {"loguniform": [1, 100]},
    },
    # Reed et al. 2016: the <real image, wrong text> term weighs 0.5 (<fake, right> the rest); GAN-INT β = 0.5.
    "text2img": {
        "model.wrong_weight": {"uniform": [0, 1]},
        "model.int_beta": {"uniform": [0, 1]},
    },
    # Radford et al. 2016: Adam 2e-4 for both networks.
    "dcgan": {
        "model.lr_g": {"loguniform": [5e-5, 2e-3]},
        "model.lr_d": {"loguniform": [5e-5, 2e-3]},
    },
    # Goodfellow et al. 2014 (the repo's mnist.yaml): SGD 0.1 for G, 0.05 for D.
    "vanilla": {
        "model.lr_g": {"loguniform": [0.01, 0.5]},
        "model.lr_d": {"loguniform": [0.005, 0.25]},
    },
}


@dataclass(frozen=True)
class Param:
    """One searched parameter: its name in the Tune config, its distribution, and the TrainSpec keys it sets."""

    name: str
    kind: str  # one of KINDS
    values: tuple[Any, ...]  # [low, high] for ranges; the values for choice and grid
    targets: tuple[str, ...]

    def describe(self) -> str:
        tied = f" -> {', '.join(self.targets)}" if self.targets != (self.name,) else ""
        return f"{self.name}: {self.kind}{list(self.values)}{tied}"


def parse_space(raw: Any, *, source: str = "space") -> list[Param]:
    """The documented mapping (from YAML or `SPACES`) -> parameters; a malformed entry is a ValueError."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{source}: a search space is a non-empty mapping of KEY: {{KIND: VALUES}} "
                         f"(e.g. model.lambda_l1: {{loguniform: [1, 300]}})")
    params = []
    for name, entry in raw.items():
        where = f"{source}: {name}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected {{KIND: VALUES}} with KIND one of {', '.join(KINDS)}, got {entry!r}")
        kinds = [k for k in entry if k != "sets"]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of {', '.join(KINDS)} (plus optional `sets`), "
                             f"got {', '.join(map(str, entry)) or 'nothing'}")
        kind = kinds[0]
        values = entry[kind]
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}: {kind} takes a list, e.g. {kind}: [1, 10]")
        values = [_number(v) for v in values]
        if kind in RANGES:
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{where}: {kind} takes [low, high], got {values!r}")
            low, high = values
            if not low < high:
                raise ValueError(f"{where}: {kind} needs low < high, got {values!r}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"{where}: loguniform needs low > 0, got {low!r}")
            if kind == "randint" and not all(isinstance(v, int) for v in values):
                raise ValueError(f"{where}: randint takes integers [low, high), got {values!r}")
        sets = entry.get("sets", [name])
        if isinstance(sets, str):
            sets = [sets]
        if not isinstance(sets, (list, tuple)) or not sets or not all(isinstance(s, str) for s in sets):
            raise ValueError(f"{where}: sets takes a list of config keys, e.g. sets: [model.lambda_a, model.lambda_b]")
        params.append(Param(name=str(name), kind=kind, values=tuple(values), targets=tuple(sets)))
    return params


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as a string; a string that is a number is taken as one."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def load_space(space: str | dict[str, Any], family: str) -> list[Param]:
    """`default` (the family's entry in SPACES), a YAML file in the documented format, or that mapping itself."""
    if isinstance(space, dict):
        return parse_space(space, source="space")
    if space == "default":
        if family not in SPACES:
            raise ValueError(f"no default search space for {family!r} (defaults: {', '.join(SPACES)}); "
                             f"give --space FILE.yaml")
        return parse_space(SPACES[family], source=f"default space of {family}")
    import yaml

    path = Path(space)
    if not path.is_file():
        raise ValueError(f"--space {space!r}: not 'default' and no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    return parse_space(raw, source=str(path))


def probe_values(param: Param) -> list[Any]:
    """The values a parameter can take at its extremes (ranges are half-open [low, high), as Tune samples them)."""
    if param.kind == "randint":
        return [param.values[0], param.values[1] - 1]
    if param.kind in RANGES:
        low, high = (float(v) for v in param.values)
        return [low, math.nextafter(high, low)]
    return list(param.values)


def validate_space(params: list[Param], spec: TrainSpec) -> None:
    """Every target must be a TrainSpec key that accepts every value the parameter can take (the family's Config
    checks run), so a typo or an impossible range fails before Ray starts, naming the valid keys."""
    seen: dict[str, str] = {}
    for param in params:
        for target in param.targets:
            if target in seen:
                raise ValueError(f"search space: {target} is set by both {seen[target]} and {param.name}")
            seen[target] = param.name
            for value in probe_values(param):
                try:
                    apply_overrides(spec, [f"{target}={value}"])
                except ValueError as exc:
                    raise ValueError(f"search space {param.name} ({spec.family}): {exc}") from None


def apply_params(spec: TrainSpec, config: dict[str, Any], params: list[Param]) -> TrainSpec:
    """The TrainSpec of one trial: every parameter's drawn value set on each of its targets."""
    return apply_overrides(spec, [f"{t}={config[p.name]}" for p in params for t in p.targets])


def grid_values(param: Param, points: int) -> list[Any]:
    """`--search grid`: a range as `points` evenly spaced values (log-spaced for loguniform, both ends included);
    choices and grids as they are."""
    if param.kind not in RANGES:
        return list(param.values)
    low, high = param.values
    if param.kind == "randint":
        return sorted({round(low + (high - 1 - low) * i / max(points - 1, 1)) for i in range(points)})
    if points == 1:
        return [math.sqrt(low * high) if param.kind == "loguniform" else (low + high) / 2]
    if param.kind == "loguniform":
        return [float(f"{math.exp(math.log(low) + (math.log(high) - math.log(low)) * i / (points - 1)):.6g}")
                for i in range(points)]
    return [float(f"{low + (high - low) * i / (points - 1):.6g}") for i in range(points)]


def tune_domain(param: Param) -> Any:
    from ray import tune

    low, high = param.values[:2] if param.kind in RANGES else (None, None)
    if param.kind == "loguniform":
        return tune.loguniform(low, high)
    if param.kind == "uniform":
        return tune.uniform(low, high)
    if param.kind == "randint":
        return tune.randint(low, high)
    if param.kind == "choice":
        return tune.choice(list(param.values))
    return tune.grid_search(list(param.values))


def tune_param_space(params: list[Param], *, search: str, num_samples: int) -> tuple[dict[str, Any], int]:
    """(Tune param_space, Tune num_samples) for a search mode.

    random: ranges and choices drawn `num_samples` times; grid entries enumerated for each draw (Tune's rule).
    grid:   every range becomes `num_samples` grid points; the trials are the product of all grids, run once.
    optuna: Optuna's TPE proposes `num_samples` points; grid entries are not allowed.
    """
    if search == "grid":
        return {p.name: tune_domain(Param(p.name, "grid", tuple(grid_values(p, num_samples)), p.targets))
                for p in params}, 1
    if search == "optuna":
        grids = [p.name for p in params if p.kind == "grid"]
        if grids:
            raise ValueError(f"--search optuna draws every value itself; use choice instead of grid for "
                             f"{', '.join(grids)}")
    return {p.name: tune_domain(p) for p in params}, num_samples


def count_trials(params: list[Param], *, search: str, num_samples: int) -> int:
    if search == "grid":
        return math.prod(len(grid_values(p, num_samples)) for p in params)
    grid = math.prod(len(p.values) for p in params if p.kind == "grid")
    return num_samples * grid


def pbt_mutations(params: list[Param]) -> dict[str, Any]:
    """PBT's hyperparam_mutations: each parameter's own distribution (resampled, or scaled by 0.8/1.2)."""
    grids = [p.name for p in params if p.kind == "grid"]
    if grids:
        raise ValueError(f"--scheduler pbt perturbs values from distributions; use choice instead of grid for "
                         f"{', '.join(grids)}")
    return {p.name: tune_domain(p) for p in params}


def format_space(params: list[Param]) -> str:
    return "\n".join(f"  {p.describe()}" for p in params)


__all__ = ["KINDS", "SPACES", "Param", "apply_params", "count_trials", "format_space", "grid_values", "load_space",
           "parse_space", "pbt_mutations", "probe_values", "tune_param_space", "validate_space"]
