"""Ec2Fabric against a real moto server process: tags, discovery, lifecycle, failures, setup, images, volumes, cost."""

import subprocess
import sys

import pytest
from ec2_support import answer, aws, ami, client, console_reply, error_xml, live_instances, moto_url, user_data  # noqa: F401

from ecshell import ArgumentError, Cluster, Ec2Fabric, FabricError
from ecshell.fabrics.ec2.errors import Ec2Error
from ecshell.fabrics.ec2.tags import CLUSTER_TAG, EXPIRES_TAG, LAUNCH_TAG, OWNER_TAG
from ecshell.fabrics.ec2.userdata import host_key_from_user_data, host_keys_from_console
from ecshell.ssh.keys import generate_ed25519


def fabric(url, **kwargs):
    kwargs.setdefault("region", "us-east-1")
    kwargs.setdefault("image_id", ami(url, kwargs["region"]))
    return Ec2Fabric(endpoint_url=url, **kwargs)


def test_importing_ecshell_does_not_import_boto3():
    code = "import sys, ecshell; ecshell.Ec2Fabric; assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_setting_is_configurable():
    traits = set(Ec2Fabric.class_traits(config=True))
    assert {"region", "image_id", "instance_type", "key_name", "security_groups", "subnet_id", "user_data",
            "endpoint_url", "address", "spot", "ttl", "prices", "owner", "cluster", "user",
            "identity_file", "profile"} <= traits


def test_launch_tags_everything_and_pins_the_delivered_key(aws):
    ec2 = fabric(aws, ttl=2)
    prototypes = ec2.launch(3, name="web", tags={"team": "ops"})
    assert [p.name for p in prototypes] == ["web-0", "web-1", "web-2"]
    ec2_client = client(aws)
    instances = live_instances(aws)
    assert len(instances) == 3
    launch_ids = set()
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags[OWNER_TAG] == ec2.owner and tags[CLUSTER_TAG] == "default"
        assert tags["role"] == "web" and tags["team"] == "ops" and tags["Name"].startswith("web-")
        assert EXPIRES_TAG in tags
        launch_ids.add(tags[LAUNCH_TAG])
        assert instance["MetadataOptions"]["HttpTokens"] == "required"
        assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1  # containers on a bridge get no token
        private, public = host_key_from_user_data(user_data(ec2_client, instance["InstanceId"]))
        assert ec2.pins.load(instance["InstanceId"]) == [public]
    assert len(launch_ids) == 1
    volumes = ec2_client.describe_volumes()["Volumes"]
    assert volumes and all(OWNER_TAG in {t["Key"] for t in v.get("Tags", [])} for v in volumes)
    # each instance has its own host key
    assert len({tuple(p.host_keys) for p in prototypes}) == 3


def test_a_new_shell_rediscovers_its_instances_and_only_its_own(aws):
    ec2 = fabric(aws)
    launched = ec2.launch(2, name="db")
    fabric(aws, cluster="other").launch(1, name="db")
    fabric(aws, owner="someone-else").launch(1, name="db")
    found = fabric(aws).discover()
    assert sorted(p.id for p in found) == sorted(p.id for p in launched)
    assert all(p.state == "running" and p.host_keys and p.host for p in found)
    # names continue after the ones in use
    assert [p.name for p in ec2.launch(1, name="db")] == ["db-2"]


def test_stop_start_terminate_and_forget_host_keys(aws):
    ec2 = fabric(aws)
    cluster = Cluster(ec2)
    try:
        db = cluster.launch(2, name="db", wait=False)
        ids = [m.id for m in db]
        cluster.stop(db)
        assert ec2.states(ids) == {i: "stopped" for i in ids}
        ec2.start(ids)
        ec2.wait(ids, "running")
        assert ec2.states(ids) == {i: "running" for i in ids}
        assert sorted(ec2.pins.ids()) == sorted(ids)
        cluster.terminate(db)
        assert ec2.states(ids) == {i: "terminated" for i in ids}
        assert ec2.pins.ids() == [] and live_instances(aws) == []
    finally:
        cluster.close()


def test_a_bad_image_is_an_error_with_code_and_remedy_and_starts_nothing(aws):
    with pytest.raises(FabricError) as info:
        fabric(aws, image_id="ami-12345678").launch(2, name="web")
    assert info.value.code == "InvalidAMIID.NotFound"
    assert "image_id" in str(info.value) and "nothing was started" in str(info.value)
    assert live_instances(aws) == []


