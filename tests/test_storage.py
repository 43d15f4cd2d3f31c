"""The storage layer: local and S3 stores behave alike; failures are one clear line without secrets."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pyarrow.fs
import pytest

from data_prep.storage import KeyNotFound, LocalStore, Store, StoreError, open_store


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on return, so nothing listens there


def _exercise(store: Store, tmp_path: Path) -> None:
    """The same checks for every store kind."""
    store.put_bytes("a/b.txt", b"hello")
    store.put_bytes("a/b.txt", b"hello again")  # overwrite
    store.put_bytes("a/c/d.bin", b"\x00\x01")
    store.put_bytes("top.json", b"{}")
    assert store.get_bytes("a/b.txt") == b"hello again"
    with store.open_read("a/c/d.bin") as f:
        assert f.read(1) == b"\x00" and f.read() == b"\x01"
    assert store.exists("a/b.txt") and not store.exists("a/missing")
    assert store.list() == ["a/b.txt", "a/c/d.bin", "top.json"]
    assert store.list("a/") == ["a/b.txt", "a/c/d.bin"]
    assert store.list("a/c") == ["a/c/d.bin"]
    assert store.list("nothing/") == []
    child = store.child("a")
    assert child.url == store.url + "/a"
    assert child.list() == ["b.txt", "c/d.bin"] and child.get_bytes("c/d.bin") == b"\x00\x01"
    assert child.child("c").get_bytes("d.bin") == b"\x00\x01"
    with pytest.raises(KeyNotFound, match="missing"):
        store.get_bytes("a/missing")
    with pytest.raises(ValueError, match="invalid store key"):
        store.put_bytes("../escape", b"x")
    src = tmp_path / "upload.bin"
    src.write_bytes(os.urandom(1000))
    store.put_file("up/load.bin", src)
    assert store.get_bytes("up/load.bin") == src.read_bytes()
    store.delete("a/b.txt")
    store.delete("a/b.txt")  # deleting a missing key is fine
    assert not store.exists("a/b.txt") and store.list("a/") == ["a/c/d.bin"]


def test_open_store_urls(tmp_path: Path) -> None:
    plain, uri = open_store(str(tmp_path / "s1")), open_store(f"file://{tmp_path}/s2")
    assert isinstance(plain, LocalStore) and plain.url == (tmp_path / "s1").as_uri()
    assert isinstance(uri, LocalStore) and uri.url == (tmp_path / "s2").as_uri()
    s3 = open_store("s3://my-bucket/some/prefix/", s3_endpoint="http://127.0.0.1:1")
    assert s3.url == "s3://my-bucket/some/prefix" and s3.child("x/").url == "s3://my-bucket/some/prefix/x"
    with pytest.raises(StoreError, match="unsupported store URL gs://"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError, match="invalid S3 bucket name"):
        open_store("s3://B/x", s3_endpoint="http://127.0.0.1:1")


def test_local_store(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()  # created on demand
    _exercise(store, tmp_path)
    fs, root = store.pyarrow_fs()
    assert isinstance(fs, pyarrow.fs.LocalFileSystem) and root == str(tmp_path / "store")
    fs.create_dir(f"{root}/pa")
    with fs.open_output_stream(f"{root}/pa/x.bin") as out:
        out.write(b"arrow")
    assert store.get_bytes("pa/x.bin") == b"arrow"


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    store.put_bytes("k", b"old")
    with pytest.raises(TypeError):
        store.put_bytes("k", None)  # type: ignore[arg-type]  # fails mid-write
    assert store.get_bytes("k") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temp file left behind


def test_unreachable_endpoint_fails_fast_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sEcReT-never-print-me-0123456789"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTESTNOTREAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = open_store("s3://bucket-unreachable/p", s3_endpoint=endpoint)
    for call in (lambda: store.put_bytes("k", b"x"), lambda: store.get_bytes("k"), lambda: store.exists("k")):
        start = time.monotonic()
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert time.monotonic() - start < 10
        assert "\n" not in message and endpoint in message and "Connection refused" in message
        assert "GANPIPE_S3_ENDPOINT" in message
        assert secret not in message and "AKIDTESTNOTREAL" not in message


@pytest.mark.integration
def test_s3_store(s3_server, bucket_url: str, tmp_path: Path) -> None:
    store = open_store(bucket_url)  # endpoint from GANPIPE_S3_ENDPOINT, credentials from AWS_* (fixture)
    assert store.list() == []  # bucket not created yet: reads see nothing
    _exercise(store, tmp_path)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # above the 8 MiB multipart threshold
    store.put_file("big/one.bin", big)
    with store.open_read("big/one.bin") as f:
        assert f.read() == big.read_bytes()

    fs, root = store.pyarrow_fs()
    assert isinstance(fs, pyarrow.fs.S3FileSystem) and root == bucket_url[len("s3://") :]
    payload = os.urandom(6 * 1024 * 1024)
    with fs.open_output_stream(f"{root}/arrow/x.bin") as out:
        out.write(payload)
    assert store.get_bytes("arrow/x.bin") == payload
    with fs.open_input_file(f"{root}/big/one.bin") as f:
        assert f.read() == big.read_bytes()


@pytest.mark.integration
def test_s3_wrong_secret_is_denied_without_leaking(s3_server, bucket_url: str, monkeypatch) -> None:
    wrong = "wrong-secret-value-123456"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(StoreError) as info:
        open_store(bucket_url).put_bytes("k", b"x")
    message = str(info.value)
    assert "\n" not in message and s3_server.endpoint in message and "AWS_SECRET_ACCESS_KEY" in message
    assert wrong not in message and s3_server.secret_key not in message
