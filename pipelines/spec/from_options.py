"""A command's option values -> the typed config it runs: the same for the command line (its parsed
arguments) and a pipeline stage (its config mapping), so both accept and mean exactly the same."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from data_prep.options import AttributeOptions, CaptionOptions, PairedOptions, SourceOptions
from data_prep.prep import PrepConfig
from gan_models import get_family
from pipelines.spec.config import TrainSpec, apply_overrides
from pipelines.spec.defaults import default_store
from pipelines.spec.errors import UserError
from pipelines.spec.recipes import RECIPES, get_recipe


def recipe_spec(*, recipe: str | None, family: str | None, dataset: str | None) -> TrainSpec:
    """The named recipe (default: the family's paper recipe) on `dataset`; a family that contradicts the recipe
    is an error."""
    if recipe is None and family is None:
        raise UserError(f"give --recipe or --family (recipes: {', '.join(RECIPES)})")
    name = recipe or family
    if family:
        get_family(family)
    spec = get_recipe(name)(**({"dataset": dataset} if dataset else {}))
    if family and family != spec.family:
        raise UserError(f"recipe {name!r} trains {spec.family}, not {family}")
    return spec


def train_spec(values: Mapping[str, Any]) -> TrainSpec:
    """The TrainSpec of `ganpipe train`'s (or `config`'s) option values: a recipe, then flags, then overrides."""
    v = SimpleNamespace(**values)
    spec = recipe_spec(recipe=v.recipe, family=v.family, dataset=v.dataset)
    flags = {
        "scale.workers": v.workers, "loop.steps": v.steps, "scale.use_gpu": True if v.gpus else None,
        "track.tracking_uri": v.tracking_uri, "track.register_as": v.register_as,
        "track.alias": v.alias, "store": v.store,
    }
    spec = apply_overrides(spec, [f"{k}={val}" for k, val in flags.items() if val is not None] + list(v.overrides))
    if getattr(v, "run_name", None):
        spec = dataclasses.replace(spec, run_name=v.run_name)
    return spec


def prep_config(values: Mapping[str, Any]) -> PrepConfig:
    """The PrepConfig of `ganpipe prep`'s option values (also what a pipeline's prep stage runs)."""
    args = SimpleNamespace(**values)
    if len(args.sources) > 2 or (len(args.sources) == 2 and args.kind != "unpaired"):
        raise UserError(f"give one SOURCE (two only with --format unpaired), got {' '.join(args.sources)}")
    holdout = int(args.holdout) if args.holdout >= 1 else args.holdout
    attrs = tuple(a.strip() for a in args.attrs.split(",") if a.strip()) if args.attrs else None
    cfg = PrepConfig(
        source=args.sources[0], kind=args.kind, name=args.name, store=args.store or default_store(),
        image_size=args.image_size, channels=args.channels, holdout=holdout, shard_size=args.shard_size,
        image_format=args.image_format, seed=args.seed, s3_endpoint=args.s3_endpoint, min_size=args.min_size,
        max_aspect=args.max_aspect, max_bad_frac=args.max_bad_frac, workers=args.workers, overwrite=args.overwrite,
        inputs=SourceOptions(
            source_b=args.sources[1] if len(args.sources) == 2 else None, images=args.images,
            file_column=args.file_column, image_column=args.image_column, caption_column=args.caption_column,
            crops=args.crops, limit=args.limit, image_field=getattr(args, "image_field", None),
            label_field=getattr(args, "label_field", None), caption_field=getattr(args, "caption_field", None),
        ),
        paired=PairedOptions(derive=args.derive, direction=args.direction, superres_factor=args.superres_factor,
                             canny_sigma=args.canny_sigma),
        attributes=AttributeOptions(attrs=attrs, center_crop=args.center_crop),
        captioned=CaptionOptions(text_encoder=args.text_encoder, embed_batch=args.embed_batch,
                                 captions_per_image=args.captions_per_image),
    )
    return cfg
