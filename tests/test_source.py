"""Folder and S3 (moto) model sources, and the disk cache that materializes their artifacts."""

from __future__ import annotations

import contextlib
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xgboost as xgb
from conftest import free_port

from serve.diskcache import MARKER, DiskCache
from serve.source import (
    FolderSource,
    ModelNotFound,
    S3Source,
    SourceError,
    SourceUnavailable,
    Version,
    open_source,
)

BAD_NAMES = [
    "../x.tar.gz",
    "a/../../x.tar.gz",
    "/etc/passwd",
    "/abs/x.tar.gz",
    "a//b.tar.gz",
    "a/./b.tar.gz",
    "x.zip",
    "x.tar",
    ".tar.gz",
    "",
    "a\\b.tar.gz",
    "x\0.tar.gz",
    "x\n.tar.gz",
    "a" * 1100 + ".tar.gz",
]


def pack(files: dict[str, bytes], dest: Path) -> Path:
    """A SageMaker-style artifact holding `files` at its top level."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = dest.parent / (dest.name + ".src")
    src.mkdir()
    with tarfile.open(dest, "w:gz") as tar:
        for name, data in files.items():
            (src / name).write_bytes(data)
            tar.add(src / name, arcname=name)
    return dest


class CountingSource:
    """Wraps a real source and counts downloads, so tests can see how often the cache fetched."""

    def __init__(self, inner: FolderSource | S3Source) -> None:
        self.inner = inner
        self.fetched: list[str] = []
        self._lock = threading.Lock()

    def describe(self) -> str:
        return self.inner.describe()

    def list(self) -> Iterator[tuple[str, int]]:
        return self.inner.list()

    def version(self, name: str) -> Version:
        return self.inner.version(name)

    def fetch(self, name: str, dest: Path) -> Version:
        with self._lock:
            self.fetched.append(name)
        return self.inner.fetch(name, dest)

    def put(self, name: str, artifact: Path, *, overwrite: bool) -> None:
        self.inner.put(name, artifact, overwrite=overwrite)


class Relay:
    """A loopback TCP relay to moto that can be cut and restored: a store going down and coming back."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        self.up = False
        with self.lock:
            for conn in self.conns:  # pooled keep-alive connections die with the store, too
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def close(self) -> None:
        self.down()
        self.server.close()


@pytest.fixture
def relay(moto_endpoint: str) -> Iterator[Relay]:
    r = Relay(moto_endpoint)
    yield r
    r.close()


def put(s3, bucket: str, key: str, files: dict[str, bytes], tmp_path: Path) -> None:
    artifact = pack(files, tmp_path / "upload" / os.urandom(4).hex() / "a.tar.gz")
    s3.upload_file(str(artifact), bucket, key)


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_before_any_io(tmp_path: Path, name: str) -> None:
    # The S3 store is a closed port: reaching it would raise SourceUnavailable, not ModelNotFound.
    s3_source = open_source("s3://bucket/models/", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    folder = FolderSource(tmp_path / "models")
    cache = DiskCache(tmp_path / "cache", 1 << 20, folder)
    for call in (
        s3_source.version,
        lambda n: s3_source.fetch(n, tmp_path / "dl"),
        folder.version,
        lambda n: folder.fetch(n, tmp_path / "dl"),
        cache.materialize,
        cache.refresh_version,
    ):
        with pytest.raises(ModelNotFound) as caught:
            call(name)
        assert caught.value.status == 400
        assert "model name" in str(caught.value)
    assert not (tmp_path / "dl").exists()


# --- folder source -----------------------------------------------------------------------------------


def test_folder_lists_nested_artifacts_sorted_with_sizes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    a = pack({"xgboost-model": b"a"}, root / "a.tar.gz")
    chicago = pack({"xgboost-model": b"chicago" * 50}, root / "v2" / "Chicago_IL.tar.gz")
    (root / "notes.txt").write_text("not a model")
    (root / "v2" / "half.tar.gz.1234.part").write_bytes(b"an upload in progress")

    listed = list(FolderSource(root).list())

    assert listed == [("a.tar.gz", a.stat().st_size), ("v2/Chicago_IL.tar.gz", chicago.stat().st_size)]


def test_folder_version_changes_when_artifact_is_overwritten(tmp_path: Path) -> None:
    root = tmp_path / "models"
    path = pack({"xgboost-model": b"one"}, root / "m.tar.gz")
    source = FolderSource(root)
    first = source.version("m.tar.gz")
    assert source.version("m.tar.gz") == first

    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))  # same size, new mtime
    second = source.version("m.tar.gz")
    path.write_bytes(path.read_bytes() + b"\0" * 512)  # new size
    third = source.version("m.tar.gz")

    assert len({first, second, third}) == 3
    assert third.size == path.stat().st_size


