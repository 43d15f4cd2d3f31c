"""One description of every `ganpipe` command's options: the command line parses with it, pipeline stages
validate their config keys against it and `ganpipe submit` checks the command it ships with it.

Each command group's options live in a module of their own (data, training, models, pipelines, ops); this
module assembles them into the `ganpipe` parser and exposes each command's options as typed `Option`s.
Nothing here imports torch, Ray or MLflow: `ganpipe --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Any

from pipelines.spec.argtypes import OneLineParser
from pipelines.spec.options import data, models, ops, pipelines, training

EPILOG = """\
typical session:
  ganpipe prep mnist5k                        # built-in MNIST subset -> .ganpipe/store/datasets/mnist5k
  ganpipe train --recipe dcgan loop.steps=2000  # Ray Train, 2 CPU workers, tracked in MLflow
  ganpipe sample --model models:/dcgan-mnist5k@candidate --out samples.png
  ganpipe eval --model models:/dcgan-mnist5k@candidate  # eval/* (+ FID/KID with --inception-weights)
  ganpipe promote dcgan-mnist5k --metric eval/fd --mode min  # champion only if it beats the champion
  ganpipe sweep --family dcgan --dataset mnist5k --metric eval/fd --mode min  # Ray Tune over the λs / lrs
  ganpipe ui                                  # browse runs and models at http://127.0.0.1:5000

where things live (defaults): datasets and checkpoints in .ganpipe/store (or s3://bucket/prefix with
--store / $GANPIPE_STORE), MLflow runs and registry in .ganpipe/mlflow.db (or $MLFLOW_TRACKING_URI /
--tracking-uri). `ganpipe services up` sets both for commands run in its folder.
"""

HELP_ORDER = ("prep", "train", "config", "sample", "ui", "demo", "bench", "datasets", "bench-data", "eval",
              "generate", "run", "runs", "lineage", "translate", "models", "promote", "services", "submit", "jobs",
              "sweep")


def build_parser() -> argparse.ArgumentParser:
    """The `ganpipe` parser: every command and its options (no handlers: the command line binds those)."""
    parser = OneLineParser(  # every sub-command parser inherits its class: one-line errors throughout
        prog="ganpipe", description="Image datasets to trained, tracked, registered GAN generators.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (data, training, models, ops, pipelines):
        group.add_parsers(sub)
    # `ganpipe --help` lists the commands in the order a session uses them, not by group.
    sub._choices_actions.sort(key=lambda action: HELP_ORDER.index(action.dest))
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Command name -> its sub-parser."""
    for action in parser._actions:  # argparse has no public accessor for its sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@dataclass(frozen=True)
class Option:
    """One option of a command, as a pipeline stage or a submitted job needs to know it."""

    dest: str  # the key in the parsed values (and a stage's config key, '-' or '_' alike)
    flags: tuple[str, ...]  # e.g. ("--image-size",); empty for a positional
    type: Any  # int, float, str... or None for a string / flag
    nargs: Any  # None, "?", "*", "+", 0 (a flag) or a count
    choices: tuple[Any, ...] | None
    default: Any
    required: bool


@functools.cache
def command_options(command: str) -> dict[str, Option]:
    """A command's options by dest and by each --long-option spelled with '_' (e.g. image_size)."""
    parser = subcommands(build_parser())[command]
    out: dict[str, Option] = {}
    for action in parser._actions:  # the one place that reads argparse's action list
        if action.dest == "help":
            continue
        option = Option(dest=action.dest, flags=tuple(action.option_strings), type=action.type, nargs=action.nargs,
                        choices=tuple(action.choices) if action.choices is not None else None,
                        default=action.default, required=action.required)
        out[action.dest] = option
        for flag in action.option_strings:
            if flag.startswith("--"):
                out[flag[2:].replace("-", "_")] = option
    return out