def test_names_and_counts_are_checked_before_launching_and_a_name_tag_read_back_is_data(aws, caplog):
    ec2 = fabric(aws)
    for bad in ('x"\nForceCommand /bin/echo pwned', "../../escape", "role=db", "w[1]"):
        with pytest.raises(ArgumentError, match="cannot launch machines named"):
            ec2.launch(1, name=bad)
    cluster = Cluster(ec2)
    try:
        with pytest.raises(ArgumentError, match="at most 20 machines.*c.Ec2Fabric.max_launch = 21"):
            cluster.launch(21)
    finally:
        cluster.close()
    assert live_instances(aws) == []
    (launched,) = ec2.launch(1, name="web")
    # anyone allowed to CreateTags can rename an instance: its Name is data, never a path or config text
    client(aws).create_tags(Resources=[launched.id],
                            Tags=[{"Key": "Name", "Value": "../../escape\nForceCommand /bin/echo pwned"}])
    assert [p.name for p in fabric(aws).discover()] == [launched.id]
    assert f"EC2 instance {launched.id}: its Name tag is refused" in caplog.text


def test_key_pair_import_is_idempotent_and_validated(aws):
    ec2 = fabric(aws, key_name="missing")
    with pytest.raises(Ec2Error) as info:
        ec2.launch(1)
    assert info.value.code == "InvalidKeyPair.NotFound" and "import_key_pair" in str(info.value)
    ec2 = fabric(aws)
    name = ec2.import_key_pair()
    assert ec2.key_name == name and ec2.import_key_pair() == name
    assert len(client(aws).describe_key_pairs()["KeyPairs"]) == 1
    with pytest.raises(Ec2Error, match="another public key"):
        ec2.import_key_pair(name, public_key=generate_ed25519()[1])
    (p,) = ec2.launch(1)
    assert live_instances(aws)[0]["KeyName"] == name


def test_security_group_opens_ssh_to_the_operator_only(aws):
    ec2 = fabric(aws)
    group = ec2.ensure_security_group(cidr="198.51.100.7")
    assert ec2.ensure_security_group(cidr="198.51.100.7/32") == group
    assert ec2.security_groups == [group]
    (sg,) = client(aws).describe_security_groups(GroupIds=[group])["SecurityGroups"]
    rules = [(p["FromPort"], r["CidrIp"]) for p in sg["IpPermissions"] for r in p["IpRanges"]]
    assert rules == [(22, "198.51.100.7/32")]
    ec2.launch(1)
    assert [g["GroupId"] for g in live_instances(aws)[0]["SecurityGroups"]] == [group]


