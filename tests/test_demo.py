"""`make demo` end to end: `mme demo` trains, serves, invokes cold then warm, and stops cleanly."""

from __future__ import annotations

import re
import socket
import subprocess
import sys


def test_demo_runs_end_to_end_and_leaves_nothing_running(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "demo", "--out", str(tmp_path / "models"), "--houses", "200"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    cities = ["NewYork_NY", "LosAngeles_CA", "Chicago_IL", "Houston_TX"]
    for city in cities:
        lines = re.findall(rf"{city}\.tar\.gz +\$ *([\d,]+\.\d\d) +took +[\d.]+ ms \((cold|warm)\)", out)
        assert [kind for _, kind in lines] == ["cold", "warm"], out
        assert lines[0][0] == lines[1][0]  # the same house, the same price, cold or warm
        price = float(lines[0][0].replace(",", ""))
        assert 300_000 < price < 700_000  # the formula's price for the demo house is 479,000
    assert re.search(r"median cold [\d.]+ ms, warm [\d.]+ ms", out)
    assert "invoke_endpoint(" in out and "-> [" in out
    assert "stopped, exit code 0" in out
    assert sorted(p.name for p in (tmp_path / "models").glob("*.tar.gz")) == sorted(
        f"{c}.tar.gz" for c in cities
    )
    assert list(cwd.iterdir()) == []  # --out is the only place it writes: no data/ where it was started
    port = int(re.search(r"Serve .* on http://127\.0\.0\.1:(\d+)", out).group(1))
    with socket.socket() as probe:  # the server is gone: nothing listens on its port any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
