"""Existing WebDataset shards as a prep source: local tars or s3:// objects, one name or a brace pattern
(`shards-{000000..000127}.tar`), for the `images` kind (optional label) and `captioned` (plus paired --derive).

A sample is the members sharing a key (`KEY.jpg`, `KEY.cls`, `KEY.txt`), as WebDataset groups them; which
members are read is the field options (`SourceOptions.image_field`, `label_field`, `caption_field`): the image
is the named member, or the first of jpg, jpeg, png, webp a sample has; the label an ASCII integer member
(`cls` when the shards have one; "none": unlabelled); captions a `txt` member (one caption per line) or a JSON
member (a string, a list of strings, or an object with "captions" or "caption"). A sample without its image,
label or caption member is "missing_field", a label that is no integer in [0, MAX_LABEL) "bad_label", a
caption member that is neither "bad_caption"; a shard that is no tar at all is one "bad_shard" entry.

The shards are untrusted: nothing is extracted to disk by member name and nothing is unpickled. Each shard is
parsed once with tarfile for its members' offsets (and the label members' few bytes); a sample's members are
then read as bytes at those offsets, and the image is validated by prep like any other file. An s3:// shard
(read through the project's S3 store) is first copied to a local temp folder, so samples can be read in any
order; a Ray prep task copies the shards it needs itself.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from data_prep.options import SourceOptions
from data_prep.sources import BadSample, RawSample, Source, SourceEntry, SourceError, get_source, sanitise
from data_prep.storage import Store, open_store

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")  # the auto image field, in this order
LABEL_FIELD = "cls"
CAPTION_FIELD = "txt"
NO_LABEL = "none"
MAX_LABEL = 1_000_000  # a label is an index into class_names: a larger one is a typo, not a class
MAX_SHARDS = 1_000_000
_MAX_LABEL_BYTES = 64
_MAX_MEMBER_BYTES = 256 << 20  # one image or caption member; more is no training image
_NAME = re.compile(r"^((?:.*/|)[^./][^.]*)[.]([^/]*)$")  # WebDataset's base_plus_ext, hidden names excluded


def is_webdataset_spec(spec: str) -> bool:
    """Whether a source spec names WebDataset shards: a `.tar` path, brace pattern or s3:// URL."""
    return spec.lower().endswith(".tar")


def expand(spec: str) -> list[str]:
    """The shard URLs of a spec, brace patterns expanded (`{000..003}`, `{a,b}`), in order, each once."""
    import braceexpand  # webdataset's own dependency

    try:
        urls = list(dict.fromkeys(braceexpand.braceexpand(spec)))
    except braceexpand.UnbalancedBracesError as exn:
        raise SourceError(f"{spec}: {exn}: write a brace pattern as shards-{{000000..000127}}.tar") from None
    if len(urls) > MAX_SHARDS:
        raise SourceError(f"{spec} expands to {len(urls):,} shards, more than {MAX_SHARDS:,}: check the pattern")
    return urls


