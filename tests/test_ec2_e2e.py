"""End to end on a moto server plus real sshd: launch, ready, broadcast, bundle, terminate.

The Ec2Fabric code path is the one a real account uses; only the instances'
"boot" is played by local sshd processes (see ec2_support.Booter), reached
through the per-instance address tag.
"""

import getpass
import os
import urllib.parse

from ec2_support import aws, ami, answer, booter, console_reply, live_instances, moto_url  # noqa: F401

from ecshell import Cluster, Ec2Fabric
from ecshell.ssh.keys import generate_ed25519


def fabric(url, **kwargs):
    kwargs.setdefault("region", "us-east-1")
    return Ec2Fabric(endpoint_url=url, image_id=ami(url, kwargs["region"]), user=getpass.getuser(), **kwargs)


def test_launch_ready_broadcast_bundle_terminate(aws, booter):
    ec2 = fabric(aws)
    ec2.import_key_pair()
    cluster = Cluster(ec2)
    try:
        web = cluster.launch(3, name="web", wait=False)
        assert [m.name for m in web] == ["web-0", "web-1", "web-2"]
        for machine in web:
            booter.boot(machine.id)
        ready = cluster.ready(web, timeout=60)
        assert sorted(m.name for m in ready) == ["web-0", "web-1", "web-2"]
        assert all(m.host == "127.0.0.1" for m in web)

        rs = cluster.run("echo hello; echo err >&2")
        assert len(rs.ok) == 3 and not rs.failed
        ((output, machines),) = rs.groups()
        assert output == "hello\nerr\n" and len(machines) == 3

        assert cluster.machine("web-0").mark("configured").ok
        image = ec2.bundle(cluster.machine("web-0"))  # its markers are read from the machine
        assert image["state"] == "available"
        assert image["source"] == cluster.machine("web-0").id and image["markers"] == ["configured"]

        # a new shell finds the same machines, still pinned
        again = Cluster(fabric(aws))
        try:
            assert sorted(m.id for m in again.machines) == sorted(m.id for m in web)
            assert len(again.run("true").ok) == 3
        finally:
            again.close()

        cluster.terminate(web)
        assert live_instances(aws) == []
        assert ec2.pins.ids() == []
        assert ec2.deregister_image(image["id"]) == image["snapshots"]
    finally:
        cluster.close()


def test_a_different_host_key_is_refused(aws, booter):
    ec2 = fabric(aws)
    cluster = Cluster(ec2)
    try:
        (machine,) = cluster.launch(1, name="web", wait=False)
        booter.boot(machine.id, host_key=generate_ed25519())  # an impostor on the address
        assert len(cluster.ready(machine, timeout=2)) == 0
        assert machine.state == "failed-init"
        result = machine.run("true")
        assert result.error == "hostkey" and "pinned at launch" in result.message
    finally:
        cluster.close()
        ec2.terminate([p.id for p in ec2.discover()])


def test_an_instance_without_a_pin_is_refused(aws, booter):
    """Launched outside this shell: no pin, no console key block -> refused, whatever ssh_config says."""
    ec2 = fabric(aws)
    seed = Cluster(ec2)
    (machine,) = seed.launch(1, name="web", wait=False)
    seed.close()
    booter.boot(machine.id)
    ec2.pins.forget(machine.id)
    with open(os.path.expanduser("~/.ssh/config"), "w") as f:
        f.write("Host *\n  StrictHostKeyChecking no\n")
    cluster = Cluster(fabric(aws))
    try:
        assert len(cluster.ready(timeout=2)) == 0
        result = cluster.machine("web-0").run("true")
        assert result.error == "hostkey" and "unknown host key" in result.message
    finally:
        cluster.close()
        ec2.terminate([machine.id])


def test_stragglers_held_pending_are_failed_init_then_ready(aws, booter):
    """One instance held in 'pending' (a botocore hook rewrites its state): the others get ready."""
    ec2 = fabric(aws)
    cluster = Cluster(ec2)
    held = set()

    def hold(parsed, **_):
        for reservation in parsed.get("Reservations", []):
            for instance in reservation["Instances"]:
                if instance["InstanceId"] in held:
                    instance["State"] = {"Code": 0, "Name": "pending"}

    try:
        ec2.client.meta.events.register("after-call.ec2.DescribeInstances", hold)
        web = cluster.launch(3, name="web", wait=False)
        for machine in web:
            booter.boot(machine.id)
        held.add(web[2].id)
        ready = cluster.ready(web, timeout=3)
        assert sorted(m.name for m in ready) == ["web-0", "web-1"]
        assert cluster.machine("web-2").state == "failed-init"
        held.clear()
        assert [m.name for m in cluster.ready(cluster.machine("web-2"), timeout=30)] == ["web-2"]
    finally:
        cluster.close()
        ec2.terminate([p.id for p in ec2.discover()])


