"""`droplet3d view OUT`: serve an asset, run or batch folder's viewer pages on 127.0.0.1.

viewer.html opens from the file system on its own; serving helps where a browser or a remote session
cannot open local files, and gives a batch folder an index of its rows (thumbnail, status, link). Only
127.0.0.1 is bound: the page is for this machine (use an SSH tunnel to look from another).
"""

from __future__ import annotations

import functools
import html
import json
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from recon.constants import VIEWER_FILE as VIEWER
from runs.errors import UsageError
from runs.manifest import BATCH_STATE

INDEX = "index.html"
HOST = "127.0.0.1"
THUMBNAIL = "images/00000.png"  # an asset's first posed frame (poses and reconstruct write images/)


def viewer_path(folder: Path) -> str:
    """The page to open for `folder`: an asset's viewer.html, a run's asset/viewer.html, or a batch index."""
    if (folder / VIEWER).is_file():
        return VIEWER
    if (folder / "asset" / VIEWER).is_file():
        return f"asset/{VIEWER}"
    if (folder / BATCH_STATE).is_file():
        return INDEX
    raise UsageError(
        f"{folder} holds no {VIEWER} (an asset folder), asset/{VIEWER} (a run folder) or {BATCH_STATE} (a "
        "batch folder)"
    )


def batch_index(folder: Path) -> str:
    """The index page of a batch folder: one row per manifest row, with its thumbnail, status and link."""
    record = json.loads((folder / BATCH_STATE).read_text())
    rows = []
    for row in record.get("rows", []):
        row_id = html.escape(str(row.get("id", "")))
        asset = folder / str(row.get("id", "")) / "asset"
        thumb = f'<img src="{row_id}/asset/{THUMBNAIL}" width="96">' if (asset / THUMBNAIL).is_file() else ""
        link = f'<a href="{row_id}/asset/{VIEWER}">{row_id}</a>' if (asset / VIEWER).is_file() else row_id
        status = html.escape(str(row.get("status", "")))
        error = html.escape(str(row.get("error") or ""))
        rows.append(f"<tr><td>{thumb}</td><td>{link}</td><td>{status}</td><td>{error}</td></tr>")
    title = html.escape(folder.name)
    return (
        f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"
        f"<table><tr><th></th><th>row</th><th>status</th><th>error</th></tr>{''.join(rows)}</table>"
    )


class Handler(SimpleHTTPRequestHandler):
    """The folder's files, and a generated index for a batch folder; quiet (no log line per request)."""

    def __init__(self, *args: Any, folder: Path, **kwargs: Any) -> None:
        self.folder = folder
        super().__init__(*args, directory=str(folder), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path in ("/", f"/{INDEX}") and (self.folder / BATCH_STATE).is_file():
            body = batch_index(self.folder).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/":
            self.send_response(302)
            self.send_header("Location", "/" + viewer_path(self.folder))
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(folder: Path, port: int, say: Callable[[str], None], open_browser: bool = False) -> None:
    """Serve `folder` on 127.0.0.1:`port` (0: any free port) until Ctrl-C; print the page's URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    page = viewer_path(folder)
    try:
        server = ThreadingHTTPServer((HOST, port), functools.partial(Handler, folder=folder))
    except OSError as exc:
        raise UsageError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from exc
    url = f"http://{HOST}:{server.server_address[1]}/{page}"
    say(f"serving {folder} at {url} (Ctrl-C stops)")
    if open_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("stopped")
    finally:
        server.server_close()