@dataclass(kw_only=True)
class _Sample:
    """One sample of a shard as listed: its members' (offset, size), label, and what is wrong with it."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    label: int | None = None
    problem: tuple[str, str] | None = None


@dataclass(kw_only=True)
class _Shard:
    """A listed shard: its URL, its samples, its sha256 (s3:// only, to check a re-copy), and a parse error."""

    url: str
    samples: list[_Sample]
    sha256: str | None = None
    error: str | None = None


class WebDatasetSource(Source):
    """WebDataset shards (module docstring); `captions` reads the caption field too (the `captioned` kind)."""

    default_channels = 3

    def __init__(self, spec: str, *, inputs: SourceOptions | None = None, captions: bool = False,
                 s3_endpoint: str | None = None) -> None:  # fmt: skip
        inputs = inputs or SourceOptions()
        pattern = spec if spec.startswith("s3://") else _local_pattern(spec)
        self.urls, self.captions, self.s3_endpoint = expand(pattern), captions, s3_endpoint
        self.image_field, self.caption_field = inputs.image_field, inputs.caption_field or CAPTION_FIELD
        self.label_option = inputs.label_field
        fields = f"image={self.image_field or 'auto'}&label={self.label_option or 'auto'}"
        self.spec = f"{pattern}?{fields}" + (f"&caption={self.caption_field}" if captions else "")
        self.name = _dataset_name(pattern)
        self._missing()
        self._init_spool()

    # -- the shards, local or copied from S3

    def _init_spool(self) -> None:
        self._spool: Path | None = None

    def __getstate__(self) -> dict[str, Any]:  # a Ray task copies what it reads into its own temp folder
        return {k: v for k, v in self.__dict__.items() if k not in ("_spool", "_cleanup")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_spool()

    def _store(self, url: str) -> tuple[Store, str]:
        bucket, _, key = url[len("s3://") :].partition("/")
        if bucket not in self._stores:
            self._stores[bucket] = open_store(f"s3://{bucket}", s3_endpoint=self.s3_endpoint)
        return self._stores[bucket], key

    @cached_property
    def _stores(self) -> dict[str, Store]:
        return {}

    def _missing(self) -> None:
        """A SourceError naming the first shard that does not exist (a wrong path or brace range)."""
        missing = []
        for url in self.urls:
            if url.startswith("s3://"):
                store, key = self._store(url)
                try:
                    found = store.exists(key)
                except ValueError:  # not a valid key ('//', '..')
                    found = False
            else:
                found = Path(url).is_file()
            if not found:
                missing.append(url)
        if missing:
            more = f" and {len(missing) - 1} more of {len(self.urls)}" if len(missing) > 1 else ""
            raise SourceError(f"WebDataset shard {missing[0]}{more} does not exist: check the path or brace pattern")

    def _local(self, index: int, *, sha256: str | None = None) -> Path:
        """The local file of shard `index`: the file itself, or its copy in this process's temp folder."""
        url = self.urls[index]
        if not url.startswith("s3://"):
            return Path(url)
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix="ganpipe-wds-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._spool, True)
        path = self._spool / f"{index:06d}.tar"
        if not path.exists():
            store, key = self._store(url)
            digest = hashlib.sha256()
            with store.open_read(key) as stream, open(path.with_suffix(".part"), "wb") as out:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise OSError(f"{url} changed since prep listed it: run prep again")
            path.with_suffix(".part").replace(path)
            self._digests[index] = digest.hexdigest()
        return path

    @cached_property
    def _digests(self) -> dict[int, str]:
        return {}

    # -- listing

    @cached_property
    def _shards(self) -> list[_Shard]:
        shards = []
        for i, url in enumerate(self.urls):
            samples, error = _parse(self._local(i), label_field=self._label_member)
            shards.append(_Shard(url=url, samples=samples, sha256=self._digests.get(i), error=error))
        return shards

    @property
    def _label_member(self) -> str | None:
        """The label member the listing reads: the option, else `cls` (kept only if some sample has one)."""
        return None if self.label_option == NO_LABEL else self.label_option or LABEL_FIELD

    @cached_property
    def _labelled(self) -> bool:
        """Explicit --label-field: labelled; auto: when any sample of any shard has a `cls` member."""
        if self.label_option is not None:
            return self.label_option != NO_LABEL
        return any(LABEL_FIELD in s.members for shard in self._shards for s in shard.samples)

    @cached_property
    def _index(self) -> tuple[list[SourceEntry], dict[str, tuple[int, _Sample]]]:
        entries: list[SourceEntry] = []
        by_key: dict[str, tuple[int, _Sample]] = {}
        for i, shard in enumerate(self._shards):
            rows = shard.samples
            if shard.error is not None and not rows:  # no tar at all: one quarantine entry for the shard
                rows = [_Sample(key="bad_shard", problem=("bad_shard", f"not a readable tar: {shard.error}"))]
            for sample in rows:
                key = _unique("/".join(sanitise(p) for p in sample.key.split("/")), by_key)
                by_key[key] = (i, sample)
                label = sample.label if self._labelled and sample.problem is None else None
                entries.append(SourceEntry(key=key, label=label, origin=f"{shard.url}#{sample.key}"))
        return entries, by_key

    @cached_property
    def class_names(self) -> list[str] | None:  # type: ignore[override]
        labels = [e.label for e in self._index[0] if e.label is not None]
        return [str(i) for i in range(max(labels) + 1)] if self._labelled and labels else None

    def entries(self) -> list[SourceEntry]:
        return list(self._index[0])

    def notices(self) -> list[str]:
        lines = [f"{len(self.urls)} WebDataset shard(s), {len(self._index[0])} samples"]
        lines += [f"warning: {s.url} is damaged ({s.error}): {len(s.samples)} sample(s) before the damage were read"
                  for s in self._shards if s.error is not None and s.samples]  # fmt: skip
        return lines

    def fingerprint(self) -> str:
        """Local shards: path, size and mtime; s3:// shards: their content's sha256 (read when listing)."""
        digest = hashlib.sha256(self.spec.encode())
        for i, url in enumerate(self.urls):
            if url.startswith("s3://"):
                digest.update(f"{url}\t{self._shards[i].sha256}\n".encode())
            else:
                st = Path(url).stat()
                digest.update(f"{url}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    # -- reading one sample

    def read(self, entry: SourceEntry) -> RawSample:
        index, sample = self._index[1][entry.key]
        if sample.problem is not None:
            raise BadSample(*sample.problem)
        if self._labelled and sample.label is None:
            raise BadSample("missing_field", f"no {self._label_member} member ({_has(sample)})")
        image = self._image_field(sample)
        names = [image, *([self.caption_field] if self.captions else [])]
        missing = [n for n in names if n not in sample.members]
        if missing:
            raise BadSample("missing_field", f"no {missing[0]} member ({_has(sample)})")
        data = _read_members(self._local(index, sha256=self._shards[index].sha256), sample, names)
        captions = _captions(data[self.caption_field], self.caption_field) if self.captions else None
        return RawSample(key=entry.key, data=data[image], label=entry.label, origin=entry.origin,
                         captions=captions)  # fmt: skip

    def _image_field(self, sample: _Sample) -> str:
        if self.image_field is not None:
            return self.image_field
        found = next((f for f in IMAGE_FIELDS if f in sample.members), None)
        if found is None:
            raise BadSample("missing_field", f"no {'/'.join(IMAGE_FIELDS)} member ({_has(sample)})")
        return found


def open_images_source(spec: str, *, inputs: SourceOptions, seed: int, s3_endpoint: str | None,
                       captions: bool = False) -> Source:  # fmt: skip
    """The images source a spec names: WebDataset shards, else `sources.get_source` (built-ins, folders)."""
    check_field_options(spec, inputs=inputs, captions=captions)
    if is_webdataset_spec(spec):
        return WebDatasetSource(spec, inputs=inputs, captions=captions, s3_endpoint=s3_endpoint)
    return get_source(spec, crops=inputs.crops, seed=seed)


def check_field_options(spec: str, *, inputs: SourceOptions, captions: bool) -> None:
    """ValueError for a field option that does not apply: any of them to a source that is no WebDataset,
    --caption-field to a kind without captions."""
    if not captions and inputs.caption_field is not None:
        raise ValueError("--caption-field applies to --format captioned only")
    given = [f"--{n}-field" for n in ("image", "label", "caption") if getattr(inputs, f"{n}_field") is not None]
    if given and not is_webdataset_spec(spec):
        raise ValueError(f"{given[0]} applies to WebDataset shards (a .tar path, brace pattern or s3://...tar), "
                         f"not to {spec}")  # fmt: skip


def _local_pattern(spec: str) -> str:
    path = spec[len("file://") :] if spec.startswith("file://") else spec
    return str(Path(path).expanduser().absolute())


def _dataset_name(pattern: str) -> str:
    """`.../laion-{000..127}.tar` -> "laion": the file name without braces and `.tar`, else its folder's."""
    parts = pattern.rstrip("/").split("/")
    stem = re.sub(r"\{[^}]*\}", "", parts[-1])[: -len(".tar")].strip("-_.")
    if not stem and len(parts) > 1:
        stem = re.sub(r"\{[^}]*\}", "", parts[-2])
    return sanitise(stem).lower() if stem else "webdataset"


def _unique(key: str, seen: dict[str, Any]) -> str:
    out, n = key, 1
    while out in seen:
        n += 1
        out = f"{key}-{n}"
    return out


def _has(sample: _Sample) -> str:
    return "has: " + (", ".join(sorted(sample.members)) or "nothing")


def _parse(path: Path, *, label_field: str | None) -> tuple[list[_Sample], str | None]:
    """The samples of one tar (members grouped by key, in first-seen order) and the error that stopped the
    parse (None when it reached the end). Only the label members' bytes are read here."""
    samples: dict[str, _Sample] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                tar.members = []  # keep no list of every header
                name = member.name.removeprefix("./").lstrip("/")
                match = _NAME.match(name)
                if not member.isreg() or member.issparse() or match is None or "/__" in f"/{name}":
                    continue  # folders, links, hidden files (._x.jpg), WebDataset metadata (__index__)
                key, ext = match.groups()
                sample = samples.setdefault(key, _Sample(key=key))
                if ext in sample.members:
                    sample.problem = ("bad_sample", f"two {ext} members")
                sample.members[ext] = (member.offset_data, member.size)
                if ext == label_field:
                    sample.label = _label(tar, member, sample)
    except (tarfile.TarError, OSError, EOFError) as exn:
        return list(samples.values()), f"{type(exn).__name__}: {exn}"
    return list(samples.values()), None


def _label(tar: tarfile.TarFile, member: tarfile.TarInfo, sample: _Sample) -> int | None:
    text = tar.extractfile(member).read(_MAX_LABEL_BYTES + 1)  # type: ignore[union-attr]  # bytes, not a file
    try:
        label = int(text.decode("ascii").strip())
        if len(text) > _MAX_LABEL_BYTES or not 0 <= label < MAX_LABEL:
            raise ValueError
    except ValueError:
        sample.problem = sample.problem or ("bad_label", f"{member.name}: {text[:20]!r} is no integer in "
                                                         f"[0, {MAX_LABEL:,})")  # fmt: skip
        return None
    return label


def _read_members(path: Path, sample: _Sample, names: list[str]) -> dict[str, bytes]:
    out = {}
    with open(path, "rb") as f:
        for name in names:
            offset, size = sample.members[name]
            if size > _MAX_MEMBER_BYTES:
                raise BadSample("too_large", f"{sample.key}.{name} is {size:,} bytes")
            f.seek(offset)
            out[name] = f.read(size)
            if len(out[name]) != size:
                raise OSError(f"{path.name} ends inside {sample.key}.{name}")
    return out


def _captions(data: bytes, name: str) -> tuple[str, ...]:
    """A txt member's lines, or a JSON member's string / list of strings / "captions" or "caption" value."""
    try:
        text = data.decode("utf-8")
        if not name.endswith("json"):
            return tuple(line.strip() for line in text.splitlines())
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise BadSample("bad_caption", f"{name} member: {exn}") from None
    if isinstance(value, dict):
        value = value.get("captions", value.get("caption"))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise BadSample("bad_caption", f"{name} member is no caption string, list or {{\"caption\": ...}}")
    return tuple(value)
