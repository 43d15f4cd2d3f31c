"""Typed run configuration: one frozen dataclass per component, `key=value` overrides, flattening for MLflow."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from data_prep.prefetch import MAX_DECODE_WORKERS, POOL_KINDS
from gan_models import get_family
from pipelines.spec.defaults import COMPILE_MODES, GPU_WORKER_CPUS, LAYOUTS, default_store

PRECISIONS = ("auto", "fp32", "bf16")  # loop.precision; pipelines.engine.precision applies them


def _check_at_least(config: Any, section: str, **minimums: int) -> None:
    """ValueError naming `section.key` for the first field below its minimum."""
    for key, low in minimums.items():
        value = getattr(config, key)
        if value < low:
            raise ValueError(f"{section}.{key} must be {low} or more; got {value}")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "mnist5k"  # a dataset name under `store` (datasets/NAME) or a full dataset URL
    batch_size: int = 64  # per worker; the global batch is batch_size * workers
    shuffle_buffer: int = 1000  # samples held for shuffling within a worker's shard stream
    # Processes (or threads, decode_pool) decoding, augmenting and collating beside each training worker, a few
    # batches ahead; 0: on the training thread; None: the worker's CPUs less one (at least 1). Same batches either way.
    decode_workers: int | None = None
    decode_pool: str = "process"  # "process" or "thread" (data_prep/prefetch.py; BENCHMARKS.md measures both)

    def __post_init__(self) -> None:
        _check_at_least(self, "data", batch_size=1, shuffle_buffer=0)
        if self.decode_workers is not None and not 0 <= self.decode_workers <= MAX_DECODE_WORKERS:
            raise ValueError(f"data.decode_workers must be in [0, {MAX_DECODE_WORKERS}] (0: decode on the training "
                             f"thread) or none (the worker's CPUs less one); got {self.decode_workers}")  # fmt: skip
        if self.decode_pool not in POOL_KINDS:
            raise ValueError(f"data.decode_pool must be one of {', '.join(POOL_KINDS)}; got {self.decode_pool!r}")


@dataclass(frozen=True, kw_only=True)
class LoopConfig:
    steps: int = 2000  # optimizer steps of every network (a WGAN critic's n_critic updates count as one)
    seed: int = 0  # seeds weights, latents and data order; two runs with one seed give the same numbers
    log_every: int = 50  # metrics are averaged over this many steps and reported by every rank
    checkpoint_every: int = 500  # a killed worker loses at most this many steps
    sample_every: int = 500  # sample grid logged as an MLflow image every this many steps (0: only at the end)
    eval_every: int = 0  # offline evaluator metrics eval/* every this many steps (0: only at the end)
    lr_decay_from: float = 1.0  # fraction of `steps` after which every learning rate decays linearly to 0 (1: never)
    ema_decay: float = 0.0  # exponential moving average of G's weights (0 disables); the EMA is exported
    ema_start: int = 0  # step after which the EMA starts tracking (before it, it copies G)
    threads: int = 0  # torch intra-op threads per process (0: Ray workers use scale.worker_cpus, else torch's)
    precision: str = "auto"  # "fp32"; "bf16": autocast where native (GPUs, AVX512-BF16/AMX CPUs), else fp32;
    #                          "auto": bf16 on GPUs that have it, fp32 on CPUs
    # Memory layout of weights and activations: "auto" = channels_last on GPUs, and with bf16 on CPUs unless the
    # optimizer is fused (the CPU's fused Adam would copy channels_last weights every step: pix2pix, CycleGAN,
    # StarGAN; BENCHMARKS.md, "The layout"); "channels_last" or "contiguous" override it.
    layout: str = "auto"
    # torch.compile each network in this mode ("off": eager); pays back its compile time only on long runs
    # (README, BENCHMARKS.md). Gradient penalties (double backward) run eagerly whatever it is.
    compile: str = "off"
    # loop.compile applies only to a run that trains at least this many steps in this process (a resumed run
    # counts the steps left): a cold compile costs 20-90 s per network on a CPU, which a short run or a quick
    # check never earns back (the rule and its numbers: README, "loop.compile"). 0: always.
    compile_min_steps: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"loop.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"loop.layout must be one of {', '.join(LAYOUTS)}; got {self.layout!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"loop.compile must be one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        # A negative count would train nothing and then look for a checkpoint; a zero period divides by zero.
        _check_at_least(self, "loop", steps=1, log_every=1, checkpoint_every=1, sample_every=0, eval_every=0,
                        ema_start=0, threads=0, compile_min_steps=0)
        if not 0.0 <= self.lr_decay_from <= 1.0:
            raise ValueError(f"loop.lr_decay_from is a fraction of loop.steps in [0, 1]; got {self.lr_decay_from}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"loop.ema_decay must be in [0, 1) (0 disables the EMA); got {self.ema_decay}")


@dataclass(frozen=True, kw_only=True)
class ScaleConfig:
    workers: int = 1  # Ray Train workers (each a DDP rank); 0 runs the plain loop in this process
    use_gpu: bool = False  # one GPU per worker; enables AMP, channels_last and cuDNN benchmark
    # CPUs Ray reserves for each worker, which also sizes its decode pool (data.decode_workers' default: these
    # less one). None: 1, or GPU_WORKER_CPUS with use_gpu.
    cpus_per_worker: float | None = None

    def __post_init__(self) -> None:
        _check_at_least(self, "scale", workers=0)
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ValueError(f"scale.cpus_per_worker must be above 0 or none; got {self.cpus_per_worker}")

    @property
    def worker_cpus(self) -> float:
        """The CPUs of each worker: `cpus_per_worker`, or its default for the run's device."""
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        return float(GPU_WORKER_CPUS) if self.use_gpu else 1.0