def test_missing_credentials_are_one_line(aws, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(FabricError) as info:
        fabric(aws).discover()
    message = str(info.value)
    assert "\n" not in message and "AWS_PROFILE" in message and "AWS_ACCESS_KEY_ID" in message


def test_a_missing_region_is_one_line(aws):
    with pytest.raises(FabricError, match="AWS_REGION"):
        Ec2Fabric(endpoint_url=aws, image_id="ami-1").discover()


def test_a_launch_failing_half_way_terminates_what_it_started(aws):
    ec2 = fabric(aws, launch_workers=1)
    calls = []

    def third_fails(request, **_):
        calls.append(1)
        if len(calls) == 3:
            return answer(request, 400, error_xml("InstanceLimitExceeded", "You have requested more instances"))

    ec2.client.meta.events.register("before-send.ec2.RunInstances", third_fails)
    with pytest.raises(Ec2Error) as info:
        ec2.launch(4, name="web")
    error = info.value
    assert error.code == "InstanceLimitExceeded" and "limit" in error.remedy
    assert len(error.created) == 2 and error.terminated == error.created
    assert all(i in str(error) for i in error.created)
    assert live_instances(aws) == [] and ec2.pins.ids() == []


def test_a_launch_whose_reply_was_lost_still_cleans_up(aws):
    """RunInstances succeeded on the server but the client saw an error: found by the launch tag."""
    ec2 = fabric(aws, launch_workers=1)

    def lose_reply(http_response, parsed, **_):
        if len(live_instances(aws)) == 2:
            http_response.status_code = 400
            parsed["Error"] = {"Code": "InternalError", "Message": "reply lost"}
            parsed.pop("Instances", None)

    ec2.client.meta.events.register("after-call.ec2.RunInstances", lose_reply)
    with pytest.raises(Ec2Error) as info:
        ec2.launch(3, name="web")
    assert len(info.value.terminated) == 2
    assert live_instances(aws) == []


def test_throttling_and_5xx_are_retried(aws):
    ec2 = fabric(aws)
    seen = []

    def flaky(request, **_):
        seen.append(1)
        if len(seen) == 1:
            return answer(request, 503, error_xml("RequestLimitExceeded", "Request limit exceeded."))
        if len(seen) == 2:
            return answer(request, 500, error_xml("InternalError", "We encountered an internal error."))

    ec2.client.meta.events.register("before-send.ec2.RunInstances", flaky)
    ec2.client.meta.events.register("before-send.ec2.DescribeInstances", flaky)
    (p,) = ec2.launch(1)
    assert len(seen) >= 3
    assert [i["InstanceId"] for i in live_instances(aws)] == [p.id]


def test_throttling_past_the_retries_is_reported(aws):
    ec2 = fabric(aws, max_attempts=2)
    ec2.client.meta.events.register(
        "before-send.ec2.DescribeInstances",
        lambda request, **_: answer(request, 503, error_xml("RequestLimitExceeded")))
    with pytest.raises(Ec2Error) as info:
        ec2.discover()
    assert info.value.code == "RequestLimitExceeded" and "wait a minute" in str(info.value)


def test_without_a_pin_the_console_key_block_is_the_fallback(aws):
    ec2 = fabric(aws)
    (p,) = ec2.launch(1)
    delivered = p.host_keys
    ec2.pins.forget(p.id)
    block = ("ci-info: no authorized SSH keys fingerprints found for user ubuntu.\n"
             "-----BEGIN SSH HOST KEY KEYS-----\n"
             f"{delivered[0]} root@ip-10-0-0-1\n"
             "-----END SSH HOST KEY KEYS-----\n")
    ec2.client.meta.events.register("before-send.ec2.GetConsoleOutput",
                                    lambda request, **_: answer(request, 200, console_reply(p.id, block)))
    (found,) = ec2.discover()
    assert found.host_keys == delivered and ec2.pins.load(p.id) == delivered


def test_without_a_pin_or_console_block_nothing_is_accepted(aws):
    ec2 = fabric(aws)
    (p,) = ec2.launch(1)
    ec2.pins.forget(p.id)
    (found,) = fabric(aws).discover()  # moto's console output has no key block
    assert found.host_keys == []
    assert found.strict_host_key_checking == "yes" and found.known_hosts_files


def test_console_key_block_parsing():
    assert host_keys_from_console("boot\n-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA1 x\n") == []
    text = ("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 OLD\n-----END SSH HOST KEY KEYS-----\nreboot\n"
            "-----BEGIN SSH HOST KEY KEYS-----\necdsa-sha2-nistp256 E h\nssh-ed25519 NEW h\n"
            "-----END SSH HOST KEY KEYS-----\n")
    assert host_keys_from_console(text) == ["ecdsa-sha2-nistp256 E", "ssh-ed25519 NEW"]


def test_operator_user_data_travels_alongside(aws):
    ec2 = fabric(aws, user_data="#!/bin/sh\necho hi > /tmp/hi\n")
    (p,) = ec2.launch(1)
    text = user_data(client(aws), p.id)
    assert "multipart/mixed" in text and "text/x-shellscript" in text and "text/cloud-config" in text
    assert host_key_from_user_data(text)[1] == p.host_keys[0]
    with pytest.raises(ArgumentError, match="must start with"):
        fabric(aws, user_data="echo no shebang").launch(1)
    assert len(live_instances(aws)) == 1


def test_address_choice_and_tag_override(aws):
    (p,) = fabric(aws).launch(1)
    instance = live_instances(aws)[0]
    assert p.host == instance["PublicIpAddress"]
    assert fabric(aws, address="private-ip").prototypes([p.id])[0].host == instance["PrivateIpAddress"]
    client(aws).create_tags(Resources=[p.id], Tags=[{"Key": "ecshell:address", "Value": "ops@10.9.8.7:2200"}])
    (q,) = fabric(aws).prototypes([p.id])
    assert (q.user, q.host, q.port) == ("ops", "10.9.8.7", 2200)
    client(aws).create_tags(Resources=[p.id], Tags=[{"Key": "ecshell:address", "Value": "10.9.8.7:ssh"}])
    assert fabric(aws).prototypes([p.id])[0].host == instance["PublicIpAddress"]  # unreadable: ignored


def test_two_regions_in_one_cluster(aws):
    east, west = fabric(aws), fabric(aws, region="eu-west-1")
    cluster = Cluster(east, west)
    try:
        cluster.launch(1, name="east", fabric=east.name, wait=False)
        cluster.launch(1, name="west", fabric=west.name, wait=False)
        assert set(cluster.fabrics) == {"ec2-us-east-1", "ec2-eu-west-1"}
        assert cluster.machine("west-0").fabric is west
        assert len(live_instances(aws, "eu-west-1")) == 1 and len(live_instances(aws, "us-east-1")) == 1
        assert sorted(m.name for m in Cluster(fabric(aws), fabric(aws, region="eu-west-1")).machines) == \
            ["east-0", "west-0"]
        cluster.terminate("all")
        assert live_instances(aws, "eu-west-1") == []
    finally:
        cluster.close()


def test_spot_launch_shows_the_price(aws, caplog):
    ec2 = fabric(aws, spot=True)
    assert ec2.spot_price()
    with caplog.at_level("INFO", logger="ecshell"):
        (p,) = ec2.launch(1)
    assert "spot price" in caplog.text
    assert p.extra["spot"] and p.extra["hourly_cost"] == min(ec2.spot_price().values())


def test_cost_so_far_and_price_overrides(aws):
    ec2 = fabric(aws, instance_type="t3.micro", prices={"us-east-1/m5.large": 0.2})
    (p,) = ec2.launch(1)
    ec2.launch(1, instance_type="m5.large")
    report = ec2.cost(now=p.launched_at + 3600)
    rows = {r["type"]: r for r in report["machines"]}
    assert rows["t3.micro"]["hourly"] == 0.0104 and rows["m5.large"]["hourly"] == 0.2
    assert rows["t3.micro"]["cost"] == pytest.approx(0.0104, rel=0.01)
    assert report["total"] == pytest.approx(0.2104, rel=0.01)
    assert fabric(aws, instance_type="x9.huge").launch(1, name="odd")[0].extra["hourly_cost"] is None


def test_the_reaper_warns_then_terminates_expired_instances_of_this_owner(aws, caplog):
    ec2 = fabric(aws)
    (short,) = ec2.launch(1, name="short", ttl=1)
    (long_,) = ec2.launch(1, name="long", ttl=10)
    (forever,) = ec2.launch(1, name="forever")
    (theirs,) = fabric(aws, owner="someone-else").launch(1, name="theirs", ttl=1)
    soon = short.extra["expires_at"] - 600
    with caplog.at_level("WARNING", logger="ecshell"):
        assert ec2.reap(now=soon) == {"terminated": [], "warned": [short.id]}
    assert "reaches its TTL" in caplog.text
    later = short.extra["expires_at"] + 1
    assert ec2.reap(now=later, dry_run=True)["terminated"] == [short.id]
    assert ec2.reap(now=later)["terminated"] == [short.id]
    alive = {i["InstanceId"] for i in live_instances(aws)}
    assert alive == {long_.id, forever.id, theirs.id}


def test_bundle_list_and_deregister_images(aws):
    ec2 = fabric(aws)
    (p,) = ec2.launch(1, name="web")
    markers = [f"step-{n:03d}" for n in range(40)]  # longer than one tag value
    image = ec2.bundle(p.id, name="web-golden", markers=markers)
    assert image["state"] == "available" and image["source"] == p.id and image["markers"] == markers
    assert [i["id"] for i in ec2.list_images()] == [image["id"]]
    snapshots = client(aws).describe_snapshots(SnapshotIds=image["snapshots"])["Snapshots"]
    assert all({t["Key"]: t["Value"] for t in s["Tags"]}["ecshell:image"] == image["id"] for s in snapshots)
    # the image launches
    (q,) = ec2.launch(1, name="clone", image_id=image["id"])
    assert q.extra["image_id"] == image["id"]
    assert ec2.deregister_image(image["id"]) == image["snapshots"]
    assert ec2.list_images() == []
    assert client(aws).describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": image["snapshots"]}])["Snapshots"] == []


def test_volumes_create_attach_detach_delete(aws):
    ec2 = fabric(aws)
    (p,) = ec2.launch(1)
    volume = ec2.create_volume(8, availability_zone=p.extra["availability_zone"], name="data")
    assert volume["state"] == "available" and volume["tags"]["Name"] == "data"
    attached = ec2.attach_volume(volume["id"], p.id, device="/dev/sdg")
    assert (attached["state"], attached["instance"], attached["device"]) == ("in-use", p.id, "/dev/sdg")
    assert ec2.detach_volume(volume["id"])["state"] == "available"
    assert volume["id"] in [v["id"] for v in ec2.list_volumes()]
    ec2.delete_volume(volume["id"])
    assert volume["id"] not in [v["id"] for v in ec2.list_volumes()]


def test_phone_home_wakes_the_readiness_wait_and_is_only_a_hint(aws, caplog):
    import re
    import threading
    import urllib.error
    import urllib.parse
    import urllib.request

    ec2 = fabric(aws)
    url = ec2.listen_for_phone_home(host="127.0.0.1")
    try:
        (p,) = ec2.launch(1)
        assert url.startswith("http://127.0.0.1:")
        # the URL in the user data carries this launch's secret; the bare listener URL is refused
        secret_url = re.search(r"url: (\S+)", user_data(client(aws), p.id)).group(1)
        assert secret_url.startswith(url) and len(secret_url) > len(url) + 20
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(url, data=urllib.parse.urlencode({"instance_id": p.id}).encode(), timeout=10)
        (other,) = ec2.launch(1)
        assert re.search(r"url: (\S+)", user_data(client(aws), other.id)).group(1) != secret_url
        url = secret_url
        woken = []
        waiter = threading.Thread(target=lambda: woken.append(ec2.wait_for_news([p.id], 30)))
        waiter.start()
        # what cloud-init's phone_home module posts when boot has finished
        form = {"instance_id": p.id, "pub_key_ed25519": generate_ed25519()[1], "hostname": "ip-10-0-0-1"}
        urllib.request.urlopen(url, data=urllib.parse.urlencode(form).encode(), timeout=10).read()
        waiter.join()
        assert woken == [{p.id}]
        with caplog.at_level("WARNING", logger="ecshell"):
            (q,) = ec2.prototypes([p.id])
        assert q.extra["phoned_home_at"] and q.host_keys == p.host_keys  # the posted key changes nothing
        assert "not its pinned one" in caplog.text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, data=b"instance_id=../../etc", timeout=10)
    finally:
        ec2.close()
    assert ec2.phone_home_url is None