def test_folder_fetch_copies_bytes_and_returns_their_version(tmp_path: Path) -> None:
    path = pack({"xgboost-model": b"weights"}, tmp_path / "models" / "v2" / "m.tar.gz")
    source = FolderSource(tmp_path / "models")

    version = source.fetch("v2/m.tar.gz", tmp_path / "dl.tar.gz")

    assert (tmp_path / "dl.tar.gz").read_bytes() == path.read_bytes()
    assert version == source.version("v2/m.tar.gz")
    assert sorted(os.listdir(tmp_path)) == ["dl.tar.gz", "models"]  # no temp file left beside it


def test_folder_missing_model_names_it(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "dir.tar.gz").mkdir()
    source = FolderSource(tmp_path / "models")
    for name in ("nope.tar.gz", "dir.tar.gz"):
        with pytest.raises(ModelNotFound, match=f"model '{name}'"):
            source.version(name)
        with pytest.raises(ModelNotFound, match=f"model '{name}'"):
            source.fetch(name, tmp_path / "dl")


def test_folder_refuses_symlinks_leading_outside(tmp_path: Path) -> None:
    outside = pack({"xgboost-model": b"secret"}, tmp_path / "outside" / "secret.tar.gz")
    root = tmp_path / "models"
    pack({"xgboost-model": b"ok"}, root / "ok.tar.gz")
    (root / "link.tar.gz").symlink_to(outside)
    (root / "ext").symlink_to(outside.parent)
    (root / "alias.tar.gz").symlink_to(root / "ok.tar.gz")  # inside the folder: fine
    source = FolderSource(root)

    for name in ("link.tar.gz", "ext/secret.tar.gz"):
        with pytest.raises(ModelNotFound, match="resolves outside"):
            source.fetch(name, tmp_path / "dl")
    assert [name for name, _ in source.list()] == ["alias.tar.gz", "ok.tar.gz"]
    assert source.version("alias.tar.gz") == source.version("ok.tar.gz")


# --- S3 source ---------------------------------------------------------------------------------------


def test_s3_lists_nested_artifacts_under_prefix_only(
    s3, bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    put(s3, bucket, "models/a.tar.gz", {"xgboost-model": b"a"}, tmp_path)
    put(s3, bucket, "models/v2/Chicago_IL.tar.gz", {"xgboost-model": b"c" * 300}, tmp_path)
    put(s3, bucket, "other/b.tar.gz", {"xgboost-model": b"b"}, tmp_path)
    s3.put_object(Bucket=bucket, Key="models/readme.md", Body=b"hi")
    sizes = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}

    source = open_source(f"s3://{bucket}/models", s3_endpoint_url=moto_endpoint)

    assert source.describe() == f"s3://{bucket}/models/"
    assert list(source.list()) == [
        ("a.tar.gz", sizes["models/a.tar.gz"]),
        ("v2/Chicago_IL.tar.gz", sizes["models/v2/Chicago_IL.tar.gz"]),
    ]


