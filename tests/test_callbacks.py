"""Job callbacks on real servers: refused targets, the allow-list, signatures, no redirects, and job
URLs that come from the configuration rather than the caller's Host header.

Only loopback addresses receive traffic here; public targets are checked on IP literals, which the
classifier judges without resolving or connecting.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from client.webhook import SIGNATURE_HEADER, parse_signature, sign_callback, verify_callback
from server.jobs.callbacks import (
    SIGNING_KEY_FILE,
    AllowList,
    CallbackRefused,
    CallbackSender,
    Delivery,
    address_refusal,
    callback_secret,
    check_callback_url,
    parse_callback_url,
)
from server.storage.job import Job, new_job_id
from server.storage.jobs import SqliteJobStore
from tests.conftest import IRIS, SKLEARN_FIXTURES
from tests.support.server_process import ServerProcess

TOKENS = {"alice": "alice-token", "bob": "bob-token"}
PUBLIC_URL = "https://fhe.example.com/api"
SIGNING_KEY = "a-configured-signing-key"


def iris_body() -> dict:
    """The iris fixture's sample rows as a clear job's body."""
    return {"inputs": json.loads((SKLEARN_FIXTURES / IRIS / "sample.json").read_text())["inputs"]}


def bearer(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[owner]}"}


@dataclass
class Received:
    """One request a receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real HTTP server on a loopback address that records every POST.

    `/redirect...` answers 302 to `/redirected`; everything else answers 204.
    """

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(Received(self.path, dict(self.headers), body))
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "/redirected")
                else:
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.http = Server((host, 0), Handler)
        if tls is not None:
            self.http.socket = tls.wrap_socket(self.http.socket, server_side=True)
        self.port = self.http.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.base = f"{'https' if tls else 'http'}://{shown}:{self.port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def iris_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with only the clear iris model: no FHE training needed."""
    root = tmp_path_factory.mktemp("iris-models")
    shutil.copytree(SKLEARN_FIXTURES / IRIS, root / "iris")
    return root


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.close()


@pytest.fixture(scope="module")
def receiver6() -> Iterator[Receiver]:
    served = Receiver("::1")
    yield served
    served.close()


