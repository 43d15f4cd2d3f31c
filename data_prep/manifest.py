"""The dataset contract: `manifest.json` (written last), `index.parquet` and `quarantine.parquet`.

Layout under a store: datasets/{name}/ holding manifest.json, index.parquet, quarantine.parquet and
shards/{split}-{i:06d}.tar; an `unpaired` dataset has one shard set per domain instead:
domain_a/shards/{split}-{i:06d}.tar and domain_b/shards/... (docs/ARCHITECTURE.md, data contracts).
Datasets written before quarantine.parquet have quarantine.json instead; `read_quarantine` reads either.
While prep runs, `_progress/` holds one record per finished shard (stages.py); it is removed at the end.
`Manifest.digest` is the sha256 of the canonical JSON, the dataset's identity for lineage and caching.
Schema versions: 1 named a sample's image member `image.png`; 2 names it `png` (WebDataset's convention,
members.py) and lists every member in `fields`. Both are read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.storage import Store
from data_prep.validate import QuarantineEntry

SCHEMA_VERSION = 2  # 2: conventional member names (members.py) and `fields`
MANIFEST = "manifest.json"
INDEX = "index.parquet"
QUARANTINE = "quarantine.parquet"
QUARANTINE_JSON = "quarantine.json"  # the format before quarantine.parquet, still read
SHARDS = "shards"


KINDS = ("images", "paired", "unpaired", "attributes", "captioned")
DOMAINS = ("domain_a", "domain_b")


class ManifestError(ValueError):
    """A manifest.json that cannot be read: not JSON, missing or unknown fields, or a field of the wrong type."""


def _check_fields(cls: type, data: dict[str, Any], *, source: str, what: str) -> None:
    """Unknown or missing keys, and values of the wrong JSON type, as one ManifestError naming them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ManifestError(f"{source}: unknown {what} field(s) {', '.join(unknown)}")
    required = [n for n, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ManifestError(f"{source}: {what} is missing {', '.join(missing)}; prep the dataset again "
                            "with --overwrite")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if not _json_matches(hints[name], value):
            raise ManifestError(f"{source}: {what} field {name} has the wrong type ({type(value).__name__})")


def _json_matches(tp: Any, value: Any) -> bool:
    """Whether a JSON value fits a field's annotation at the outer level (int, str, list, dict, X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_json_matches(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is Any:
        return True
    return isinstance(value, origin or tp)


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """One WebDataset tar: path relative to the dataset root, split, size, sample count, sha256, and the
    domain ("domain_a" | "domain_b") for `unpaired` datasets (None otherwise, and then left out of the JSON)."""

    path: str
    split: str
    bytes: int
    samples: int
    sha256: str
    domain: str | None = None


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a dataset is (docs/ARCHITECTURE.md, data contracts). `extra` holds kind-specific metadata (attribute names,
    text-encoder name and dimension) for the kinds that need it; `fields` maps each shard member name of a
    sample to what it holds and how it decodes (schema 2; empty, and left out of the JSON, in schema 1)."""

    name: str
    kind: str
    version: int
    image_size: int
    channels: int
    counts: dict[str, int]
    shards: list[ShardInfo]
    class_names: list[str] | None
    prep: dict[str, Any]
    source_fingerprint: str
    quarantine: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for shard in data["shards"]:  # single-domain manifests keep the original shard fields (and digests)
            if shard["domain"] is None:
                del shard["domain"]
        if not data["fields"]:  # a schema 1 manifest keeps its JSON, and so its digest
            del data["fields"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = MANIFEST) -> Manifest:
        """Parse and check a manifest; ManifestError (a ValueError) names `source` and what is wrong."""
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exn:
            raise ManifestError(f"{source}: not valid JSON ({exn}); prep the dataset again with --overwrite") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: a manifest is a JSON object, got {type(data).__name__}")
        _check_fields(cls, data, source=source, what="manifest")
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ManifestError(f"{source}: schema version {data['schema_version']} is newer than this ganpipe "
                                f"reads ({SCHEMA_VERSION}): upgrade ganpipe")
        shards = data["shards"]
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            raise ManifestError(f"{source}: `shards` must be a list of objects")
        for i, shard in enumerate(shards):
            _check_fields(ShardInfo, shard, source=source, what=f"shards[{i}]")
        return cls(**{**data, "shards": [ShardInfo(**s) for s in shards]})

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON bytes (sorted keys, no whitespace)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def split_shards(self, split: str, *, domain: str | None = None) -> list[ShardInfo]:
        """The shards of one split (of one domain, for `unpaired`), in manifest order."""
        return [s for s in self.shards if s.split == split and s.domain == domain]

    def split_count(self, split: str, *, domain: str | None = None) -> int:
        """Samples in one split (of one domain): the sum over its shards."""
        return sum(s.samples for s in self.split_shards(split, domain=domain))


@dataclass(frozen=True, kw_only=True)
class IndexRow:
    """One row of index.parquet; `extra` carries kind-specific columns (attrs, caption, ...)."""

    key: str
    shard: str
    split: str
    label: int | None
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


_INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("split", pa.string()),
        ("label", pa.int64()),
        ("sha256", pa.string()),
    ]
)


def index_bytes(rows: Sequence[IndexRow]) -> bytes:
    """index.parquet contents: one row per sample."""
    records = [
        {"key": r.key, "shard": r.shard, "split": r.split, "label": r.label, "sha256": r.sha256, **r.extra}
        for r in rows
    ]
    extra_names = sorted({name for r in rows for name in r.extra})
    schema = _INDEX_SCHEMA
    if extra_names:  # kind-specific columns: let pyarrow infer their types
        inferred = pa.Table.from_pylist(records).schema
        schema = pa.schema([*_INDEX_SCHEMA, *(inferred.field(n) for n in extra_names)])
    table = pa.Table.from_pylist(records, schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


_QUARANTINE_SCHEMA = pa.schema(
    [("key", pa.string()), ("origin", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)


def quarantine_bytes(entries: Sequence[QuarantineEntry]) -> bytes:
    """quarantine.parquet contents: every left-out sample with its reason, sorted by origin."""
    listing = [dataclasses.asdict(e) for e in sorted(entries, key=lambda e: (e.origin, e.key))]
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(listing, schema=_QUARANTINE_SCHEMA), out)
    return out.getvalue()


def read_quarantine(store: Store) -> list[QuarantineEntry]:
    """The quarantine list of the dataset rooted at `store`: quarantine.parquet, else an older dataset's
    quarantine.json, else empty."""
    if store.exists(QUARANTINE):
        rows = pq.read_table(io.BytesIO(store.get_bytes(QUARANTINE))).to_pylist()
        return [QuarantineEntry(**row) for row in rows]
    if store.exists(QUARANTINE_JSON):
        return [QuarantineEntry(**e) for e in json.loads(store.get_bytes(QUARANTINE_JSON))]
    return []