def test_s3_version_follows_etag_and_fetch_downloads(
    s3, bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    source = open_source(f"s3://{bucket}/m/", s3_endpoint_url=moto_endpoint)
    put(s3, bucket, "m/v2/x.tar.gz", {"xgboost-model": b"one"}, tmp_path)
    first = source.version("v2/x.tar.gz")

    put(s3, bucket, "m/v2/x.tar.gz", {"xgboost-model": b"two, longer"}, tmp_path)
    second = source.version("v2/x.tar.gz")
    fetched = source.fetch("v2/x.tar.gz", tmp_path / "dl.tar.gz")

    assert first != second
    assert second.tag == s3.head_object(Bucket=bucket, Key="m/v2/x.tar.gz")["ETag"].strip('"')
    assert fetched == second
    body = s3.get_object(Bucket=bucket, Key="m/v2/x.tar.gz")["Body"].read()
    assert (tmp_path / "dl.tar.gz").read_bytes() == body
    with pytest.raises(ModelNotFound, match="model 'gone.tar.gz' not found"):
        source.version("gone.tar.gz")
    with pytest.raises(ModelNotFound, match="model 'gone.tar.gz' not found"):
        source.fetch("gone.tar.gz", tmp_path / "dl2")
    assert not (tmp_path / "dl2").exists()


@pytest.mark.timeout(30)
def test_s3_store_down_is_unavailable(tmp_path: Path) -> None:
    source = open_source("s3://bucket/models/", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    for call in (
        lambda: source.version("m.tar.gz"),
        lambda: source.fetch("m.tar.gz", tmp_path / "dl"),
        lambda: list(source.list()),
    ):
        with pytest.raises(SourceUnavailable, match="unreachable") as caught:
            call()
        assert caught.value.status == 503
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(60)
def test_s3_recovers_and_disk_cache_serves_its_copy_while_down(
    s3, bucket: str, relay: Relay, tmp_path: Path
) -> None:
    put(s3, bucket, "p/cached.tar.gz", {"xgboost-model": b"cached"}, tmp_path)
    put(s3, bucket, "p/other.tar.gz", {"xgboost-model": b"other"}, tmp_path)
    source = open_source(f"s3://{bucket}/p/", s3_endpoint_url=relay.url)
    cache = DiskCache(tmp_path / "cache", 1 << 20, source)
    folder, version = cache.materialize("cached.tar.gz")

    relay.down()
    with pytest.raises(SourceUnavailable):
        source.version("cached.tar.gz")
    with pytest.raises(SourceUnavailable):
        cache.materialize("other.tar.gz")
    assert cache.materialize("cached.tar.gz") == (folder, version)

    relay.up = True
    assert source.version("cached.tar.gz") == version
    other, _ = cache.materialize("other.tar.gz")
    assert (other / "xgboost-model").read_bytes() == b"other"


# --- disk cache --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*Unknown file format")  # SageMaker's file name has no extension
def test_materialize_unpacks_a_real_model_and_reuses_it(tmp_path: Path, make_model_dir) -> None:
    model = make_model_dir(seed=3)
    pack({"xgboost-model": (model / "xgboost-model").read_bytes()}, tmp_path / "models" / "v2" / "m.tar.gz")
    source = CountingSource(FolderSource(tmp_path / "models"))
    cache = DiskCache(tmp_path / "cache", 1 << 30, source)

    folder, version = cache.materialize("v2/m.tar.gz")
    again = cache.materialize("v2/m.tar.gz")

    booster = xgb.Booster(model_file=str(folder / "xgboost-model"))
    assert booster.num_boosted_rounds() == 5
    assert again == (folder, version)
    assert source.fetched == ["v2/m.tar.gz"]
    assert cache.used_bytes() == (model / "xgboost-model").stat().st_size
    assert cache.refresh_version("v2/m.tar.gz") == version
    assert sorted(os.listdir(tmp_path / "cache")) == sorted([MARKER, folder.name])  # download removed


def test_materialize_refetches_after_version_change_and_drops_old_copy(tmp_path: Path) -> None:
    path = pack({"xgboost-model": b"old"}, tmp_path / "models" / "m.tar.gz")
    source = CountingSource(FolderSource(tmp_path / "models"))
    cache = DiskCache(tmp_path / "cache", 1 << 20, source)
    old_folder, old_version = cache.materialize("m.tar.gz")

    path.unlink()
    pack({"xgboost-model": b"new and longer"}, tmp_path / "models2" / "m.tar.gz").rename(path)
    assert cache.refresh_version("m.tar.gz") != old_version
    new_folder, new_version = cache.materialize("m.tar.gz")

    assert new_version == source.version("m.tar.gz") != old_version
    assert (new_folder / "xgboost-model").read_bytes() == b"new and longer"
    assert not old_folder.exists()
    assert source.fetched == ["m.tar.gz", "m.tar.gz"]
    assert cache.used_bytes() == len(b"new and longer")


def test_model_removed_from_store_is_dropped_from_disk(tmp_path: Path) -> None:
    path = pack({"xgboost-model": b"x"}, tmp_path / "models" / "m.tar.gz")
    cache = DiskCache(tmp_path / "cache", 1 << 20, FolderSource(tmp_path / "models"))
    folder, _ = cache.materialize("m.tar.gz")

    path.unlink()
    with pytest.raises(ModelNotFound, match="model 'm.tar.gz' not found"):
        cache.materialize("m.tar.gz")

    assert not folder.exists()
    assert cache.used_bytes() == 0


def test_budget_is_respected_evicting_least_recently_used(tmp_path: Path) -> None:
    for i in range(12):
        pack({"xgboost-model": os.urandom(1000)}, tmp_path / "models" / f"m{i:02}.tar.gz")
    source = CountingSource(FolderSource(tmp_path / "models"))
    root = tmp_path / "cache"
    cache = DiskCache(root, 4500, source)  # room for three unpacked models plus one download

    for i in range(12):
        cache.materialize(f"m{i:02}.tar.gz")
        on_disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        assert on_disk <= cache.used_bytes() <= cache.budget
    assert cache.used_bytes() == 3000

    cache.materialize("m09.tar.gz")  # m09 becomes the most recent, so m10 is now the least recent
    cache.materialize("m00.tar.gz")  # evicts m10
    source.fetched.clear()
    for name in ("m09.tar.gz", "m11.tar.gz", "m00.tar.gz", "m10.tar.gz"):
        cache.materialize(name)
    assert source.fetched == ["m10.tar.gz"]

    cache.evict("m10.tar.gz")
    assert cache.used_bytes() == 2000
    assert len(os.listdir(root)) == 3  # marker and two folders


def test_artifact_larger_than_budget_names_the_sizes(tmp_path: Path) -> None:
    pack({"xgboost-model": os.urandom(3000)}, tmp_path / "models" / "big.tar.gz")
    root = tmp_path / "cache"
    cache = DiskCache(root, 2000, FolderSource(tmp_path / "models"))

    with pytest.raises(SourceError, match=r"artifact 'big.tar.gz': needs \d+ bytes on disk.* budget of 2000"):
        cache.materialize("big.tar.gz")

    assert os.listdir(root) == [MARKER]
    assert cache.used_bytes() == 0


def test_concurrent_materialize_of_one_name_downloads_once(tmp_path: Path) -> None:
    pack({"xgboost-model": os.urandom(50_000)}, tmp_path / "models" / "m.tar.gz")
    for i in range(8):
        pack({"xgboost-model": f"model {i}".encode()}, tmp_path / "models" / "many" / f"{i}.tar.gz")
    source = CountingSource(FolderSource(tmp_path / "models"))
    cache = DiskCache(tmp_path / "cache", 1 << 20, source)
    start = threading.Barrier(8)

    def same(_: int) -> tuple[Path, Version]:
        start.wait()
        return cache.materialize("m.tar.gz")

    def different(i: int) -> bytes:
        start.wait()
        folder, _ = cache.materialize(f"many/{i}.tar.gz")
        return (folder / "xgboost-model").read_bytes()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(same, range(8)))
        contents = list(pool.map(different, range(8)))

    assert len(set(results)) == 1
    assert source.fetched.count("m.tar.gz") == 1
    assert contents == [f"model {i}".encode() for i in range(8)]
    assert sorted(source.fetched) == sorted(["m.tar.gz"] + [f"many/{i}.tar.gz" for i in range(8)])


def test_startup_wipes_leftovers_but_refuses_a_foreign_folder(tmp_path: Path) -> None:
    source = FolderSource(tmp_path / "models")
    root = tmp_path / "cache"
    DiskCache(root, 1000, source)
    (root / "leftover").mkdir()
    (root / ".download-x.tar.gz").write_bytes(b"half")

    DiskCache(root, 1000, source)
    assert os.listdir(root) == [MARKER]

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(SourceError, match="not empty"):
        DiskCache(foreign, 1000, source)
    assert os.listdir(foreign) == ["precious.txt"]


def test_a_name_no_file_can_have_is_not_found_rather_than_the_store_failing(tmp_path: Path) -> None:
    source = FolderSource(tmp_path)
    (tmp_path / "file.tar.gz").write_bytes(b"x")
    for name in ("a" * 300 + ".tar.gz", "file.tar.gz/inner.tar.gz"):
        with pytest.raises(ModelNotFound, match="cannot exist here"):
            source.version(name)
        with pytest.raises(ModelNotFound, match="cannot exist here"):
            source.fetch(name, tmp_path / "dest")