@pytest.fixture(scope="module")
def plain(iris_only: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Development mode, no allow-list, a configured public URL and signing key."""
    env = {
        "FHE_SERVER_WORKERS": "1",
        "FHE_SERVER_PUBLIC_URL": PUBLIC_URL,
        "FHE_SERVER_CALLBACK_SIGNING_KEY": SIGNING_KEY,
    }
    process = ServerProcess(iris_only, tmp_path_factory.mktemp("plain") / "data", env=env).start()
    yield process
    process.stop()


SEEDED = {
    "bad-port": "http://127.0.0.1:99999/seeded",
    "not-a-port": "http://127.0.0.1:abc/seeded",
    "malformed": "http://[::1/seeded",
    "loopback-v6": "http://[::1]:{port6}/seeded",
    "allowed": "http://127.0.0.1:{port}/seeded-ok",
}
"""Callback URLs stored before the checks existed: the notifier meets them at start-up."""


@pytest.fixture(scope="module")
def seeded_jobs() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def guarded(
    iris_only: Path,
    tmp_path_factory: pytest.TempPathFactory,
    receiver: Receiver,
    receiver6: Receiver,
    seeded_jobs: dict[str, str],
) -> Iterator[ServerProcess]:
    """Tokens, an allow-list naming 127.0.0.1/32 and hooks.localhost, and jobs whose stored
    callback URLs the notifier must check again."""
    data = tmp_path_factory.mktemp("guarded") / "data"
    store = SqliteJobStore(data / "jobs")
    for name, url in SEEDED.items():
        job = Job(new_job_id(), "iris", "clear", "queued", time.time(), "http://old.example/")
        job.owner, job.callback_url = "alice", url.format(port=receiver.port, port6=receiver6.port)
        store.add(job, b"{}")
        store.claim_next()
        store.finish(job.job_id, b"{}", "application/json", None, ttl=600)
        seeded_jobs[name] = job.job_id
    store.close()
    env = {
        "FHE_SERVER_WORKERS": "1",
        "FHE_SERVER_TOKENS": json.dumps(TOKENS),
        "FHE_SERVER_CALLBACK_ALLOW": '["127.0.0.1/32", "hooks.localhost"]',
        "FHE_SERVER_CALLBACK_ATTEMPTS": "2",
        "FHE_SERVER_CALLBACK_BACKOFF_SECONDS": "0.2",
    }
    process = ServerProcess(iris_only, data, env=env).start()
    yield process
    process.stop()


def submit(
    server: ServerProcess, callback: str | None, owner: str | None = None, **headers: str
) -> httpx.Response:
    sent = dict(headers)
    if callback is not None:
        sent["X-Callback-Url"] = callback
    if owner:
        sent.update(bearer(owner))
    return httpx.post(f"{server.url}/v1/models/iris/jobs", json=iris_body(), headers=sent)


def settled(server: ServerProcess, job_id: str, owner: str, attempts: int = 1) -> dict:
    """The job once it is finished and its callback delivered or tried `attempts` times."""
    deadline = time.monotonic() + 30
    status: dict = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=bearer(owner)).json()
        callback = status.get("callback") or {}
        if status["status"] in ("done", "failed") and (
            callback.get("delivered") or callback.get("attempts", 0) >= attempts
        ):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not settle: {status}")


REFUSED_SPELLINGS = [
    "http://127.0.0.1/hook",
    "http://127.0.0.1:{port}/v1/keys",
    "http://[::1]/hook",
    "http://localhost/hook",
    "http://LOCALHOST:{port}/hook",
    "http://localhost./hook",
    "http://hooks.localhost/hook",
    "http://0.0.0.0/hook",
    "http://[::]/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://017700000001/hook",
    "http://0177.0.0.1/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[2002:7f00:1::]/hook",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[fd12:3456::1]/hook",
    "http://224.0.0.1/hook",
    "http://[ff02::1]/hook",
    "http://255.255.255.255/hook",
    "http://240.0.0.1/hook",
    "https://[2001:db8::1]/hook",
]

MALFORMED = [
    "http://[::1/",
    "http://8.8.8.8:99999/hook",
    "http://8.8.8.8:abc/hook",
    "http://8.8.8.8:0/hook",
    "http://user:pw@8.8.8.8/hook",
    "http://user@8.8.8.8/hook",
    "http://@8.8.8.8/hook",
    "ftp://8.8.8.8/hook",
    "/relative/hook",
    "http:///hook",
    "http://exa_mple..com/hook",
    "http://[::1%25eth0/",
    "http://8.8.8.8/" + "a" * 3000,
]


def test_every_spelling_of_a_private_target_is_refused_at_submit(plain: ServerProcess) -> None:
    for spelling in REFUSED_SPELLINGS:
        url = spelling.format(port=plain.port)
        response = submit(plain, url)
        assert response.status_code == 400, (url, response.text)
        assert response.json()["code"] == "callback_not_allowed", (url, response.text)
        assert "FHE_SERVER_CALLBACK_ALLOW" in response.json()["error"]
    assert httpx.get(f"{plain.url}/v1/jobs").json()["jobs"] == []


def test_malformed_callback_urls_are_400_never_500(plain: ServerProcess) -> None:
    for url in MALFORMED:
        response = submit(plain, url)
        assert response.status_code == 400, (url, response.text)
        assert response.json()["code"] == "invalid_callback_url", (url, response.text)
    userinfo = submit(plain, "http://user:pw@8.8.8.8/hook").json()["error"]
    assert "user name or password" in userinfo
    assert httpx.get(f"{plain.url}/v1/jobs").json()["jobs"] == []


def test_job_urls_come_from_the_public_url_not_the_host_header(plain: ServerProcess) -> None:
    response = submit(plain, None, Host="evil.example")
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    expected = f"{PUBLIC_URL}/v1/jobs/{job_id}"
    assert response.json()["status_url"] == expected
    assert response.json()["result_url"] == f"{expected}/result"
    assert response.headers["location"] == expected
    listed = httpx.get(f"{plain.url}/v1/jobs", headers={"Host": "evil.example"}).json()["jobs"]
    assert [job["status_url"] for job in listed] == [expected]
    assert "evil.example" not in json.dumps(listed)


def test_configured_signing_key_gives_the_documented_secret(plain: ServerProcess) -> None:
    answer = httpx.get(f"{plain.url}/v1/callback-secret")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    expected = hmac.new(SIGNING_KEY.encode(), b"", hashlib.sha256).hexdigest()
    assert answer.json()["secret"] == f"whsec_{expected}"
    assert answer.json()["header"] == SIGNATURE_HEADER
    assert answer.json()["algorithm"] == "hmac-sha256"
    assert not (plain.data_dir / SIGNING_KEY_FILE).exists()


def test_allow_list_opens_exactly_what_it_names(guarded: ServerProcess, receiver: Receiver) -> None:
    refused = [
        f"http://[::1]:{receiver.port}/hook",
        f"http://localhost:{receiver.port}/hook",
        f"http://127.0.0.2:{receiver.port}/hook",
        f"http://[::ffff:127.0.0.2]:{receiver.port}/hook",
        f"http://other.localhost:{receiver.port}/hook",
        "http://10.0.0.1/hook",
    ]
    for url in refused:
        response = submit(guarded, url, "alice")
        assert response.status_code == 400, (url, response.text)
        assert response.json()["code"] == "callback_not_allowed", (url, response.text)
    for url in (f"{receiver.base}/opened", f"http://[::ffff:127.0.0.1]:{receiver.port}/mapped"):
        accepted = submit(guarded, url, "alice")
        assert accepted.status_code == 202, (url, accepted.text)
        status = settled(guarded, accepted.json()["job_id"], "alice")
        assert status["callback"]["delivered"] is True, status
    assert len(receiver.at("/opened")) == 1 and len(receiver.at("/mapped")) == 1


def test_named_host_is_delivered_to_the_checked_address_with_its_name(
    guarded: ServerProcess, receiver: Receiver
) -> None:
    """hooks.localhost is in no resolver here: delivery connects to the address the server
    checked, and still presents the name in Host."""
    url = f"http://hooks.localhost:{receiver.port}/named"
    accepted = submit(guarded, url, "alice")
    assert accepted.status_code == 202, accepted.text
    status = settled(guarded, accepted.json()["job_id"], "alice")
    assert status["callback"] == {"url": url, "attempts": 1, "delivered": True, "last_error": None}
    [request] = receiver.at("/named")
    assert request.headers["Host"] == f"hooks.localhost:{receiver.port}"


def test_callbacks_are_signed_per_token_and_verify_with_client_webhook(
    guarded: ServerProcess, receiver: Receiver
) -> None:
    assert httpx.get(f"{guarded.url}/v1/callback-secret").status_code == 401
    alice = httpx.get(f"{guarded.url}/v1/callback-secret", headers=bearer("alice")).json()
    bob = httpx.get(f"{guarded.url}/v1/callback-secret", headers=bearer("bob")).json()
    assert alice["header"] == SIGNATURE_HEADER and alice["secret"] != bob["secret"]
    accepted = submit(guarded, f"{receiver.base}/signed", "alice", Host="evil.example")
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    expected_url = f"http://127.0.0.1:{guarded.port}/v1/jobs/{job_id}"
    assert accepted.json()["status_url"] == expected_url
    assert accepted.headers["location"] == expected_url
    settled(guarded, job_id, "alice")
    [request] = receiver.at("/signed")
    header = request.headers[SIGNATURE_HEADER]
    body = json.loads(request.body)
    assert body["job_id"] == job_id and body["status"] == "done"
    assert body["status_url"] == expected_url and body["result_url"] == f"{expected_url}/result"
    assert b"evil.example" not in request.body
    assert verify_callback(alice["secret"], header, request.body)
    assert not verify_callback(bob["secret"], header, request.body)
    tampered = request.body.replace(b'"done"', b'"failed"')
    assert tampered != request.body and not verify_callback(alice["secret"], header, tampered)
    parsed = parse_signature(header)
    assert parsed is not None and abs(parsed[0] - time.time()) < 60
    assert not verify_callback(alice["secret"], header, request.body, now=parsed[0] + 301)
    old = sign_callback(alice["secret"], request.body, timestamp=int(time.time()) - 3600)
    assert not verify_callback(alice["secret"], old, request.body)


def test_redirects_are_not_followed(guarded: ServerProcess, receiver: Receiver) -> None:
    accepted = submit(guarded, f"{receiver.base}/redirect", "alice")
    assert accepted.status_code == 202, accepted.text
    status = settled(guarded, accepted.json()["job_id"], "alice", attempts=2)
    assert status["callback"]["delivered"] is False
    assert status["callback"]["attempts"] == 2
    assert status["callback"]["last_error"] == "HTTP 302 (redirects are not followed)"
    assert len(receiver.at("/redirect")) == 2
    assert receiver.at("/redirected") == []


def test_stored_urls_are_checked_again_and_bad_ones_fail_alone(
    guarded: ServerProcess, receiver: Receiver, receiver6: Receiver, seeded_jobs: dict[str, str]
) -> None:
    """Jobs stored with URLs the submit checks would refuse: each fails its own callback once,
    without a request, and the notifier goes on to deliver the allowed one."""
    statuses = {name: settled(guarded, job_id, "alice") for name, job_id in seeded_jobs.items()}
    assert statuses["allowed"]["callback"]["delivered"] is True
    assert len(receiver.at("/seeded-ok")) == 1
    for name in ("bad-port", "not-a-port", "malformed", "loopback-v6"):
        callback = statuses[name]["callback"]
        assert callback["delivered"] is False and callback["attempts"] == 1, (name, callback)
    errors = {name: statuses[name]["callback"]["last_error"] for name in statuses}
    assert errors["bad-port"].startswith("invalid_callback_url: ")
    assert errors["not-a-port"].startswith("invalid_callback_url: ")
    assert errors["malformed"].startswith("invalid_callback_url: ")
    assert errors["loopback-v6"].startswith("callback_not_allowed: ::1 is loopback")
    assert receiver6.requests == [] and receiver.at("/seeded") == []
    time.sleep(0.6)
    again = httpx.get(
        f"{guarded.url}/v1/jobs/{seeded_jobs['loopback-v6']}", headers=bearer("alice")
    ).json()
    assert again["callback"]["attempts"] == 1
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200


def test_generated_signing_key_is_private_and_survives_a_restart(guarded: ServerProcess) -> None:
    before = httpx.get(f"{guarded.url}/v1/callback-secret", headers=bearer("alice")).json()
    key_file = guarded.data_dir / SIGNING_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    guarded.stop()
    guarded.start()
    after = httpx.get(f"{guarded.url}/v1/callback-secret", headers=bearer("alice")).json()
    assert after["secret"] == before["secret"]


PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "10.1.2.3",
    "172.31.0.1",
    "192.168.0.1",
    "169.254.169.254",
    "fe80::1",
    "fc00::1",
    "fd00::1",
    "fec0::1",
    "224.0.0.1",
    "239.255.255.250",
    "ff0e::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:0:7f00:1",
    "::127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b:1::1",
    "2002:7f00:1::",
    "2002:a00:1::",
    "2001::1",
    "2001:db8::1",
    "100::1",
    "100.64.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "240.0.0.1",
    "255.255.255.255",
]
REASONS = {
    "127.0.0.1": "loopback",
    "::1": "loopback",
    "::ffff:127.0.0.1": "loopback",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "10.1.2.3": "private",
    "fd00::1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "fec0::1": "site-local",
    "224.0.0.1": "multicast",
    "ff0e::1": "multicast",
    "2002:7f00:1::": "6to4 of a loopback address",
    "2002:a00:1::": "6to4 of a private address",
    "100.64.0.1": "shared address space",
}


@pytest.mark.fast
def test_public_unicast_addresses_pass_the_classifier() -> None:
    for text in PUBLIC:
        assert address_refusal(ipaddress.ip_address(text)) is None, text


@pytest.mark.fast
def test_every_non_public_address_is_refused() -> None:
    for text in NOT_PUBLIC:
        assert address_refusal(ipaddress.ip_address(text)) is not None, text
    for text, reason in REASONS.items():
        assert address_refusal(ipaddress.ip_address(text)) == reason, text


def check(url: str, allow: AllowList | None = None) -> list[str]:
    """The addresses a URL would be delivered to (no connection is made)."""
    _, addresses = asyncio.run(check_callback_url(url, allow or AllowList()))
    return [str(address) for address in addresses]


def refused_code(url: str, allow: AllowList | None = None) -> str:
    with pytest.raises(CallbackRefused) as refused:
        check(url, allow)
    return refused.value.code


@pytest.mark.fast
def test_public_literals_are_accepted_and_pinned() -> None:
    assert check("https://8.8.8.8/hook") == ["8.8.8.8"]
    assert check("http://[2606:4700:4700::1111]:8443/h") == ["2606:4700:4700::1111"]
    parsed = parse_callback_url("https://Hooks.Example.COM:8443/a%20b/é?x=ü&y")
    assert parsed.host == "hooks.example.com" and parsed.port == 8443
    assert parsed.host_header == "hooks.example.com:8443"
    pinned = parsed.pinned(ipaddress.ip_address("203.0.113.9"))
    assert str(pinned) == "https://203.0.113.9:8443/a%20b/%C3%A9?x=%C3%BC&y"
    v6 = parse_callback_url("http://[2606:4700::1]/")
    assert v6.host_header == "[2606:4700::1]" and v6.port == 80
    assert str(v6.pinned(v6.literal)) == "http://[2606:4700::1]/"


@pytest.mark.fast
def test_allow_list_entries_match_names_or_ranges_only() -> None:
    allow = AllowList.parse(["127.0.0.1/32", "Hooks.Internal.", "::1", "10.0.0.0/8"])
    assert allow.hosts == frozenset({"hooks.internal"})
    assert check("http://127.0.0.1:9/", allow) == ["127.0.0.1"]
    assert check("http://[::1]:9/", allow) == ["::1"]
    assert check("http://10.9.8.7/", allow) == ["10.9.8.7"]
    assert check("http://[::ffff:10.9.8.7]/", allow) == ["::ffff:a09:807"]
    assert refused_code("http://127.0.0.2/", allow) == "callback_not_allowed"
    assert refused_code("http://192.168.0.1/", allow) == "callback_not_allowed"
    assert check("http://localhost:9/", allow) == ["127.0.0.1", "::1"]
    only_v4 = AllowList.parse(["127.0.0.0/8"])
    assert refused_code("http://localhost:9/", only_v4) == "callback_not_allowed"
    named = AllowList.parse(["localhost"])
    assert check("http://localhost./", named) == ["127.0.0.1", "::1"]
    assert refused_code("http://127.0.0.1/", named) == "callback_not_allowed"
    for bad in ("*.example.com", "10.0.0.0/33", "", "exa mple"):
        with pytest.raises(ValueError):
            AllowList.parse([bad])


@pytest.mark.fast
def test_unresolvable_and_malformed_hosts_are_invalid() -> None:
    assert refused_code("http://no-such-host.invalid/") == "invalid_callback_url"
    assert refused_code("http://[::1/") == "invalid_callback_url"
    assert refused_code("http://8.8.8.8:65536/") == "invalid_callback_url"
    assert refused_code("http://bad host/") == "invalid_callback_url"
    assert refused_code("http://8.8.8.8/\x00") == "invalid_callback_url"


@pytest.mark.fast
def test_signature_verification_refuses_what_it_should() -> None:
    secret, body = "whsec_test", b'{"job_id":"x"}'
    now = 1_700_000_000
    header = sign_callback(secret, body, timestamp=now)
    assert header.startswith(f"t={now},v1=")
    assert verify_callback(secret, header, body, now=now + 299)
    assert verify_callback(secret, header, body, now=now - 299)
    assert not verify_callback(secret, header, body, now=now + 301)
    assert not verify_callback(secret, header, body, now=now - 301)
    assert verify_callback(secret, header, body, tolerance=3600, now=now + 3000)
    assert not verify_callback("whsec_other", header, body, now=now)
    assert not verify_callback(secret, header, body + b" ", now=now)
    forged = header.replace(f"t={now}", f"t={now + 10}")
    assert not verify_callback(secret, forged, body, now=now)
    rotated = f"{header},v1={'0' * 64}"
    assert verify_callback(secret, rotated, body, now=now)
    for malformed in (None, "", "v1=abc", f"t=x,v1={'0' * 64}", f"t={now}", f"t={now},t={now}"):
        assert not verify_callback(secret, malformed, body, now=now), malformed


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key for the name hooks.localhost (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=hooks.localhost"]
    command += ["-addext", "subjectAltName=DNS:hooks.localhost"]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def test_tls_delivery_to_the_checked_address_keeps_the_name_for_sni_and_certificate(
    certificate: tuple[Path, Path],
) -> None:
    """A real TLS receiver on 127.0.0.1: the sender connects to the checked address, offers the
    host name in SNI and verifies the certificate against that name, not the address."""
    cert, key = certificate
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _socket, name, _context: names.append(name)
    receiver = Receiver(tls=context)
    signing_key = b"k" * 32
    trusting = ssl.create_default_context(cafile=str(cert))
    named = AllowList.parse(["hooks.localhost", "127.0.0.1/32"])
    url = f"https://hooks.localhost:{receiver.port}/tls"
    try:
        sender = CallbackSender(named, signing_key, 5, tls=trusting)
        delivered = asyncio.run(sender.deliver(url, "alice", {"job_id": "x"}))
        by_address = asyncio.run(
            sender.deliver(f"https://127.0.0.1:{receiver.port}/tls", "alice", {"job_id": "y"})
        )
        untrusted = asyncio.run(
            CallbackSender(named, signing_key, 5).deliver(url, "alice", {"job_id": "z"})
        )
    finally:
        receiver.close()
    assert delivered == Delivery(True)
    [request] = receiver.at("/tls")
    assert names[0] == "hooks.localhost"
    assert request.headers["Host"] == f"hooks.localhost:{receiver.port}"
    secret = callback_secret(signing_key, "alice")
    assert verify_callback(secret, request.headers[SIGNATURE_HEADER], request.body)
    assert json.loads(request.body) == {"job_id": "x"}
    assert not by_address.delivered and "CERTIFICATE_VERIFY_FAILED" in by_address.error
    assert not untrusted.delivered and "CERTIFICATE_VERIFY_FAILED" in untrusted.error


def test_a_receiver_that_never_answers_fails_the_delivery_in_time() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    sender = CallbackSender(AllowList.parse(["127.0.0.1/32"]), b"k" * 32, 0.5)
    started = time.monotonic()
    try:
        delivery = asyncio.run(sender.deliver(f"http://127.0.0.1:{port}/", None, {"a": 1}))
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
    assert time.monotonic() - started < 3
    assert delivery.delivered is False and delivery.retry is True
    assert delivery.error is not None and "0.5" in delivery.error, delivery.error
    assert len(accepted) == 1
