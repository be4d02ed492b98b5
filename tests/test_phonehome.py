"""The phone-home listener takes only what it asked for (issue 15, item 4), over real sockets on 127.0.0.1."""

import socket
import time
import urllib.parse

import pytest

from ecshell.fabrics.ec2.phonehome import MAX_BODY, PhoneHome

INSTANCE = "i-0123456789abcdef0"


@pytest.fixture
def listener():
    phone = PhoneHome()
    try:
        yield phone
    finally:
        phone.close()


def request(url, head, body=b"", method="POST", read_timeout=5.0):
    """Send ``head`` lines and ``body`` raw to the listener; its status code (or None if it sent nothing)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_timeout) as sock:
        lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", *head, "", ""]
        sock.sendall("\r\n".join(lines).encode() + body)
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except socket.timeout:
            return None
    return int(reply.split()[1]) if reply.startswith(b"HTTP/") else None


def form(instance_id=INSTANCE):
    return urllib.parse.urlencode({"instance_id": instance_id, "hostname": "ip-10-0-0-1"}).encode()


def post(url, body):
    return request(url, ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"], body)


def test_it_binds_loopback_unless_told_and_where_told():
    phone = PhoneHome()
    try:
        assert phone._server.server_address[0] == "127.0.0.1"
    finally:
        phone.close()
    phone = PhoneHome(host="127.0.0.2")
    try:
        assert phone._server.server_address[0] == "127.0.0.2" and phone.url.startswith("http://127.0.0.2:")
    finally:
        phone.close()


def test_only_a_call_with_a_secret_it_handed_out_is_recorded(listener, capfd):
    url = listener.url_for_launch()
    assert url.startswith(listener.url) and len(url) > len(listener.url) + 20
    assert post(listener.url, form()) == 403                         # no secret: the forged post of the issue
    assert post(listener.url + "guess", form()) == 403
    assert post(url[:-1] + ("A" if url[-1] != "A" else "B"), form()) == 403
    assert post(listener.url + "x/" + url.rsplit("/", 1)[1] + "x", form()) == 403
    assert listener.arrived == {}
    assert post(url, form()) == 200
    assert set(listener.arrived) == {INSTANCE}
    assert post(url, form("../../etc")) == 400
    assert listener.url_for_launch() != url  # a secret per launch
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


@pytest.mark.parametrize("length", ["-1", "abc", "", "1e3", "+5", "0x10", "٣", str(MAX_BODY + 1), "99999999999999"])
def test_a_length_it_cannot_trust_is_refused_without_reading_or_printing(listener, capfd, length):
    url = listener.url_for_launch()
    head = [f"Content-Length: {length}"] if length else []
    started = time.monotonic()
    # the body keeps coming: a listener that reads until the peer closes never answers
    status = request(url, head, b"instance_id=" + b"i" * 1_000_000, read_timeout=5.0)
    assert status in (411, 413), status
    assert time.monotonic() - started < 5
    assert listener.arrived == {}
    assert capfd.readouterr() == ("", "")


def test_two_lengths_or_chunked_bodies_are_refused(listener, capfd):
    url = listener.url_for_launch()
    body = form()
    assert request(url, [f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"], body) == 411
    assert request(url, ["Transfer-Encoding: chunked", f"Content-Length: {len(body)}"], body) == 411
    assert listener.arrived == {}
    assert capfd.readouterr() == ("", "")


def test_other_methods_and_garbage_get_a_status_and_no_output(listener, capfd):
    url = listener.url_for_launch()
    assert request(url, [], method="GET") == 405
    assert request(url, [], method="DELETE") == 405
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 garbage that is not HTTP\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.0 400")
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(b"POST /")  # and then nothing: the caller goes away half-way
    assert post(url, form()) == 200  # still serving
    assert capfd.readouterr() == ("", "")
