"""The real server: the command's bind rules, raw requests over a socket, and an indexer
in a second process adding images while the server answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from click.testing import CliRunner  # noqa: E402
from conftest import ROOT, load_make_shapes  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_util import live_server, shapes_index  # noqa: E402

from mmsearch.catalog import Catalog  # noqa: E402
from mmsearch.cli import cli  # noqa: E402
from mmsearch.server import command  # noqa: E402
from mmsearch.server.app import create_app  # noqa: E402
from mmsearch.server.backend import Backend  # noqa: E402


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_index(tmp_path_factory.mktemp("live"), n=12)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, str, int]]:
    """uvicorn replaced by a recorder: (app, host, port) of each run."""
    calls: list[tuple[object, str, int]] = []
    monkeypatch.setattr(command, "_run", lambda app, host, port: calls.append((app, host, port)))
    return calls


def test_non_loopback_bind_refused_without_allow_remote(index_dir: Path, ran: list) -> None:
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        result = CliRunner().invoke(cli, ["serve", "--index", str(index_dir), "--host", host])
        assert result.exit_code == 2 and "--allow-remote" in result.output, host
    assert ran == []


def test_remote_bind_generates_and_requires_a_token(index_dir: Path, ran: list) -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--index", str(index_dir), "--host", "0.0.0.0", "--allow-remote"]
    )
    assert result.exit_code == 0, result.output
    app, host, port = ran[0]
    assert (host, port) == ("0.0.0.0", 8765)
    token = result.output.split("?token=")[1].split()[0]
    assert len(token) >= 24
    c = TestClient(app, base_url="http://10.0.0.2:8765")
    assert c.get("/api/info").status_code == 401
    ok = c.get("/api/info", headers={"authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    app.state.backend.close()


def test_loopback_serve_prints_url(index_dir: Path, ran: list) -> None:
    result = CliRunner().invoke(cli, ["serve", "--index", str(index_dir), "--port", "9000"])
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:9000/" in result.output and "token" not in result.output
    app = ran[0][0]
    assert TestClient(app, base_url="http://127.0.0.1:9000").get("/api/info").status_code == 200
    app.state.backend.close()


def test_missing_index_is_a_clear_error(tmp_path: Path, ran: list) -> None:
    result = CliRunner().invoke(cli, ["serve", "--index", str(tmp_path / "none")])
    assert result.exit_code == 3 and "no index at" in result.output


def _raw(port: int, target: str) -> bytes:
    """One request with the target sent verbatim (no client-side dot-segment removal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_raw_traversal_over_the_wire(index_dir: Path) -> None:
    backend = Backend.open(index_dir, device="cpu")
    with live_server(create_app(backend)) as url:
        port = int(url.rsplit(":", 1)[1])
        for target in (
            "/../../../../etc/passwd",
            "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/static/../../../etc/passwd",
            "/api/items/../../../../etc/passwd",
            "/api/items/1/../../../../../etc/passwd",
            "/..%2f..%2f..%2fetc%2fpasswd",
            "//etc/passwd",
            "/api/items/%2fetc%2fpasswd/file",
        ):
            reply = _raw(port, target)
            status = int(reply.split(b" ", 2)[1])
            assert b"root:" not in reply, target
            assert status in (400, 404, 422), (target, reply[:200])
    backend.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_second_process_indexes_while_serving(index_dir: Path, tmp_path: Path) -> None:
    """`python -m mmsearch index` adds images while the server answers; searches never
    fail, and afterwards the new images are found with ids that point at their files."""
    new = tmp_path / "new"
    load_make_shapes().make_shapes(new, 30, seed=7, size=96)
    backend = Backend.open(index_dir, device="cpu")
    errors: list[str] = []
    seen: dict[int, str] = {}
    stop = threading.Event()
    with live_server(create_app(backend)) as url:

        def hammer() -> None:
            while not stop.is_set():
                for q in (
                    f"{url}/api/search?q=a+red+circle&k=50",
                    f"{url}/api/items/1/similar?k=50",
                ):
                    try:
                        for hit in _get(q)["hits"]:
                            seen[hit["id"]] = hit["path"]
                    except Exception as exc:  # noqa: BLE001 - every failure is recorded
                        errors.append(f"{q}: {exc}")

        thread = threading.Thread(target=hammer)
        thread.start()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmsearch",
                "-q",
                "index",
                "--index",
                str(index_dir),
                "--batch-size",
                "8",
                str(new / "images"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        stop.set()
        thread.join()
        assert proc.returncode == 0, proc.stderr
        after = _get(f"{url}/api/search?q=a+red+circle&k=200")["hits"]
        info = _get(f"{url}/api/info")
    backend.close()
    assert errors == []
    assert info["images"] == 12 + 30
    with Catalog(index_dir / "catalog.sqlite", create=False) as cat:
        records = cat.records(list(seen) + [h["id"] for h in after])
    assert len(after) == 42
    new_paths = {h["path"] for h in after if h["path"].startswith(str(new))}
    assert len(new_paths) == 30
    for hit in after:
        assert records[hit["id"]].path == hit["path"]
    for item_id, path in seen.items():  # every id served mid-indexing pointed at its file
        assert records[item_id].path == path
