"""The ``mmsearch serve`` command. Only click is imported here: FastAPI, uvicorn and the
index are imported inside the command, so ``mmsearch --help`` and every other command
start without paying for them."""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path
from typing import Any

import click

from .. import config
from ..click_options import index_option

#: Environment variable holding the token (keeps it out of ``ps`` output).
ENV_TOKEN = "MMSEARCH_TOKEN"


@click.command("serve")
@index_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow binding a non-loopback address (a token is then required).",
)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    show_envvar=True,
    help="Access token [default with --allow-remote: generated and printed].",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="Extra host name the server answers for (e.g. photos.lan); repeatable.",
)
@click.option("--device", help="cpu, cuda, cuda:1 … [default: cuda when available].")
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    help="Origin of another site whose pages may call this server (CORS), e.g. the "
    "clip-retrieval front end's http://127.0.0.1:8080; repeatable.",
)
@click.option(
    "--clip-image-url",
    "clip_image_urls",
    is_flag=True,
    help="Let /knn-service fetch the image_url a request names (off: the server "
    "fetches nothing from the network).",
)
def serve_cmd(
    index_dir: Path | None,
    host: str,
    port: int,
    allow_remote: bool,
    token: str | None,
    allowed_hosts: tuple[str, ...],
    device: str | None,
    allow_origins: tuple[str, ...] = (),
    clip_image_urls: bool = False,
) -> None:
    """Serve a web page and a JSON API to search the index (until Ctrl-C).

    \b
      mmsearch serve                      http://127.0.0.1:8765/
      mmsearch serve --host 0.0.0.0 --allow-remote   other machines, with a token
    """
    from .security import is_loopback

    remote = not is_loopback(host)
    if remote and not allow_remote:
        raise click.UsageError(
            f"--host {host} is reachable from other machines: add --allow-remote "
            "(a token will then be required)",
        )
    if remote and not token:
        token = secrets.token_urlsafe(24)
    # Requests come from a thread pool: OpenMP threads (faiss) that spin while waiting for
    # work burn the cores the other requests need (measured: bench/serve.py). Must be set
    # before faiss loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app = build_app(
        index_dir,
        host,
        token,
        allowed_hosts,
        device,
        origins=allow_origins,
        image_urls=clip_image_urls,
    )
    url = _url(host, port, token)
    click.echo(f"mmsearch: serving {app.state.backend.path} at {url}")
    if token:
        click.echo("open that URL once (it sets a cookie), or send 'Authorization: Bearer <token>'")
    click.echo("press Ctrl-C to stop")
    _run(app, host, port)


def build_app(
    index_dir: Path | None,
    host: str,
    token: str | None,
    allowed_hosts: tuple[str, ...] = (),
    device: str | None = None,
    mcp: bool = True,
    origins: tuple[str, ...] = (),
    image_urls: bool = False,
) -> Any:
    """Open the index (model loaded once, now) and build the app for a ``host`` bind
    (with the MCP endpoint at ``/mcp`` unless ``mcp`` is False)."""
    # Lazy: FastAPI, torch and the index are only loaded when serving (start-up time).
    from ..errors import MMSearchError
    from ..status import MMSearchException
    from .app import create_app
    from .backend import Backend
    from .images import MAX_UPLOAD_BYTES
    from .security import Policy
    from .security import allowed_hosts as hosts_for

    device = device or os.environ.get(config.ENV_DEVICE)
    try:
        backend = Backend.open(index_dir, device=device)
    except MMSearchError as exc:
        raise MMSearchException(exc) from exc
    policy = Policy(
        hosts=hosts_for(host, allowed_hosts),
        token=token or None,
        max_body=MAX_UPLOAD_BYTES + 64 * 1024,  # the image plus the multipart framing
        any_ip=host in ("0.0.0.0", "::"),
        origins=frozenset(o.rstrip("/").lower() for o in origins),
    )
    app = create_app(backend, policy)
    from .assistants import add_clip_api

    add_clip_api(app, backend, image_urls=image_urls)  # clip-retrieval's back-end API
    if mcp and importlib.util.find_spec("mcp") is not None:  # the assistants extra
        from .assistants import mount_mcp

        mount_mcp(app, backend)
    return app


def _url(host: str, port: int, token: str | None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def _run(app: Any, host: str, port: int) -> None:
    import uvicorn  # lazy: start-up time of the other commands

    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
    finally:
        app.state.backend.close()
