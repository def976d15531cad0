"""Hostile artifacts are refused by name, and leave nothing in the disk cache or outside it."""

from __future__ import annotations

import gzip
import io
import os
import signal
import tarfile
from pathlib import Path

import pytest

from handler.forest import ModelLimits
from serve import compiler as compiler_module
from serve.compiler import Compiler
from serve.diskcache import MARKER, DiskCache
from serve.source import BadArtifact, FolderSource, SourceUnavailable
from serve.unpack import open_archive, unpack

MODEL = b"model bytes " * 100


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.linkname = link
    return info, io.BytesIO(data) if data else None


def tar_bytes(*members: tuple, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w") as tar:
        for info, data in members:
            tar.addfile(info, data)
    return buf.getvalue()


def good() -> tuple:
    return member("xgboost-model", data=MODEL)


def truncated() -> bytes:
    whole = tar_bytes(member("xgboost-model", data=os.urandom(3000)))
    return whole[: len(whole) // 2]


HOSTILE = {
    "tar-slip": (
        tar_bytes(good(), member("../evil", data=b"x")),
        "tar member '../evil' escapes the artifact",
    ),
    "nested-slip": (tar_bytes(member("a/../../evil", data=b"x")), "tar member 'a/../../evil' escapes"),
    "absolute": (tar_bytes(good(), member("/tmp/evil", data=b"x")), "tar member '/tmp/evil' has an absolute"),
    "symlink": (
        tar_bytes(member("link", tarfile.SYMTYPE, link="/etc/passwd"), good()),
        "tar member 'link' is a symlink",
    ),
    "hardlink": (
        tar_bytes(good(), member("hl", tarfile.LNKTYPE, link="xgboost-model")),
        "tar member 'hl' is a hardlink",
    ),
    "char-device": (tar_bytes(good(), member("tty", tarfile.CHRTYPE)), "tar member 'tty' is a device"),
    "block-device": (tar_bytes(good(), member("sda", tarfile.BLKTYPE)), "tar member 'sda' is a device"),
    "fifo": (tar_bytes(good(), member("pipe", tarfile.FIFOTYPE)), "tar member 'pipe' is a fifo"),
    "too-many-members": (
        tar_bytes(*(member(f"f{i}", data=b"x") for i in range(6))),
        "archive has more than 5 members",
    ),
    "too-large": (tar_bytes(member("big", data=b"x" * 5000)), "archive unpacks to more than 4096 bytes"),
    "not-gzip": (b"this is not a tarball at all", "not a gzip tar archive"),
    "plain-tar": (tar_bytes(good(), compress=False), "not a gzip tar archive"),
    "gzip-not-tar": (gzip.compress(b"just some text, no tar headers " * 30), "not a gzip tar archive"),
    "truncated": (truncated(), "truncated or corrupt archive"),
    "empty": (tar_bytes(), "archive is empty"),
    "only-folders": (tar_bytes(member("sub", tarfile.DIRTYPE)), "archive is empty"),
}


@pytest.fixture(scope="module")
def compiler():
    """One compiler process, as a server's disk cache unpacks in."""
    compiler = Compiler(allow_pickle=False, limits=ModelLimits(), deadline=60, max_processes=1, warm=1)
    yield compiler
    compiler.close()


@pytest.fixture(params=["here", "compiler"])
def unpacker(request):
    """Both ways a disk cache unpacks: in this process, or in a compiler process (the server's)."""
    return unpack if request.param == "here" else request.getfixturevalue("compiler").unpack


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_artifact_is_refused_and_leaves_nothing(tmp_path: Path, case: str, unpacker) -> None:
    payload, problem = HOSTILE[case]
    models = tmp_path / "models"
    models.mkdir()
    (models / "bad.tar.gz").write_bytes(payload)
    root = tmp_path / "cache"
    cache = DiskCache(
        root, 1 << 20, FolderSource(models), max_unpacked_bytes=4096, max_members=5, unpacker=unpacker
    )

    with pytest.raises(BadArtifact) as caught:
        cache.materialize("bad.tar.gz")

    assert problem in str(caught.value)
    assert "artifact 'bad.tar.gz'" in str(caught.value)
    assert caught.value.status == 424
    assert os.listdir(root) == [MARKER]
    assert cache.used_bytes() == 0
    assert sorted(os.listdir(tmp_path)) == ["cache", "models"]  # nothing escaped next to the cache either


def test_good_archive_unpacks_with_folders_and_dot_prefix(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(
        tar_bytes(
            member(".", tarfile.DIRTYPE),
            member("./xgboost-model", data=MODEL),
            member("./code", tarfile.DIRTYPE),
            member("./code/inference.py", data=b"print()"),
        )
    )
    dest = tmp_path / "out"

    with open_archive(archive, max_bytes=1 << 20, max_members=10) as checked:
        assert checked.unpacked_bytes == len(MODEL) + len(b"print()")
        checked.extract_to(dest)

    assert (dest / "xgboost-model").read_bytes() == MODEL
    assert (dest / "code" / "inference.py").read_bytes() == b"print()"
    assert sorted(os.listdir(tmp_path)) == ["ok.tar.gz", "out"]


def test_failed_extraction_removes_its_temp_folder(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(tar_bytes(good()))
    dest = tmp_path / "out"
    (dest / "occupied").mkdir(parents=True)

    with open_archive(archive, max_bytes=1 << 20, max_members=10) as checked, pytest.raises(OSError):
        checked.extract_to(dest)  # renaming onto a non-empty folder fails after the temp folder was filled

    assert sorted(os.listdir(tmp_path)) == ["ok.tar.gz", "out"]
    assert os.listdir(dest) == ["occupied"]


def test_a_model_inside_one_folder_is_refused_naming_the_folder(tmp_path: Path) -> None:
    archive = tmp_path / "nested.tar.gz"
    archive.write_bytes(
        tar_bytes(member("model", tarfile.DIRTYPE), member("model/xgboost-model", data=MODEL))
    )
    with pytest.raises(BadArtifact) as caught, open_archive(archive, max_bytes=1 << 20, max_members=10):
        pass
    assert str(caught.value).startswith(
        "archive holds only folder 'model/': SageMaker needs the model files at the archive root"
    )
    # Files at the root, or only code/ (a model_fn may build its model), are layouts SageMaker serves.
    for members in ([member("xgboost-model", data=MODEL), member("sub/notes.txt", data=b"x")],
                    [member("code/inference.py", data=b"print()")]):  # fmt: skip
        archive.write_bytes(tar_bytes(*members))
        with open_archive(archive, max_bytes=1 << 20, max_members=10):
            pass


def test_unpacking_stops_at_its_deadline_and_leaves_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "zeros.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("xgboost-model")
        info.size = 600 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    dest = tmp_path / "out"
    # 600 MiB cannot inflate and land on disk in 50 ms; without the deadline it unpacks whole.
    with pytest.raises(BadArtifact) as caught:  # noqa: SIM117 - the error may come from either
        with open_archive(archive, max_bytes=1 << 30, max_members=10, timeout=0.05) as checked:
            checked.extract_to(dest)
    assert "longer than the 0.05 s a load may take (--load-timeout)" in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["zeros.tar.gz"]


def _one_model_source(tmp_path: Path) -> FolderSource:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.tar.gz").write_bytes(tar_bytes(good()))
    return FolderSource(models)


def test_a_compiler_process_unpacks_what_the_disk_cache_counts(tmp_path: Path, compiler) -> None:
    root = tmp_path / "cache"
    cache = DiskCache(root, 1 << 20, _one_model_source(tmp_path), unpacker=compiler.unpack)
    folder, _ = cache.materialize("m.tar.gz")
    assert (folder / "xgboost-model").read_bytes() == MODEL
    assert cache.used_bytes() == len(MODEL)
    assert sorted(os.listdir(root)) == sorted([MARKER, folder.name])  # no staging folder, no download


def test_no_room_on_disk_stops_the_unpack_in_the_compiler_before_it_writes(tmp_path: Path, compiler) -> None:
    root = tmp_path / "cache"
    download = len(tar_bytes(good()))
    cache = DiskCache(root, download + 100, _one_model_source(tmp_path), unpacker=compiler.unpack)
    with pytest.raises(BadArtifact, match="more than the disk cache budget"):
        cache.materialize("m.tar.gz")
    assert os.listdir(root) == [MARKER]
    assert cache.used_bytes() == 0
    cache.budget = 1 << 20  # the same process unpacks the next artifact: it was told to stop, not killed
    folder, _ = cache.materialize("m.tar.gz")
    assert (folder / "xgboost-model").read_bytes() == MODEL


def _process_of(compiler: Compiler) -> int:
    [process] = compiler._idle  # the one warm process, idle between jobs
    return process.process.pid


def _on_unpacked_reservation(cache: DiskCache, then) -> None:
    """Have `then()` run when the unpack asks for room (the disk cache's third reservation: the artifact's
    size, the download's, then download and unpacked bytes): the process waits for the answer."""
    real, calls = cache._reserve, []

    def reserve(*args: object) -> int:
        calls.append(args)
        if len(calls) == 3:
            then()
        return real(*args)

    cache._reserve = reserve


def test_an_unpacking_process_that_dies_is_a_503_and_leaves_nothing(tmp_path: Path) -> None:
    compiler = Compiler(allow_pickle=False, limits=ModelLimits(), deadline=60, max_processes=1, warm=1)
    try:
        pid = _process_of(compiler)
        root = tmp_path / "cache"
        cache = DiskCache(root, 1 << 20, _one_model_source(tmp_path), unpacker=compiler.unpack)
        real = cache._reserve
        # The process dies between its checks and its writes.
        _on_unpacked_reservation(cache, lambda: os.kill(pid, signal.SIGKILL))
        with pytest.raises(SourceUnavailable, match="the process unpacking .* died; retry"):
            cache.materialize("m.tar.gz")
        assert os.listdir(root) == [MARKER]
        assert cache.used_bytes() == 0
        cache._reserve = real
        folder, _ = cache.materialize("m.tar.gz")  # a new process takes its place
        assert (folder / "xgboost-model").read_bytes() == MODEL
    finally:
        compiler.close()


def test_an_unpack_stuck_past_its_deadline_is_killed_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(compiler_module, "UNPACK_GRACE_S", 0.2)
    compiler = Compiler(allow_pickle=False, limits=ModelLimits(), deadline=60, max_processes=1, warm=1)
    try:
        pid = _process_of(compiler)
        root = tmp_path / "cache"
        source = _one_model_source(tmp_path)
        cache = DiskCache(root, 1 << 20, source, unpack_timeout=0.3, unpacker=compiler.unpack)
        _on_unpacked_reservation(cache, lambda: os.kill(pid, signal.SIGSTOP))  # it never answers again
        with pytest.raises(BadArtifact, match="unpacking took longer than the 0.3 s"):
            cache.materialize("m.tar.gz")
        assert os.listdir(root) == [MARKER]
        assert cache.used_bytes() == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped, not left stopped
    finally:
        compiler.close()
