"""storage.http against real servers on 127.0.0.1: credentials stay with their host, final and transient
answers, Retry-After, and HTTPS with nothing but the base install."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import time

import pytest
import xarray as xr

import ssl4eo_zarr as sz
from ssl4eo_zarr.storage import http
from ssl4eo_zarr.testing import RangeHTTPServer

from .helpers import chunk_path

retry_module = importlib.import_module("ssl4eo_zarr.storage.retry")  # the package re-exports the function

TOKEN = {"Authorization": "Bearer secret", "Cookie": "session=1"}


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def test_credentials_do_not_follow_a_redirect_to_another_host(root):
    """The hub (127.0.0.1) redirects to its CDN ("localhost"): the CDN never sees the token, on the first
    request nor on the later ones sent straight to the remembered CDN URL; the hub sees it on every one."""
    path = chunk_path(root, "S2L2A", 2)
    with RangeHTTPServer(root) as cdn, RangeHTTPServer(root, redirect=True,
                                                       redirect_to="") as hub:
        hub.redirect_to = f"http://localhost:{cdn.port}"
        url = f"{hub.url}/r/{_rel(root, path)}"
        got = sz.open_dataset(url, storage_options={"headers": TOKEN}).load()
        xr.testing.assert_identical(got, sz.open_dataset(path).load())
        assert hub.seen and all(h.get("Authorization") == "Bearer secret" for _t, _m, _p, h in hub.seen)
        assert len(cdn.seen) >= 2, "the data came from the CDN"
        for _t, _m, _p, headers in cdn.seen:
            assert "Authorization" not in headers and "Cookie" not in headers, headers


def test_credentials_follow_a_redirect_on_the_same_host(root):
    path = chunk_path(root, "S1GRD", 1)
    with RangeHTTPServer(root, redirect=True) as server:
        url = f"{server.url}/r/{_rel(root, path)}"
        sz.open_dataset(url, storage_options={"headers": TOKEN})["bands"].load()
        assert all(h.get("Authorization") == "Bearer secret" for _t, _m, _p, h in server.seen)


@pytest.mark.parametrize("status", [400, 405, 418, 451])
def test_client_errors_are_final(root, status):
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        server.answer_next((status, {}))
        with pytest.raises(http.HTTPStatusError, match=str(status)) as info:
            retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.01)
        assert info.value.status == status
        assert server.requests == 1, "a 4xx other than 408/429 is not retried"


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_transient_answers_are_retried(root, status):
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        server.answer_next((status, {}), (status, {}))
        size = retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.01)
        assert size == os.path.getsize(path)
        assert server.requests == 3


def _gaps(server) -> list[float]:
    times = [t for t, *_ in server.seen]
    return [b - a for a, b in zip(times, times[1:])]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_waited_for(root, status):
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        server.answer_next((status, {"Retry-After": "1"}))
        retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.01)
        assert server.requests == 2
        assert _gaps(server)[0] >= 0.95, _gaps(server)


def test_retry_after_as_an_http_date_is_waited_for(root):
    from email.utils import formatdate

    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        # HTTP dates have whole seconds: 2 s ahead is at least 1 s of waiting
        server.answer_next((429, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}))
        retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.01)
        assert _gaps(server)[0] >= 0.95, _gaps(server)


def test_retry_after_is_capped(root, monkeypatch):
    monkeypatch.setattr(retry_module, "RETRY_AFTER_CAP", 0.3)
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        server.answer_next((429, {"Retry-After": "3600"}))
        retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.01)
        assert 0.25 <= _gaps(server)[0] < 30, _gaps(server)


def test_retry_after_parsing():
    assert retry_module.parse_retry_after("120") == 120.0
    assert retry_module.parse_retry_after(None) is None and retry_module.parse_retry_after("soon") is None
    assert retry_module.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_module.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_status_errors_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(http.HTTPStatusError("u: HTTP 429", 429, 3.0)))
    assert (err.status, err.retry_after, str(err)) == (429, 3.0, "u: HTTP 429")
    assert not retry_module.is_transient(http.HTTPStatusError("x", 404)) and retry_module.is_transient(err)


_BASE_INSTALL = """
import sys
for name in ("aiohttp", "requests", "s3fs", "huggingface_hub"):
    sys.modules[name] = None  # as if not installed: the base install has none of them