def test_ctrl_c_during_a_launch_terminates_what_it_started(aws, caplog):
    import signal
    import threading

    ec2 = fabric(aws, launch_workers=1)
    main = threading.main_thread().ident
    calls = []

    def interrupt_after_the_second(**_):
        calls.append(1)
        if len(calls) == 2:
            signal.pthread_kill(main, signal.SIGINT)

    ec2.client.meta.events.register("after-call.ec2.RunInstances", interrupt_after_the_second)
    with caplog.at_level("WARNING", logger="ecshell"), pytest.raises(KeyboardInterrupt):
        ec2.launch(5, name="web")
    assert "interrupted" in caplog.text and "terminated the" in caplog.text
    assert live_instances(aws) == [] and ec2.pins.ids() == []


def test_a_profile_configures_the_default_fabric(aws):
    from traitlets.config import Config

    (p,) = fabric(aws).launch(1, name="web")
    config = Config()
    config.EcShell.default_fabric = "ec2"
    config.Ec2Fabric.region = "us-east-1"
    config.Ec2Fabric.endpoint_url = aws
    config.Ec2Fabric.image_id = ami(aws)
    cluster = Cluster(config=config)
    try:
        (ec2,) = cluster.fabrics.values()
        assert isinstance(ec2, Ec2Fabric) and ec2.endpoint_url == aws
        assert [m.id for m in cluster.machines] == [p.id]
    finally:
        cluster.close()


