"""The edge (issue 27, item 4): Debian's nginx on the shipped deployment/nginx/fhe-server.conf in
front of a real fhe-server with API tokens (clear iris only). The proxy asks the API about the
token before it reads a body, so an upload with a bad token is refused unread; evaluation keys
stream through; TLS in nginx works when turned on; behind a trusted terminator, limits and logs
key on the client's forwarded address."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.local_server import free_port
from tests.conftest import IRIS, SKLEARN_FIXTURES
from tests.support.nginx import TEST_TIMEOUT, Edit, nginx_t, replace, running_nginx
from tests.support.server_process import ServerProcess

ALICE, BOB = "alice-edge-token-0123", "bob-edge-token-4567"
TOKENS = {"alice": ALICE, "bob": "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()}
MiB = 1 << 20
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def iris_body(rows: int) -> dict:
    return {"inputs": {"data": {c: [5.1] * rows for c in COLUMNS}}}


def requests_of(server: ServerProcess, route: str, code: str | None = None) -> float:
    """Requests the API answered on `route` (a template), from its own /metrics."""
    page = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name == "fhe_requests_total"
        and sample.labels["route"] == route
        and code in (None, sample.labels["code"])
    )


@dataclass
class Proxy:
    """nginx on the rendered shipped file: its URL and its directory (logs, temporary files)."""

    url: str
    directory: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def buffered_bodies(self) -> list[str]:
        """The request bodies nginx holds in temporary files now: nginx unlinks each such file
        as it creates it, so they are found among its processes' open files."""
        master = int((self.directory / "nginx.pid").read_text())
        temp = str(self.directory / "client_body")
        found = []
        for pid in [master, *(c.pid for c in psutil.Process(master).children())]:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(temp):
                        found.append(target)
        return found

    def buffered(self, marker: str) -> bool:
        """Whether nginx logged writing a body of a request with `marker` in its URL to disk."""
        log = (self.directory / "error.log").read_text(errors="replace")
        return any(
            "buffered to a temporary file" in line and marker in line for line in log.splitlines()
        )


@dataclass
class Answer:
    """What nginx sent back on a raw connection, and how long after the request's headers."""

    text: str
    seconds: float

    @property
    def status(self) -> int:
        return int(self.text.split(" ", 2)[1]) if self.text.startswith("HTTP/") else 0

    def header(self, name: str) -> str | None:
        found = re.search(rf"^{name}: (.*)\r$", self.text, re.M | re.I)
        return found.group(1) if found else None

    def json(self) -> dict:
        return json.loads(self.text.split("\r\n\r\n", 1)[1])


