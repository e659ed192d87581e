"""``biasscope serve``: the real command, on waitress, with token auth off loopback."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from biasscope.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_serve_help_lists_options():
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    for opt in ("--host", "--port", "--token", "--model", "--workers", "--max-upload-mb", "--preload"):
        assert opt in out
    assert "127.0.0.1" in out and "5000" in out


@pytest.mark.slow
def test_serve_off_loopback_prints_token_and_requires_it():
    port = _free_port()
    cmd = [sys.executable, "-c", "from biasscope.cli import main; main()", "serve", "--host", "0.0.0.0",
           "--port", str(port), "--no-preload"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the socket is bound
        m = re.search(r"serving on http://0\.0\.0\.0:(\d+)/\?token=([\w-]+)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        assert int(m.group(1)) == port
        token = m.group(2)
        base = f"http://127.0.0.1:{port}"
        status, body = _get(base + "/api/health")
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
        assert _get(base + "/")[0] == 401
        assert _get(base + "/static/app.js")[0] == 401
        status, body = _get(base + "/api/health", token)
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _get(base + "/api/models", token)
        assert status == 200 and json.loads(body)["configured_default"] == "resnet18"
        status, body = _get(base + "/", token)
        assert status == 200 and b"biasscope" in body
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode is not None


def test_serve_refuses_bad_port_value():
    res = CliRunner().invoke(main, ["serve", "--port", "70000"])
    assert res.exit_code == 2 and "70000" in res.output



def test_malloc_arena_cap_applies_on_glibc_and_can_be_left_alone() -> None:
    import platform

    from biasscope.cli.serve import limit_malloc_arenas

    assert limit_malloc_arenas(0) is False  # 0 leaves glibc's default
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas(2) is True


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux") or __import__("platform").libc_ver()[0] != "glibc",
                    reason="glibc's malloc_trim")
def test_release_free_heap_returns_freed_fragments_to_the_system() -> None:
    from biasscope.cli.serve import release_free_heap

    # 200 MB of 2 KB malloc blocks; one in 64 stays alive so the freed ones are holes in the heap
    # that glibc never trims by itself (it only trims the top of the heap)
    blocks = [bytearray(2048) for _ in range(100_000)]
    keep = blocks[::64]
    del blocks
    held = _rss_anon_mb()
    assert release_free_heap()
    assert held - _rss_anon_mb() > 100, "freed heap memory stayed resident"
    assert all(len(b) == 2048 for b in keep)  # the live blocks are untouched