def test_the_design_signature_constructs():
    ec2 = Ec2Fabric(region="eu-west-1", image_id="ami-0123456789abcdef0", instance_type="t3.micro",
                    key_name="ops", security_groups=["ssh-from-me"], subnet_id=None, endpoint_url=None)
    assert ec2.name == "ec2-eu-west-1" and "eu-west-1" in repr(ec2)
    with pytest.raises(Exception, match="ttl"):
        Ec2Fabric(region="eu-west-1", ttl=-1)


def test_an_instance_terminated_elsewhere_leaves_and_its_pin_is_forgotten(aws):
    ec2 = fabric(aws)
    cluster = Cluster(ec2)
    try:
        web = cluster.launch(2, name="web", wait=False)
        gone = web[0].id
        client(aws).terminate_instances(InstanceIds=[gone])  # from the console, another shell, a spot interruption
        assert [m.name for m in cluster.refresh()] == ["web-1"]
        assert ec2.pins.ids() == [web[1].id]
    finally:
        cluster.close()


def test_user_data_lets_sshd_accept_the_kill_token():
    """cloud-init writes an sshd_config.d drop-in before sshd starts: the channel path's kill is exact."""
    import yaml

    from ecshell.fabrics.ec2.userdata import cloud_config
    from ecshell.ssh.keys import generate_ed25519

    private, public = generate_ed25519()
    config = yaml.safe_load(cloud_config(private, public, ["ssh-ed25519 AAAA ops"]))
    (drop_in,) = config["write_files"]
    assert drop_in["path"] == "/etc/ssh/sshd_config.d/ecshell.conf"
    assert "AcceptEnv ECSHELL_RUN" in drop_in["content"].splitlines()
    assert config["ssh_keys"]["ed25519_public"] == " ".join(public.split()[:2])
