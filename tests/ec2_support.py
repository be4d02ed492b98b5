"""Support for the EC2 tests: a real moto server process, fake credentials, and "booting" instances.

The moto server runs as its own process (``moto_server -H 127.0.0.1``) with
key-pair and AMI validation on, started once per test module and stopped by
pid even when a test fails; each test resets it. Credentials are fake and set
in the environment; the instance-metadata credential lookup is disabled, so
no test ever talks to anything but 127.0.0.1.

``Booter`` plays the part of cloud-init on an instance: it reads the user
data the fabric sent (through the EC2 API, as an instance would through its
metadata service), installs the delivered host key and authorized key in a
real local sshd, and points the instance's address tag at it.
"""

import base64
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from botocore.awsrequest import AWSResponse

from ecshell.fabrics.ec2.userdata import authorized_keys_from_user_data, host_key_from_user_data
from ecshell.fabrics.local import free_port, sshd_config

MOTO_ENV = {"MOTO_ENABLE_KEYPAIR_VALIDATION": "true", "MOTO_ENABLE_AMI_VALIDATION": "true"}


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _moto_command():
    # The moto_server script of this interpreter's environment (CI runs .venv/bin/python
    # without .venv/bin on PATH); the module itself when the script is not there.
    script = os.path.join(os.path.dirname(sys.executable), "moto_server")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "moto.server"]


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = dict(os.environ, **MOTO_ENV)
    with open(log, "wb") as out:
        proc = subprocess.Popen(_moto_command() + ["-H", "127.0.0.1", "-p", str(port)], env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start: {log.read_text()[-1000:]}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.fixture
def aws(isolated_home, monkeypatch, moto_url):
    """Fake credentials for the moto server, reset to its initial state."""
    import urllib.request

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=30).read()
    return moto_url


def client(url, region="us-east-1"):
    import boto3

    return boto3.session.Session(region_name=region).client("ec2", endpoint_url=url)


_amis = {}


def ami(url, region="us-east-1"):
    """A Linux AMI moto knows in ``region`` (moto's image ids are fixed per region)."""
    if region not in _amis:
        images = client(url, region).describe_images(
            Owners=["amazon"], Filters=[{"Name": "name", "Values": ["*ubuntu*"]}])["Images"]
        _amis[region] = sorted(i["ImageId"] for i in images)[0]
    return _amis[region]


def live_instances(url, region="us-east-1"):
    reservations = client(url, region).describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    return [i for r in reservations["Reservations"] for i in r["Instances"]]


def user_data(ec2_client, instance_id):
    value = ec2_client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(value).decode()


class _Body:
    def __init__(self, data):
        self.data = data

    def stream(self, **_):
        yield self.data


def answer(request, status, body):
    return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Body(body.encode()))


def error_xml(code, message="injected"):
    return (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            "<RequestID>ecshell-test</RequestID></Response>")


def console_reply(instance_id, text):
    output = base64.b64encode(text.encode()).decode()
    return ('<GetConsoleOutputResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>r</requestId><instanceId>{instance_id}</instanceId>"
            f"<timestamp>2026-01-01T00:00:00.000Z</timestamp><output>{output}</output></GetConsoleOutputResponse>")


class Booter:
    """Boot instances as real local sshd processes from the user data the fabric delivered."""

    def __init__(self, ec2_client, directory, address_tag="ecshell:address"):
        self.client = ec2_client
        self.directory = directory
        self.address_tag = address_tag
        self.procs = []

    def boot(self, instance_id, host_key=None):
        """Start an sshd for the instance; ``host_key`` (private, public) replaces the delivered one."""
        text = user_data(self.client, instance_id)
        delivered = host_key_from_user_data(text)
        assert delivered is not None, "the user data carries no host key"
        private, _public = host_key or delivered
        if isinstance(private, bytes):
            private = private.decode()
        path = os.path.join(self.directory, instance_id)
        os.makedirs(os.path.join(path, "state"), mode=0o700)
        key = os.path.join(path, "ssh_host_ed25519_key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private)
        with open(os.path.join(path, "authorized_keys"), "w") as f:
            f.write("\n".join(authorized_keys_from_user_data(text)) + "\n")
        port = free_port()
        with open(os.path.join(path, "sshd_config"), "w") as f:
            # the instance's own state directory, so that markers never reach the real ~
            env = {"SHLVL": "1", "ECSHELL_STATE_DIR": f"{path}/state", "ECSHELL_MACHINE": instance_id}
            f.write(sshd_config(instance_id, instance_id, port, path, env))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", os.path.join(path, "sshd_config"),
                                 "-E", os.path.join(path, "sshd.log")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(path, "sshd.pid")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd for {instance_id} did not start: {open(os.path.join(path, 'sshd.log')).read()}")
            time.sleep(0.005)
        self.client.create_tags(Resources=[instance_id],
                                Tags=[{"Key": self.address_tag, "Value": f"127.0.0.1:{port}"}])
        return port

    def close(self):
        for proc in self.procs:
            _stop(proc)
        self.procs = []


@pytest.fixture
def booter(aws, tmp_path):
    b = Booter(client(aws), str(tmp_path / "instances"))
    os.makedirs(b.directory)
    try:
        yield b
    finally:
        b.close()
