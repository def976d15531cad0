"""`container/test.sh --host-checks`: the host part of `make container-test`, against fake apt layouts.

Only the checks run (no apt-get, no podman), so these hold on any machine with bash and awk.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "container" / "test.sh"
DEB822 = """Types: deb
# a comment
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""
ONE_LINE = """# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://security.debian.org/debian-security bookworm-security main
deb [signed-by=/k.gpg] http://mirror.example.org/debian bookworm main
"""


def host_checks(apt: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MME_APT_DIR": str(apt), "TMPDIR": str(tmp)}
    return subprocess.run(
        ["bash", str(SCRIPT), "--host-checks"], capture_output=True, text=True, env=env, timeout=60
    )


def apt_dir(root: Path, files: dict[str, str]) -> Path:
    (root / "apt" / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / "apt" / name).write_text(text)
    return root / "apt"


@pytest.mark.parametrize(
    ("files", "mirror"),
    [
        # Current Debian: deb822 sources only, no sources.list at all (a first run died here silently).
        ({"sources.list.d/debian.sources": DEB822}, "http://deb.debian.org/debian"),
        ({"sources.list": ONE_LINE}, "http://mirror.example.org/debian"),
        ({"sources.list.d/mirror.list": ONE_LINE}, "http://mirror.example.org/debian"),
    ],
    ids=["deb822-only", "sources.list-only", "list-in-sources.list.d"],
)
def test_host_checks_find_the_mirror_in_any_sources_layout(tmp_path: Path, files, mirror) -> None:
    result = host_checks(apt_dir(tmp_path, files), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS: apt mirror: {mirror}\n" in result.stdout
    assert result.stdout.endswith("PASS: host checks\n")
    assert not list(tmp_path.glob("mme-container-test.*"))  # its work folder is removed


def test_no_mirror_is_a_fail_line_naming_where_it_looked(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/other.sources": "Types: deb\nURIs: cdrom:/media\n"})
    result = host_checks(apt, tmp_path)
    assert result.returncode == 1
    last = result.stdout.splitlines()[-1]
    assert last.startswith(
        f"FAIL: apt mirror: no Debian mirror in {apt}/sources.list or {apt}/sources.list.d"
    )


def test_an_unexpected_failure_names_its_step(tmp_path: Path) -> None:
    apt = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    result = host_checks(apt, tmp_path / "missing")  # mktemp cannot make the work folder there
    assert result.returncode != 0
    last = result.stdout.splitlines()[-1]
    assert last.startswith("FAIL: work folder: `WORK=$(mktemp -d") and "exited 1" in last