import numpy as np, ssl4eo_zarr as sz
ds = sz.open_dataset(sys.argv[1], split="val")
local = sz.open_dataset(sys.argv[2], split="val")
assert (ds["S2L2A"].values == local["S2L2A"].values).all()
assert sz.storage.exists(sys.argv[1] + "/splits/ssl4eos12_val.txt")
try:
    sz.open_dataset("s3://bucket/val/S2L2A/ssl4eos12_val_seasonal_data_000001.zarr.zip")
except ImportError as exc:
    print("IMPORT-ERROR", exc)
print("OK")
"""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_https_works_with_the_base_install(root, certificate):
    """A whole split over HTTPS (layout probing, split list, archives) in a process where aiohttp, requests,
    s3fs and huggingface_hub cannot be imported; a protocol that needs one names the extra to install."""
    with RangeHTTPServer(root, tls=certificate) as server:
        assert server.url.startswith("https://")
        env = {**os.environ, "SSL_CERT_FILE": certificate[0]}
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(_BASE_INSTALL), server.url, root],
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "OK" in out.stdout
        assert "IMPORT-ERROR" in out.stdout and "ssl4eo-zarr[remote]" in out.stdout, out.stdout
        assert server.requests > 0


@pytest.mark.parametrize("ranges", [True, False])
def test_a_streamed_file_is_one_request_front_to_back(tmp_path, ranges):
    """A shard streamed for training: one open-ended GET, read on; short skips read through, a seek back or
    far ahead starts one new response; a host that ignores Range still gives the right bytes."""
    from ssl4eo_zarr.shardfile import open_binary

    data = os.urandom(3 << 20) + bytes(range(256)) * 4096
    (tmp_path / "s.tar").write_bytes(data)
    with RangeHTTPServer(str(tmp_path), ranges=ranges) as server:
        fh = open_binary(f"{server.url}/s.tar", sequential=True)
        got = bytearray()
        while chunk := fh.read(70_000):
            got += chunk
        assert bytes(got) == data and server.requests == 1
        server.reset_counts()
        fh.seek(1000)
        assert fh.read(10) == data[1000:1010] and server.requests == 1, "a seek back: one new response"
        fh.seek(1000 + (2 << 20))
        assert fh.read(10) == data[1000 + (2 << 20): 1010 + (2 << 20)] and server.requests == 1, "read through"
        assert fh.seek(0, 2) == len(data)
        fh.close()


@pytest.mark.parametrize("ranges", [True, False])
def test_a_file_opened_with_its_front_reads_it_in_the_opening_request(tmp_path, ranges):
    """A shard read by parts opens with one request for its size and first bytes (not a HEAD and then a read);
    reads inside the front cost none, a read past it one; a file shorter than the front, an empty file and a
    host that ignores Range open right."""
    from ssl4eo_zarr.shardfile import open_binary

    data = os.urandom(300_000)
    (tmp_path / "s.tar").write_bytes(data)
    (tmp_path / "short.tar").write_bytes(data[:1000])
    (tmp_path / "empty.tar").write_bytes(b"")
    with RangeHTTPServer(str(tmp_path), ranges=ranges) as server:
        fh = open_binary(f"{server.url}/s.tar", front=100_000)
        assert fh.seek(0, 2) == len(data) and server.requests == 1
        fh.seek(512)
        assert fh.read(50_000) == data[512:50_512] and fh.read(49_488) == data[50_512:100_000]
        assert server.requests == 1, "inside the front: no request"
        if ranges:
            fh.seek(150_000)
            assert fh.read(10) == data[150_000:150_010] and server.requests == 2
            fh.seek(0)
            assert fh.read(10) == data[:10] and server.requests == 3, "once read past, the front is let go"
        fh.close()
        with open_binary(f"{server.url}/short.tar", front=100_000) as fh:
            assert fh.seek(0, 2) == 1000 and fh.seek(0) == 0 and fh.read(2000) == data[:1000]
        with open_binary(f"{server.url}/empty.tar", front=100_000) as fh:
            assert fh.seek(0, 2) == 0 and fh.seek(0) == 0 and fh.read(10) == b""


def test_a_stream_cut_off_resumes_where_it_was(tmp_path):
    from ssl4eo_zarr.shardfile import open_binary

    data = os.urandom(6 << 20)
    (tmp_path / "s.tar").write_bytes(data)
    with RangeHTTPServer(str(tmp_path), drop_every=1) as server:  # every response cut off after half its body
        fh = open_binary(f"{server.url}/s.tar", sequential=True, retries=8, backoff=0.01)
        got = bytearray()
        while len(got) < 5 << 20:
            got += fh.read(1 << 20)
        assert bytes(got) == data[: len(got)] and server.drops == 3, server.drops  # from 0, 3 MB, 4.5 MB


def test_credentials_never_go_from_https_down_to_http():
    same = http._same_host
    assert same("https://h.org/a", "https://h.org/b") and same("http://h.org/a", "https://h.org/b")
    assert not same("https://h.org:8443/a", "http://h.org:8443/b"), "a downgrade on the same host and port"
    assert not same("https://h.org/a", "http://h.org/b") and not same("https://h.org/a", "https://cdn.org/b")
    assert not same("http://h.org:8080/a", "http://h.org:9090/b")


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/file", "file:///etc/passwd"])
def test_a_redirect_to_another_protocol_is_refused_at_once(root, location):
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        server.answer_next((302, {"Location": location}))
        with pytest.raises(http.RedirectError, match="not HTTP"):
            retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.01)
        assert server.requests == 1


def test_a_redirect_loop_is_final_not_retried(root):
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as server:
        server.answer_next(*[(302, {"Location": "/loop"})] * 20)
        began = time.monotonic()
        with pytest.raises(http.RedirectError, match="loop"):
            retry_module.retry(http.head_size, f"{server.url}/{_rel(root, path)}", backoff=0.2)
        assert server.requests == 2 and time.monotonic() - began < 2


def test_a_signed_cdn_url_is_not_printed_in_errors(root):
    path = chunk_path(root, "S2RGB", 1)
    with RangeHTTPServer(root) as hub:
        hub.answer_next((302, {"Location": "http://127.0.0.1:1/blob?X-Amz-Signature=topsecret"}))
        with pytest.raises(OSError) as info:
            http.head_size(f"{hub.url}/{_rel(root, path)}")
        assert "topsecret" not in str(info.value) and "127.0.0.1:1/blob" in str(info.value)


def test_remembered_redirects_are_bounded_and_kept_per_credentials():
    table = http._Redirects()
    for k in range(http._Redirects.SIZE + 100):
        table.put(f"https://hub/{k}", {}, f"https://cdn/{k}")
    assert len(table) == http._Redirects.SIZE and table.get("https://hub/0", {}) == "https://hub/0"
    table.put("https://hub/x", {"Authorization": "Bearer a"}, "https://cdn/for-a")
    assert table.get("https://hub/x", {"Authorization": "Bearer b"}) == "https://hub/x", "another token asks again"
    assert table.get("https://hub/x", {"Authorization": "Bearer a"}) == "https://cdn/for-a"


class _ForwardProxy:
    """A forward HTTP proxy on 127.0.0.1: takes absolute-form requests, sends them on to 127.0.0.1 at the
    URL's port whatever its host name (``data.invalid`` resolves nowhere: only the proxy can reach it)."""

    def __init__(self):
        import http.client as hc
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import urlsplit

        from ssl4eo_zarr.testing import Served

        proxy = self
        self.seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                proxy.seen.append(self.path)
                parts = urlsplit(self.path)
                conn = hc.HTTPConnection("127.0.0.1", parts.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = _forward

        self.served = Served(Handler)
        self.url = self.served.url

    def close(self):
        self.served.close()


def test_the_environments_proxy_is_used_and_no_proxy_honoured(root, monkeypatch):
    path = chunk_path(root, "S2RGB", 1)
    proxy = _ForwardProxy()
    try:
        with RangeHTTPServer(root) as server:
            url = f"http://data.invalid:{server.port}/{_rel(root, path)}"
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            with open(path, "rb") as f:
                want = f.read()
            assert http.read_bytes(url) == want
            assert proxy.seen and proxy.seen[0].startswith("http://data.invalid:")
            got = sz.open_dataset(url).load()
            xr.testing.assert_identical(got, sz.open_dataset(path).load())
            monkeypatch.setenv("NO_PROXY", "data.invalid")
            with pytest.raises(OSError):
                http.head_size(url)  # straight to a host that does not resolve
    finally:
        proxy.close()


def test_retry_after_in_other_scripts_digits_is_no_error():
    assert retry_module.parse_retry_after("\u00b2") is None  # superscript two: str.isdigit() says True
    assert retry_module.parse_retry_after("\u0663") is None  # Arabic-Indic three


def test_rate_limit_waits_go_on_past_the_retry_count_within_a_wait_budget(root, caplog):
    """A hub rations requests in windows of minutes: answers with Retry-After are waited for (a log line each)
    beyond ``retries``, until the wait budget is spent; then the error is raised."""
    import logging

    path = chunk_path(root, "S2RGB", 1)
    url = None
    with RangeHTTPServer(root) as server:
        url = f"{server.url}/{_rel(root, path)}"
        server.answer_next(*[(429, {"Retry-After": "0"})] * 6)
        with caplog.at_level(logging.WARNING, logger="ssl4eo_zarr"):
            size = retry_module.retry(http.head_size, url, retries=2, backoff=0.01)
        assert size == os.path.getsize(path) and server.requests == 7
        assert sum("waiting" in r.getMessage() for r in caplog.records) == 6
        server.answer_next(*[(503, {"Retry-After": "1"})] * 3)
        with pytest.raises(http.HTTPStatusError, match="503"):
            retry_module.retry(http.head_size, url, retries=5, backoff=0.01, wait_budget=1.5)
        assert server.requests == 7 + 2


def test_hub_errors_carry_their_status_and_retry_after(root):
    """huggingface_hub raises ``HfHubHTTPError`` with the status in ``.response.status_code``: a 404 is final,
    a 429's Retry-After is honoured, through the hub's own client against a real local hub."""
    hf = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import HfHubHTTPError

    with RangeHTTPServer(root, hub_repo="org/SSL4EO-S12-v1.1") as hub:
        api = hf.HfApi(endpoint=hub.url, token=False)
        hub.answer_next((418, {}))
        with pytest.raises(HfHubHTTPError) as info:
            retry_module.retry(api.dataset_info, "org/SSL4EO-S12-v1.1", backoff=0.01)
        assert retry_module.http_status(info.value) == 418 and not retry_module.is_transient(info.value)
        assert hub.requests == 1, "a final answer is not retried"
        hub.answer_next((429, {"Retry-After": "1"}))
        began = time.monotonic()
        info = retry_module.retry(api.dataset_info, "org/SSL4EO-S12-v1.1", retries=1, backoff=0.01)
        assert info.id == "org/SSL4EO-S12-v1.1" and time.monotonic() - began >= 0.95


def test_a_stream_whose_first_response_is_bounded_reads_on_in_a_second(tmp_path):
    """``first_end``: the first response asks for the bytes known to be wanted soon (a first batch's members) and
    is read to its end, the connection kept; reading on asks for the rest in one open-ended response, and a skip
    past the first response's end starts there."""
    data = os.urandom(3 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    with RangeHTTPServer(str(tmp_path)) as server:
        url = f"{server.url}/f.bin"
        f = http.HTTPStreamFile(url, first_end=1 << 20)
        got, buf = bytearray(), bytearray(300_000)
        while n := f.readinto(buf):  # as a BufferedReader reads it (read() would ask the size first)
            got += buf[:n]
        f.close()
        assert bytes(got) == data
        assert [s[3].get("Range") for s in server.seen] == [f"bytes=0-{(1 << 20) - 1}", f"bytes={1 << 20}-"]
        server.reset_counts()
        server.seen.clear()
        f = http.HTTPStreamFile(url, first_end=1000)
        buf = bytearray(10)
        assert f.readinto(buf) == 10 and buf == data[:10]
        f.seek(2000)  # past the first response: a new one from there, not a read through the old one
        assert f.readinto(buf) == 10 and buf == data[2000:2010]
        f.close()
        assert [s[3].get("Range") for s in server.seen] == ["bytes=0-999", "bytes=2000-"]