def test_a_console_checked_key_lets_an_unpinned_instance_in(aws, booter):
    """No pin (launched from another shell): the console output's key block is accepted, and only it."""
    ec2 = fabric(aws)
    seed = Cluster(ec2)
    web = seed.launch(2, name="web", wait=False)
    seed.close()
    consoles = {}
    for machine in web:
        booter.boot(machine.id)
        ec2.pins.forget(machine.id)
        consoles[machine.id] = machine.prototype.host_keys[0]
    consoles[web[1].id] = generate_ed25519()[1]  # web-1's console shows some other key

    def console(request, **_):
        body = request.body if isinstance(request.body, str) else request.body.decode()
        instance_id = urllib.parse.parse_qs(body)["InstanceId"][0]
        block = f"-----BEGIN SSH HOST KEY KEYS-----\n{consoles[instance_id]} root@h\n-----END SSH HOST KEY KEYS-----\n"
        return answer(request, 200, console_reply(instance_id, block))

    other = fabric(aws)
    other.client.meta.events.register("before-send.ec2.GetConsoleOutput", console)
    cluster = Cluster(other)
    try:
        assert [m.name for m in cluster.ready(timeout=3)] == ["web-0"]
        assert cluster.machine("web-1").run("true").error == "hostkey"
    finally:
        cluster.close()
        ec2.terminate([m.id for m in web])


def test_launch_waits_until_really_ready_by_default(aws, booter):
    """cluster.launch(n) as %launch calls it: each instance "boots" as soon as RunInstances answers."""
    ec2 = fabric(aws)
    ec2.client.meta.events.register(
        "after-call.ec2.RunInstances",
        lambda parsed, **_: [booter.boot(i["InstanceId"]) for i in parsed.get("Instances", [])])
    cluster = Cluster(ec2)
    try:
        web = cluster.launch(2, name="web", timeout=60)
        assert [m.state for m in web] == ["ready", "ready"]
        assert len(web.run("true").ok) == 2
    finally:
        cluster.close()
        ec2.terminate([p.id for p in ec2.discover()])


# -- the metadata guard in the boot script (issue 15, item 9) ---------------------

METADATA_PROBE = r"""
import json, os, socket, subprocess, sys
guard, path = sys.argv[1], sys.argv[2]
# this network namespace is the test's own: an instance metadata service of its own on 169.254.169.254
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], check=True)
service = socket.create_server(("169.254.169.254", 80), backlog=64)

def reaches(uid):
    pid = os.fork()
    if pid == 0:
        try:
            if uid:
                os.setgroups([]); os.setgid(uid); os.setuid(uid)
            client = socket.socket()
            client.settimeout(1.5)
            client.connect(("169.254.169.254", 80))
            os._exit(0)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

report = {"before": [reaches(0), reaches(65534)]}
runs = [subprocess.run(["/bin/sh", "-c", guard], env={"PATH": path}, capture_output=True, text=True)
        for _ in range(2)]  # cloud-init runs bootcmd on every boot
report["said"] = [r.stdout + r.stderr for r in runs]
report["after"] = [reaches(0), reaches(65534)]
report["iptables"] = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout
report["nft"] = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
print(json.dumps(report))
"""


def boot_commands(text):
    import yaml

    return yaml.safe_load(text).get("bootcmd", [])


def test_the_boot_script_lets_only_root_reach_the_metadata_service(aws, booter, tmp_path):
    """The guard from a launched instance's user data, run on that (local) instance in a network namespace."""
    import json
    import shutil
    import sys

    from ec2_support import client, user_data
    from ecshell.fabrics.ec2.userdata import METADATA_GUARDED

    ec2 = fabric(aws)
    cluster = Cluster(ec2)
    try:
        machine = cluster.launch(1, name="web", wait=False)[0]
        text = user_data(client(aws), machine.id)
        (guard,) = boot_commands(text)  # reading it: the cloud-config parses, the guard is its boot step
        assert "--uid-owner 0 -j REJECT" in guard and "169.254.169.254" in guard
        booter.boot(machine.id)
        cluster.ready(machine, timeout=60)
        nft_only, neither = tmp_path / "nft-only", tmp_path / "neither"
        nft_only.mkdir(), neither.mkdir()
        os.symlink(shutil.which("nft", path="/usr/sbin:/sbin"), nft_only / "nft")
        for path, tool in (("/usr/sbin:/usr/bin:/sbin:/bin", "iptables"), (str(nft_only), "nft"), (str(neither), None)):
            result = machine.run(["unshare", "--net", sys.executable, "-c", METADATA_PROBE, guard, path], timeout=60)
            assert result.ok, result.output
            report = json.loads(result.output.splitlines()[-1])
            assert report["before"] == [True, True], tool
            if tool is None:
                assert report["after"] == [True, True]
                assert all("could not limit the instance metadata service" in s for s in report["said"])
                continue
            assert report["after"] == [True, False], (tool, report)  # root yes, nobody no
            assert report["said"] == [f"{METADATA_GUARDED} ({tool})\n"] * 2, report["said"]
            if tool == "iptables":  # once, however often it boots
                assert report["iptables"].count("--uid-owner 0 -j REJECT") == 1, report["iptables"]
            else:
                assert report["nft"].count("meta skuid != 0 reject") == 2, report["nft"]
    finally:
        cluster.close()
    off = fabric(aws, restrict_metadata=False)
    try:
        (p,) = off.launch(1)
        assert boot_commands(user_data(client(aws), p.id)) == []
    finally:
        off.close()