def raw_request(
    port: int,
    head: str,
    body: bytes = b"",
    wait: float = 5.0,
    source: str | None = None,
) -> Answer:
    """Send a request's `head` (then `body`, maybe less than it declares) on a new connection and
    read one whole answer, or what came within `wait` seconds."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=wait, source_address=(source, 0) if source else None
    ) as sock:
        started = time.monotonic()
        sock.sendall(head.encode())
        if body:
            # nginx may answer and close while the body is going out.
            with contextlib.suppress(OSError):
                sock.sendall(body)
        received = b""
        sock.settimeout(0.2)
        while time.monotonic() - started < wait:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
            final = re.sub(rb"^(HTTP/1\.1 1\d\d [^\r]*\r\n\r\n)+", b"", received)
            if b"\r\n\r\n" in final:
                headers, rest = final.split(b"\r\n\r\n", 1)
                length = re.search(rb"^content-length: (\d+)\r?$", headers, re.M | re.I)
                if length and len(rest) >= int(length.group(1)):
                    break
        return Answer(received.decode(errors="replace"), time.monotonic() - started)


def final_answer(answer: Answer) -> Answer:
    """`answer` without the interim (1xx) answers before it."""
    text = re.sub(r"^(HTTP/1\.1 1\d\d [^\r]*\r\n\r\n)+", "", answer.text)
    return Answer(text, answer.seconds)


def post_head(path: str, length: int, authorization: str | None, *extra: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}")
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return "\r\n".join([*lines, *extra, "", ""])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real fhe-server with two API tokens (Bob's configured by its sha256), clear iris only."""
    root = tmp_path_factory.mktemp("edge")
    shutil.copytree(SKLEARN_FIXTURES / IRIS, root / "models" / "iris")
    env = {"FHE_SERVER_TOKENS": json.dumps(TOKENS)}
    server = ServerProcess(root / "models", root / "data", env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(api: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The shipped nginx file, unchanged but for addresses and timeouts, in front of `api`."""
    directory = tmp_path_factory.mktemp("edge-nginx")
    demo = f"127.0.0.1:{free_port()}"
    with running_nginx(directory, f"127.0.0.1:{api.port}", demo) as url:
        yield Proxy(url, directory)


def test_the_token_check_route_answers_204_or_401(api: ServerProcess, tmp_path: Path) -> None:
    """GET /v1/auth, the route nginx asks: 204 for a known token (stored plain or as sha256:),
    the API's JSON 401 otherwise, and 204 to anyone in development mode."""
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {ALICE}"}):
        refused = httpx.get(f"{api.url}/v1/auth", headers=headers, timeout=10)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.json()["code"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
    for token in (ALICE, BOB):
        accepted = httpx.get(f"{api.url}/v1/auth", headers=bearer(token), timeout=10)
        assert accepted.status_code == 204, accepted.text
        assert accepted.content == b""
    assert requests_of(api, "/v1/auth", "204") >= 2
    dev = ServerProcess(tmp_path / "models", tmp_path / "data").start()
    try:
        assert httpx.get(f"{dev.url}/v1/auth", timeout=10).status_code == 204
    finally:
        dev.stop()


BODY_ROUTES = [
    ("/v1/keys", 400 * MiB),
    ("/v1/models/iris/predict", 15 * MiB),
    ("/v1/models/iris/jobs", 15 * MiB),
    ("/", 15 * MiB),
    ("/models/iris", 15 * MiB),
]
"""Every route that takes a body, with a declared size under its proxy limit."""


def test_an_upload_with_a_bad_token_is_refused_before_its_body_is_read(
    api: ServerProcess, proxy: Proxy
) -> None:
    """A large upload whose token is missing or unknown gets the JSON 401 at once, long before
    the body timeout, from only its headers and 2 MiB: nginx stored nothing of it and the API
    saw only the token check, no request on the route."""
    assert not proxy.buffered_bodies()
    checks_before = requests_of(api, "/v1/auth", "401")
    bad = [None, "Bearer wrong-token", f"Basic {ALICE}"]
    for number, (path, size) in enumerate(BODY_ROUTES):
        for authorization in bad:
            marker = f"unread-{number}"
            head = post_head(f"{path}?{marker}", size, authorization)
            answer = raw_request(proxy.port, head, b"x" * (2 * MiB))
            # Were the body read first, nginx would wait for it until the body timeout.
            assert answer.status == 401, (path, authorization, answer.text)
            assert answer.seconds < TEST_TIMEOUT / 2, (path, answer.seconds)
            assert answer.json()["code"] == "unauthorized"
            assert answer.header("content-type") == "application/json"
            assert answer.header("www-authenticate") == "Bearer"
            assert not proxy.buffered_bodies(), path
            assert not proxy.buffered(marker), path
    # A client that waits for `100 Continue` before it sends gets the 401 without sending.
    # (nginx 1.22 says `100 Continue` first, to discard the body it will not keep.)
    expecting = post_head("/v1/keys?unread-expect", 400 * MiB, None, "Expect: 100-continue")
    answer = final_answer(raw_request(proxy.port, expecting))
    assert answer.status == 401 and answer.seconds < TEST_TIMEOUT / 2, answer
    log = api.log.read_text(errors="replace")
    assert "unread-" not in log, "the API saw a request whose token was refused"
    for route in ("/v1/keys", "/v1/models/{name}/predict", "/v1/models/{name}/jobs", "/"):
        assert requests_of(api, route) == 0, route
    assert requests_of(api, "/v1/auth", "401") - checks_before == len(BODY_ROUTES) * 3 + 1


def test_with_a_good_token_nginx_reads_the_body(api: ServerProcess, proxy: Proxy) -> None:
    """The same stalled upload with a valid token: past the token check, nginx buffers a
    prediction's body to a file (so the check above could see one), but streams keys to the API
    unbuffered; after the body timeout the API has answered neither."""
    head = post_head("/v1/models/iris/predict?stalled-good", 15 * MiB, f"Bearer {ALICE}")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"x" * (2 * MiB))
        deadline = time.monotonic() + TEST_TIMEOUT / 2
        while not proxy.buffered_bodies():
            assert time.monotonic() < deadline, "nginx did not buffer the body of a good token"
            time.sleep(0.05)
        assert proxy.buffered("stalled-good")
    head = post_head("/v1/keys?stalled-keys", 400 * MiB, f"Bearer {ALICE}")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"x" * (2 * MiB))
        time.sleep(TEST_TIMEOUT / 2)
        assert not proxy.buffered_bodies(), "nginx buffered a key upload"
        assert not proxy.buffered("stalled-keys")
    assert "stalled-good" not in api.log.read_text(errors="replace")


@pytest.mark.fhe
def test_good_tokens_pass_with_their_bodies(api: ServerProcess, proxy: Proxy) -> None:
    url = proxy.url
    rows = 60_000  # about 1.4 MB: past client_body_buffer_size, so nginx buffers it to a file
    for token in (ALICE, BOB):
        response = httpx.post(
            f"{url}/v1/models/iris/predict?good-token",
            json=iris_body(rows),
            headers=bearer(token),
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["output"]) == rows
    assert "good-token" in api.log.read_text(errors="replace")

    # Keys stream through, chunked too: the API itself reads and judges them.
    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"not keys" * (MiB // 8)

    keys = httpx.post(
        f"{url}/v1/keys?streamed-keys", content=chunks(), headers=bearer(ALICE), timeout=60
    )
    assert keys.status_code == 400, keys.text
    assert keys.json()["code"] == "malformed_keys"
    assert "streamed-keys" in api.log.read_text(errors="replace")

    # Tokens are asked for wherever the API asks for them, and only there.
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 200, path
    assert httpx.get(f"{url}/readyz", timeout=10).status_code in (200, 503)
    refused = httpx.get(f"{url}/v1/models", timeout=10)
    direct = httpx.get(f"{api.url}/v1/models", timeout=10)
    assert refused.status_code == direct.status_code == 401
    assert refused.json().keys() == direct.json().keys()
    assert refused.json()["code"] == direct.json()["code"] == "unauthorized"
    assert refused.headers["www-authenticate"] == direct.headers["www-authenticate"]
    assert httpx.get(f"{url}/v1/models", headers=bearer(BOB), timeout=10).status_code == 200
    hidden = httpx.get(f"{url}/metrics", timeout=10)
    assert hidden.status_code == 404 and hidden.json()["code"] == "http_404"
    # Public routes take no body, so no unauthenticated body is buffered there either.
    probe = httpx.post(f"{url}/healthz", content=b"x" * 4096, timeout=10)
    assert probe.status_code == 413 and probe.json()["code"] == "too_large"

    # A browser's CORS preflight carries no token: the API answers it.
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    allowed = httpx.options(f"{url}/v1/models/iris/predict", headers=preflight, timeout=10)
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"]
    # An OPTIONS with a body is no preflight: its token is checked.
    with_body = httpx.request(
        "OPTIONS", f"{url}/v1/models/iris/predict", content=b"x" * 10, timeout=10
    )
    assert with_body.status_code == 401
    # Nor is an OPTIONS without the preflight's Access-Control-Request-Method.
    bare = httpx.options(f"{url}/v1/models/iris/predict", timeout=10)
    assert bare.status_code == 401


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as a TLS Secret's tls.crt and tls.key."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=fhe"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def with_tls(cert: Path, key: Path, api_port: int, demo_port: int) -> Edit:
    """The shipped TLS lines uncommented, on test ports and with a test certificate."""

    def edit(text: str) -> str:
        text = replace(text, "# listen 8443 ssl;", f"listen 127.0.0.1:{api_port} ssl;", 1)
        text = replace(text, "# listen 7443 ssl;", f"listen 127.0.0.1:{demo_port} ssl;", 1)
        text = replace(
            text, "# ssl_certificate /etc/nginx/tls/tls.crt;", f"ssl_certificate {cert};", 2
        )
        text = replace(
            text, "# ssl_certificate_key /etc/nginx/tls/tls.key;", f"ssl_certificate_key {key};", 2
        )
        text = re.sub(
            r"^( +)# ((ssl_\w+|add_header Strict-Transport-Security) [^\n]*;)$",
            r"\1\2",
            text,
            flags=re.M,
        )
        assert "# ssl_" not in text and "# add_header" not in text
        return text

    return edit


def tls_context(cert: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client trusting only `cert`, at exactly TLS `version` if given."""
    context = ssl.create_default_context(cafile=str(cert))
    if version is not None:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets this client offer TLS 1.0 and 1.1
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_in_nginx_when_turned_on(api: ServerProcess, tmp_path: Path) -> None:
    """The shipped TLS lines, uncommented with a self-signed certificate: https on the API's and
    the demo's TLS ports, TLS 1.2 and 1.3 only, HSTS on https answers only, the token still
    checked first; and `nginx -t` passes on it."""
    cert, key = self_signed(tmp_path)
    https_port, demo_https_port = free_port(), free_port()
    edit = with_tls(cert, key, https_port, demo_https_port)
    demo = f"127.0.0.1:{free_port()}"
    with running_nginx(tmp_path / "nginx", f"127.0.0.1:{api.port}", demo, edit) as url:
        checked = nginx_t(tmp_path / "nginx")
        assert checked.returncode == 0 and "[warn]" not in checked.stderr, checked.stderr
        https = f"https://127.0.0.1:{https_port}"
        with httpx.Client(verify=tls_context(cert), timeout=30) as client:
            health = client.get(f"{https}/healthz")
            assert health.status_code == 200, health.text
            assert health.headers["strict-transport-security"] == "max-age=31536000"
            refused = client.post(f"{https}/v1/models/iris/predict", json=iris_body(1))
            assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
            assert "strict-transport-security" in refused.headers
            answer = client.post(
                f"{https}/v1/models/iris/predict?over-tls", json=iris_body(3), headers=bearer(ALICE)
            )
            assert answer.status_code == 200, answer.text
            # The demo's server has TLS too (its upstream is not running here).
            assert client.get(f"https://127.0.0.1:{demo_https_port}/").status_code == 502
        # Plain HTTP still answers, without HSTS (browsers ignore it there anyway).
        plain = httpx.get(f"{url}/healthz", timeout=10)
        assert plain.status_code == 200 and "strict-transport-security" not in plain.headers
        for version, accepted in (
            (ssl.TLSVersion.TLSv1_3, True),
            (ssl.TLSVersion.TLSv1_2, True),
            (ssl.TLSVersion.TLSv1_1, False),
        ):
            context = tls_context(cert, version)
            try:
                with (
                    socket.create_connection(("127.0.0.1", https_port), timeout=10) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
                ):
                    assert tls.version() == version.name.replace("v1_", "v1."), tls.version()
                    assert accepted, f"nginx accepted {version.name}"
            except ssl.SSLError as error:
                assert not accepted, error
                # Refused by nginx (its alert), not by this client.
                assert "ALERT_PROTOCOL_VERSION" in str(error), error
    assert "over-tls" in api.log.read_text(errors="replace")


def one_connection_per_address(trusted: str | None) -> Edit:
    """A per-address limit of 1 connection (to see it bite), `trusted` as the terminator."""

    def edit(text: str) -> str:
        text = replace(text, "limit_conn fhe_per_address 64;", "limit_conn fhe_per_address 1;", 2)
        if trusted is not None:
            text = replace(
                text, "# set_real_ip_from 10.0.0.0/8;", f"set_real_ip_from {trusted};", 1
            )
        return text

    return edit


def health_status(port: int, forwarded_for: str | None, source: str = "127.0.0.1") -> int:
    """The status of GET /healthz from `source`, saying it forwards for `forwarded_for`."""
    head = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if forwarded_for is not None:
        head += f"X-Forwarded-For: {forwarded_for}\r\n"
    return raw_request(port, head + "\r\n", source=source).status


@contextlib.contextmanager
def connection_held(port: int, forwarded_for: str) -> Iterator[None]:
    """A prediction whose body stalls, holding its connection in nginx (for the body timeout)."""
    head = post_head("/v1/models/iris/predict", 100, f"Bearer {ALICE}")
    head = head.replace("\r\n\r\n", f"\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + b'{"inputs"')
        time.sleep(0.2)  # nginx has read the headers and counts the connection
        yield


def test_behind_a_trusted_terminator_limits_key_on_the_forwarded_address(
    api: ServerProcess, tmp_path: Path
) -> None:
    """With 127.0.0.1 as the trusted terminator (set_real_ip_from), each forwarded client has
    its own per-address limit, a client cannot escape it by writing X-Forwarded-For entries of
    its own, an untrusted peer's X-Forwarded-For is ignored, and nginx and the API log the
    client's address. Without it (as shipped), all clients of the terminator share one limit."""
    upstream, demo = f"127.0.0.1:{api.port}", f"127.0.0.1:{free_port()}"
    trusted = one_connection_per_address("127.0.0.1")
    with running_nginx(tmp_path / "trusted", upstream, demo, trusted) as url:
        port = int(url.rsplit(":", 1)[1])
        with connection_held(port, "198.51.100.1"):
            assert health_status(port, "198.51.100.1") == 429
            assert health_status(port, "203.0.113.9, 198.51.100.1") == 429
            assert health_status(port, "198.51.100.2") == 200
            assert health_status(port, None) == 200  # the terminator's own address
            assert health_status(port, "198.51.100.1", source="127.0.0.2") == 200
        assert health_status(port, "198.51.100.1") == 200  # released
    access = (tmp_path / "trusted" / "access.log").read_text()
    addresses = [line.split(" ", 1)[0] for line in access.splitlines()]
    assert {"198.51.100.1", "198.51.100.2", "127.0.0.1", "127.0.0.2"} <= set(addresses)
    assert "203.0.113.9" not in addresses
    # nginx passes the client's address on; the API (trusting its proxy) logs it.
    assert '198.51.100.2:0 - "GET /healthz' in api.log.read_text(errors="replace")

    as_shipped = one_connection_per_address(None)
    with running_nginx(tmp_path / "shipped", upstream, demo, as_shipped) as url:
        port = int(url.rsplit(":", 1)[1])
        with connection_held(port, "198.51.100.1"):
            assert health_status(port, "198.51.100.2") == 429
    access = (tmp_path / "shipped" / "access.log").read_text()
    assert {line.split(" ", 1)[0] for line in access.splitlines()} == {"127.0.0.1"}
