"""Test helpers that run real servers on 127.0.0.1: an HTTP file server that honours Range requests (like
object stores and the dataset hub do), counts the bytes it serves and can fail on purpose."""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import threading
import time
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHTTPServer:
    """Serve ``folder`` on ``http://127.0.0.1:<port>/`` in a background thread, as a static host does: files
    only, a folder is 404 (no listing; ``listing=True`` restores Python's folder pages).

    ``fail_every=k`` answers every k-th request with 503 (to test retries). ``redirect=True`` answers paths
    under ``/r/`` with a 302 to the path without it (a hub sending ``resolve/main`` URLs to its CDN).
    ``ranges=False`` ignores Range headers and sends whole files, as some servers do. ``drop_every=k`` cuts
    every k-th ranged response off after half its body and closes the connection (a dropped connection).
    ``bytes_served`` and ``requests`` count what went out. Use as a context manager; it stops by itself on exit.

    ``redirect_to`` sends the ``/r/`` redirects to another server's base URL (a CDN on another host).
    ``hub_repo="org/name"`` also answers as the Hugging Face Hub does for a dataset repository holding
    ``folder`` (what ``huggingface_hub.HfFileSystem`` asks: repository info, tree listings, ``paths-info``,
    and ``/datasets/org/name/resolve/<revision>/<path>`` with Range), so ``hf://`` URLs can be read with
    ``storage_options={"endpoint": server.url}``; a hub lists folders, unlike a static host.
    :meth:`answer_next` queues statuses (with headers, e.g. ``Retry-After``) for the next requests, as a rate
    limiting hub answers. ``seen`` logs every request as ``(time, method, path, headers)``. ``tls`` is
    ``(certfile, keyfile)`` to serve HTTPS. ``latency`` (seconds added before each answer) and ``bandwidth``
    (bytes/s of the host's link, shared by all responses) make it behave like a distant host; :meth:`vanish`
    makes a file answer 404 from then on (a file removed from the host mid-download).
    """

    def __init__(self, folder: str, *, fail_every: int = 0, listing: bool = False, redirect: bool = False,
                 ranges: bool = True, drop_every: int = 0, redirect_to: str | None = None,
                 tls: tuple[str, str] | None = None, hub_repo: str | None = None, latency: float = 0.0,
                 bandwidth: float | None = None):
        self.folder = os.fspath(folder)
        self.latency = latency
        self.bandwidth = bandwidth
        self.vanished: set[str] = set()
        self._link_free = 0.0  # when the shared link has sent everything queued so far (monotonic time)
        self.hub_repo = hub_repo
        self.redirect_to = redirect_to
        self.seen: list[tuple[float, str, str, dict[str, str]]] = []
        self._answers: list[tuple[int, dict[str, str]]] = []
        self._tls = tls
        self.fail_every = fail_every
        self.listing = listing
        self.redirect = redirect
        self.ranges = ranges
        self.redirects = 0
        self.drop_every = drop_every
        self.drops = 0
        self._ranged = 0
        self.bytes_served = 0
        self.requests = 0
        self.failures = 0
        self._lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real hosts speak (every response has a length)
            disable_nagle_algorithm = True  # as they do too: headers and body go out at once, no delayed-ACK stall

            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=server.folder, **kwargs)

            def log_message(self, *args):  # keep test output clean
                pass

            def _should_fail(self) -> bool:
                if server.latency:
                    time.sleep(server.latency)
                if urlsplit(self.path).path in server.vanished:
                    self.send_error(HTTPStatus.NOT_FOUND, "removed from the host")
                    return True
                with server._lock:
                    server.requests += 1
                    server.seen.append((time.monotonic(), self.command, self.path, dict(self.headers.items())))
                    answer = server._answers.pop(0) if server._answers else None
                    fail = server.fail_every and server.requests % server.fail_every == 0
                    if fail:
                        server.failures += 1
                if answer is not None:
                    status, headers = answer
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return True
                if fail:
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "injected failure")
                return bool(fail)

            def send_head(self):
                if not server.listing and os.path.isdir(self.translate_path(self.path)):
                    self.send_error(HTTPStatus.NOT_FOUND, "static host: no folder listing")
                    return None
                return super().send_head()

            def _redirected(self) -> bool:
                if not (server.redirect and self.path.startswith("/r/")):
                    return False
                with server._lock:
                    server.redirects += 1
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", (server.redirect_to or "") + self.path[2:])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True

            def do_HEAD(self):
                if self._should_fail():
                    return
                if not self._redirected() and not self._hub():
                    super().do_HEAD()

            def _hub(self) -> bool:
                """Answer a Hub API request; rewrite a ``resolve`` URL to the file's path. False: not the Hub's."""
                if not server.hub_repo:
                    return False
                parts = urlsplit(self.path)
                api = f"/api/datasets/{server.hub_repo}"
                resolve = f"/datasets/{server.hub_repo}/resolve/"
                if parts.path.startswith(resolve):
                    rest = parts.path[len(resolve):]
                    self.path = "/" + (rest.split("/", 1)[1] if "/" in rest else "")
                    return False
                if not parts.path.startswith(api):
                    return False
                tail = parts.path[len(api):]
                if tail == "" or tail.startswith("/revision/"):
                    return self._json({"id": server.hub_repo, "sha": "0" * 40, "private": False, "siblings": []})
                if tail.startswith("/tree/"):
                    rel = unquote(tail[len("/tree/"):].split("/", 1)[1]) if "/" in tail[len("/tree/"):] else ""
                    full = os.path.join(server.folder, rel)
                    if not os.path.isdir(full):
                        return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
                    return self._json([_hub_entry(server.folder, os.path.join(rel, n).lstrip("/"))
                                       for n in sorted(os.listdir(full))])
                if tail.startswith("/paths-info/") and self.command == "POST":
                    form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                    found = [p for p in form.get("paths", []) if os.path.exists(os.path.join(server.folder, p))]
                    return self._json([_hub_entry(server.folder, p) for p in found])
                return self._json({"error": "not found"}, 404)

            def _json(self, doc, status: int = 200, headers: dict[str, str] | None = None) -> bool:
                body = json.dumps(doc).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return True

            def do_POST(self):
                if self._should_fail():
                    return
                if not self._hub():
                    self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "static host")

            def do_GET(self):
                if self._should_fail():
                    return
                if self._redirected() or self._hub():
                    return
                path = self.translate_path(self.path)
                if not server.listing and os.path.isdir(path):
                    self.send_error(HTTPStatus.NOT_FOUND, "static host: no folder listing")
                    return
                match = _RANGE.match(self.headers.get("Range", "").strip())
                if not os.path.isfile(path) or match is None or not server.ranges:
                    return super().do_GET()
                size = os.path.getsize(path)
                start_s, end_s = match.groups()
                if start_s == "":
                    start, end = max(size - int(end_s), 0), size - 1
                else:
                    start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
                if start >= size or start > end:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = end - start + 1
                with server._lock:
                    server._ranged += 1
                    drop = bool(server.drop_every) and server._ranged % server.drop_every == 0
                    server.drops += drop
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                sent = 0
                stop = length // 2 if drop else length
                with open(path, "rb") as f:  # sendfile, as static hosts serve files (no copy through Python)
                    if server._tls is not None:  # TLS encrypts in user space: no sendfile
                        f.seek(start)
                        self._count(stop)
                        self.wfile.write(f.read(stop))
                        sent = stop
                    while sent < stop:
                        step = stop - sent if not server.bandwidth else min(stop - sent, 1 << 18)
                        server._on_link(step)
                        # counted before it goes out: a client that has its bytes must find them counted
                        self._count(step)
                        n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent, step)
                        self._count(n - step)
                        if not n:
                            break
                        sent += n
                if drop:
                    self.close_connection = True

            def copyfile(self, source, outputfile):  # whole-file GETs are counted (and limited) too
                while data := source.read(1 << 18):
                    server._on_link(len(data))
                    self._count(len(data))
                    outputfile.write(data)

            def _count(self, n):
                with server._lock:
                    server.bytes_served += n

            def end_headers(self):
                self.send_header("Accept-Ranges", "bytes")
                super().end_headers()

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients hang up mid-response on purpose
                pass

        self._httpd = QuietServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self._tls else 'http'}://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def _on_link(self, nbytes: int) -> None:
        """Wait for ``nbytes``' turn on the host's one link of ``bandwidth`` bytes/s (no wait without one)."""
        if not self.bandwidth:
            return
        with self._lock:
            begin = max(time.monotonic(), self._link_free)
            self._link_free = begin + nbytes / self.bandwidth
        wait = begin + nbytes / self.bandwidth - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def vanish(self, path: str) -> None:
        """Answer 404 for ``path`` (as in the URL, e.g. ``/val/S2L2A/ssl4eos12_shard_000002.tar``) from now on."""
        self.vanished.add(path)

    def answer_next(self, *answers: tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these ``(status, headers)`` (empty bodies), in order."""
        with self._lock:
            self._answers.extend(answers)

    def reset_counts(self) -> None:
        with self._lock:
            self.bytes_served = self.requests = self.failures = 0
            self.seen = []

    def __enter__(self) -> RangeHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def _hub_entry(folder: str, rel: str) -> dict:
    """A Hub tree / paths-info entry for ``rel`` inside ``folder``."""
    full = os.path.join(folder, rel)
    oid = hashlib.sha1(rel.encode()).hexdigest()
    if os.path.isdir(full):
        return {"type": "directory", "path": rel, "oid": oid}
    return {"type": "file", "path": rel, "size": os.path.getsize(full), "oid": oid}


def _serve(folder: str, conn, options: dict) -> None:
    with RangeHTTPServer(folder, **options) as server:
        conn.send(server.url)
        while True:  # until the parent says stop
            msg = conn.recv()
            if msg == "counts":
                conn.send((server.bytes_served, server.requests))
            elif msg == "reset":
                server.reset_counts()
            else:
                break


class ServerProcess:
    """A :class:`RangeHTTPServer` in a child process, so its Python threads do not compete for the caller's
    GIL (benchmarks compare remote with local reading; a real host runs elsewhere); ``options`` as for
    :class:`RangeHTTPServer` (``latency``, ``bandwidth``). Context manager: ``url``;
    :meth:`counts` gives (bytes served, requests) since :meth:`reset_counts`."""

    def __init__(self, folder: str, **options):
        import multiprocessing as mp

        self._parent, child = mp.get_context("fork").Pipe()
        self._proc = mp.get_context("fork").Process(target=_serve, args=(os.fspath(folder), child, options),
                                                    daemon=True)

    def __enter__(self) -> ServerProcess:
        self._proc.start()
        self.url = self._parent.recv()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def counts(self) -> tuple[int, int]:
        self._parent.send("counts")
        return self._parent.recv()

    def reset_counts(self) -> None:
        self._parent.send("reset")

    def __exit__(self, *exc) -> None:
        self._parent.send("stop")
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()


class Served:
    """A ``BaseHTTPRequestHandler`` class served on ``http://127.0.0.1:<port>`` in a background thread (a
    stand-in for a proxy, a catch-all site, ...: hosts that are not static file hosts). ``url``; ``close()``,
    or use as a context manager."""

    def __init__(self, handler: type) -> None:
        from http.server import ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
