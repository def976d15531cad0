"""A folder source fetches by hard link when it can (no copy), and stays confined through links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve.source import FolderSource, ModelNotFound


def test_a_fetch_on_the_same_filesystem_is_a_link_that_keeps_the_fetched_bytes(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    artifact = root / "m.tar.gz"
    artifact.write_bytes(b"first version")
    source = FolderSource(root)
    dest = tmp_path / "dl.tar.gz"
    version = source.fetch("m.tar.gz", dest)
    assert dest.stat().st_ino == artifact.stat().st_ino
    assert version == source.version("m.tar.gz")
    replacement = root / ".m.part"
    replacement.write_bytes(b"second version, longer")
    os.replace(replacement, artifact)  # how mme add and most tools publish: a new file
    assert dest.read_bytes() == b"first version"
    assert source.version("m.tar.gz") != version


def test_links_inside_the_folder_are_followed_and_links_out_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "real").mkdir(parents=True)
    (root / "real" / "m.tar.gz").write_bytes(b"inside")
    (root / "alias").symlink_to(root / "real")
    (tmp_path / "secret.tar.gz").write_bytes(b"outside")
    (root / "real" / "out.tar.gz").symlink_to(tmp_path / "secret.tar.gz")
    source = FolderSource(root)
    source.fetch("alias/m.tar.gz", tmp_path / "dl")
    assert (tmp_path / "dl").read_bytes() == b"inside"
    for name in ("real/out.tar.gz", "alias/out.tar.gz"):
        with pytest.raises(ModelNotFound, match="resolves outside"):
            source.version(name)