@dataclass(frozen=True, kw_only=True)
class TrackConfig:
    tracking_uri: str = ""  # empty: sqlite:///<home>/mlflow.db
    experiment: str = ""  # empty: "<family>-<dataset>"
    register_as: str = ""  # registered model name; empty: "<family>-<dataset>"
    alias: str = "candidate"  # alias given to the new model version


def check_gpu_compile(mode: str, *, on_gpu: bool, key: str = "loop.compile") -> None:
    """Refuse CUDA graphs on a GPU in one line, before anything starts: "reduce-overhead" replays each network's
    graph into the same output memory, and DCGAN's step holds D's output on real images while it runs D on fake
    ones, which torch stops mid-run (an H200 with torch 2.11, with and
    without copying every output: BENCHMARKS.md, "the reader feeding a DCGAN step on one H200")."""
    if on_gpu and mode == "reduce-overhead":
        raise ValueError(f"{key}=reduce-overhead (CUDA graphs) does not run the families' steps on a GPU: a network "
                         f"called twice in one step reads memory its second call overwrote; use {key}=default")


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Everything a training run needs; saved with every checkpoint and as the run's `config.json`."""

    family: str
    model: Any  # the family's frozen Config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    store: str = field(default_factory=default_store)  # a folder or s3://bucket/prefix; $GANPIPE_STORE by default
    run_name: str = ""  # a rerun with the same name resumes from its latest checkpoint

    # How a run is executed, not what it computes: the batches are the same whatever these are
    # (data_prep/prefetch.py), so a pipeline's cache key leaves them out.
    RESULT_NEUTRAL: ClassVar[tuple[tuple[str, str], ...]] = (("data", "decode_workers"), ("data", "decode_pool"))

    def __post_init__(self) -> None:
        check_gpu_compile(self.loop.compile, on_gpu=self.scale.use_gpu)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """`to_dict` less the fields that cannot change the result (`RESULT_NEUTRAL`)."""
        d = self.to_dict()
        for section, key in self.RESULT_NEUTRAL:
            d[section].pop(key, None)
        return d

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the form used for MLflow params and CLI overrides."""
        return flatten(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSpec:
        family = get_family(d["family"])
        # Section types come from this class's own annotations, so a new section needs no registration.
        sections = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            if name not in sections:
                raise ValueError(f"unknown config section {name!r}; valid: {', '.join(sections)}")
            if name == "model":
                kwargs[name] = _build(family.config, value)
            elif isinstance(value, dict):
                kwargs[name] = _build(sections[name], value)
            else:
                kwargs[name] = value
        return cls(**kwargs)


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce_loaded(hints[k], v) for k, v in values.items()})


def _coerce_loaded(tp: Any, value: Any) -> Any:
    # JSON turns tuples into lists; the frozen configs hold tuples so they stay hashable.
    if isinstance(value, list) and typing.get_origin(tp) is tuple:
        return tuple(value)
    return value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(spec: TrainSpec, overrides: list[str]) -> TrainSpec:
    """Apply `section.key=value` strings, parsing each value by the field's declared type.

    A typo is an error that names the valid keys, never a silently ignored setting. All overrides of one
    section are applied together, so fields that constrain each other (StarGAN's num_iters and
    num_iters_decay) can change in one go.
    """
    changes = _Changes()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. loop.steps=500)")
        path, raw = item.split("=", 1)
        _collect(spec, path.strip().split("."), raw.strip(), path.strip(), changes)
    return _replace(spec, changes)


class _Changes(dict):
    """Parsed override values of one dataclass; a nested _Changes for a section."""


def _collect(obj: Any, parts: list[str], raw: str, full: str, changes: _Changes) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    head = parts[0]
    if head not in names:
        raise ValueError(f"unknown config key {full!r}; valid keys here: {', '.join(names)}")
    current = getattr(obj, head)
    if len(parts) == 1:
        if dataclasses.is_dataclass(current):
            sub = [f.name for f in dataclasses.fields(current)]
            raise ValueError(f"{full!r} is a section; set one of its keys: {', '.join(sub)}")
        tp = typing.get_type_hints(type(obj))[head]
        changes[head] = parse_value(tp, raw, full)
        return
    if not dataclasses.is_dataclass(current):
        raise ValueError(f"{'.'.join(full.split('.')[: -len(parts) + 1])!r} has no sub-keys")
    _collect(current, parts[1:], raw, full, changes.setdefault(head, _Changes()))


def _replace(obj: Any, changes: _Changes) -> Any:
    values = {k: _replace(getattr(obj, k), v) if isinstance(v, _Changes) else v for k, v in changes.items()}
    return dataclasses.replace(obj, **values) if values else obj


def parse_value(tp: Any, raw: str, name: str) -> Any:
    """Parse a CLI string into the declared type (int, float, bool, str, Literal, Optional, tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(arg, raw, name)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"{name}={raw!r}: " + "; ".join(errors))
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(map(str, args))}")
    if origin is tuple:
        inner = args[0] if args else str
        return tuple(parse_value(inner, p.strip(), name) for p in raw.strip("()[]").split(",") if p.strip())
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}={raw!r} is not a boolean (true/false)")
    if tp in (int, float):
        try:
            value = tp(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a valid {tp.__name__}") from None
        if not math.isfinite(value):  # float() takes nan/inf; they would train (and register) a NaN model
            raise ValueError(f"{name}={raw!r}: nan and inf are not accepted; give a finite number")
        return value
    if tp is str or tp is Any:
        return raw
    raise ValueError(f"{name}: cannot parse a value of type {tp!r} from the command line")
