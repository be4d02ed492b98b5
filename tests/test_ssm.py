"""SSM Run Command as a transport, against a real moto server process.

moto records SendCommand calls and answers GetCommandInvocation, but runs
nothing: every invocation says Success with empty output. So these tests
check the API flow, the batching and the status mapping, and cannot check
that a command ran on an instance. Two calls moto does not implement at all
(DescribeInstanceInformation: which instances have an SSM agent online, and
CancelCommand) are answered inside the fabric's boto3 client by a botocore
``before-send`` hook that plays Systems Manager; where a test needs a status
a real agent would report (InProgress, Failed, TimedOut, ...), an
``after-call`` hook rewrites moto's real GetCommandInvocation reply.
moto's ListCommands lists every instance it knows under each command sent
by instance ids, so what was sent is recorded from the requests themselves.
"""

import json
import os
import signal
import threading
import time

import pytest
from botocore.awsrequest import AWSResponse
from ec2_support import aws, ami, moto_url  # noqa: F401

from ecshell import ArgumentError, Cluster, Ec2Fabric
from ecshell.fanout import ssm


class _Body:
    def __init__(self, data):
        self.data = data

    def stream(self, **_):
        yield self.data


class SystemsManager:
    """What moto lacks, played inside the client: agents that registered, and CancelCommand."""

    def __init__(self, fabric, online=(), lost=()):
        self.ping = {i: "Online" for i in online}
        self.ping.update({i: "ConnectionLost" for i in lost})
        self.cancelled = []  # (CommandId, InstanceIds) of each CancelCommand
        self.statuses = {}  # instance id -> the GetCommandInvocation fields a real agent would report
        self.sent = []  # the parameters of each SendCommand call, as sent to moto
        events = fabric.service_client("ssm").meta.events
        events.register("before-parameter-build.ssm.SendCommand", lambda params, **_: self.sent.append(dict(params)))
        events.register("before-send.ssm.DescribeInstanceInformation", self._describe)
        events.register("before-send.ssm.CancelCommand", self._cancel)
        events.register("after-call.ssm.GetCommandInvocation", self._status)

    @staticmethod
    def _reply(request, body):
        return AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.1"},
                           _Body(json.dumps(body).encode()))

    def _describe(self, request, **_):
        wanted = json.loads(request.body)["Filters"][0]["Values"]
        assert len(wanted) <= ssm.BATCH
        found = [{"InstanceId": i, "PingStatus": self.ping[i], "PlatformType": "Linux"} for i in wanted if i in self.ping]
        return self._reply(request, {"InstanceInformationList": found})

    def _cancel(self, request, **_):
        body = json.loads(request.body)
        self.cancelled.append((body["CommandId"], sorted(body["InstanceIds"])))
        for instance_id in body["InstanceIds"]:
            self.statuses[instance_id] = {"Status": "Cancelled", "StatusDetails": "Cancelled"}
        return self._reply(request, {})

    def _status(self, parsed, **_):
        parsed.update(self.statuses.get(parsed.get("InstanceId"), {}))


def ssm_cluster(url, count, **fabric_options):
    fabric = Ec2Fabric(endpoint_url=url, region="us-east-1", image_id=ami(url), transport="ssm",
                       max_launch=max(count, 1), **fabric_options)
    cluster = Cluster(fabric, connect_timeout=5.0)
    machines = cluster.launch(count, name="node", wait=False)
    return cluster, fabric, machines


def command_ids(fabric):
    return sorted(c["CommandId"] for c in fabric.service_client("ssm").list_commands()["Commands"])


def test_a_broadcast_goes_out_in_batches_of_50_with_the_fanout_as_max_concurrency(aws):
    cluster, fabric, machines = ssm_cluster(aws, 120, cluster="batches")
    manager = SystemsManager(fabric, online=[m.id for m in machines])
    cluster.settings.fanout = 16
    try:
        rs = machines.run("uptime", timeout=90)
        # moto ran nothing: every invocation it reports is a Success with empty output
        assert rs.all_ok and len(rs) == 120 and {r.output for r in rs.values()} == {""}
        assert sorted(len(c["InstanceIds"]) for c in manager.sent) == [20, 50, 50]
        assert sorted(i for c in manager.sent for i in c["InstanceIds"]) == sorted(m.id for m in machines)
        for c in manager.sent:
            assert c["DocumentName"] == "AWS-RunShellScript"
            assert c["Parameters"] == {"commands": ["uptime"], "executionTimeout": ["90"]}
            assert c["MaxConcurrency"] == "16" and c["MaxErrors"] == str(len(c["InstanceIds"]))
        # each result came from the invocation of the command its batch was sent with
        assert sorted({r.detail["command_id"] for r in rs.values()}) == command_ids(fabric)
        assert rs.groups()[0].machines == machines
    finally:
        cluster.close()


def test_ssm_statuses_become_ecshell_kinds_and_agentless_instances_say_so(aws):
    cluster, fabric, machines = ssm_cluster(aws, 7, cluster="kinds")
    ids = [m.id for m in machines]
    manager = SystemsManager(fabric, online=ids[:5], lost=[ids[5]])  # ids[6]: no agent at all
    manager.statuses = {
        ids[0]: {"Status": "Success", "ResponseCode": 0, "StandardOutputContent": "hello\n"},
        ids[1]: {"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": 3,
                 "StandardOutputContent": "out\n", "StandardErrorContent": "err\n"},
        ids[2]: {"Status": "TimedOut", "StatusDetails": "ExecutionTimedOut", "ResponseCode": -1},
        ids[3]: {"Status": "Undeliverable", "StatusDetails": "Undeliverable", "ResponseCode": -1},
        ids[4]: {"Status": "Cancelled", "StatusDetails": "Cancelled", "ResponseCode": -1},
    }
    try:
        rs = machines.run("echo hello")
        by_id = {r.machine.id: r for r in rs.values()}
        assert by_id[ids[0]].ok and by_id[ids[0]].output == "hello\n"
        assert by_id[ids[1]].error == "exit" and by_id[ids[1]].exit_code == 3
        assert by_id[ids[1]].output == "out\nerr\n"  # SSM keeps the streams apart: stdout, then stderr
        assert by_id[ids[2]].error == "timeout"
        assert by_id[ids[3]].error == "unreachable"
        assert by_id[ids[4]].error == "interrupted"
        assert by_id[ids[5]].error == "unreachable" and "ConnectionLost" in by_id[ids[5]].message
        assert by_id[ids[6]].error == "unreachable" and "no SSM agent" in by_id[ids[6]].message
        # the two without an agent online were never sent anything
        assert [sorted(c["InstanceIds"]) for c in manager.sent] == [sorted(ids[:5])]
    finally:
        cluster.close()


def test_ctrl_c_cancels_what_still_runs_and_keeps_what_ended(aws):
    cluster, fabric, machines = ssm_cluster(aws, 4, cluster="cancel")
    ids = [m.id for m in machines]
    manager = SystemsManager(fabric, online=ids)
    manager.statuses = {i: {"Status": "InProgress", "StatusDetails": "InProgress"} for i in ids[2:]}
    main = threading.get_ident()
    polled = threading.Event()
    fabric.service_client("ssm").meta.events.register(
        "after-call.ssm.GetCommandInvocation", lambda **_: polled.set())
    try:
        def interrupt():
            polled.wait(30)
            time.sleep(0.3)
            signal.pthread_kill(main, signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        started = time.monotonic()
        rs = machines.run("sleep 600")
        assert time.monotonic() - started < 10
        assert rs.interrupted
        assert [rs[m].error for m in machines] == [None, None, "interrupted", "interrupted"]
        assert "CancelCommand" in rs[machines[2]].message
        assert manager.cancelled == [(command_ids(fabric)[0], sorted(ids[2:]))]
    finally:
        cluster.close()


def test_inline_output_cut_by_ssm_is_said_and_s3_gives_all_of_it(aws):
    import boto3

    cluster, fabric, machines = ssm_cluster(aws, 2, cluster="s3")
    ids = [m.id for m in machines]
    manager = SystemsManager(fabric, online=ids)
    long_text = "x" * 30000 + "\n"
    inline = long_text[:ssm.STDOUT_INLINE]
    manager.statuses = {i: {"Status": "Success", "ResponseCode": 0, "StandardOutputContent": inline} for i in ids}
    try:
        rs = machines.run("yes x | head -c 30000")
        for r in rs.values():
            assert r.ok and len(r.output) == ssm.STDOUT_INLINE and r.detail["truncated"]
            assert "24,000 characters of stdout" in r.message and "ssm_output_bucket" in r.message
        # With a bucket, the output is read from where the agent writes it (moto's agent writes
        # nothing, so the test puts there what a real agent would).
        s3 = boto3.session.Session(region_name="us-east-1").client("s3", endpoint_url=aws)
        s3.create_bucket(Bucket="ecshell-out")
        fabric.ssm_output_bucket = "ecshell-out"
        real_send = fabric.service_client("ssm").send_command

        def send_and_write(**params):
            reply = real_send(**params)
            for i in params["InstanceIds"]:
                key = ssm.output_key(params["OutputS3KeyPrefix"], reply["Command"]["CommandId"], i, "stdout")
                s3.put_object(Bucket=params["OutputS3BucketName"], Key=key, Body=long_text.encode())
            return reply

        fabric.service_client("ssm").send_command = send_and_write
        rs = machines.run("yes x | head -c 30000")
        for r in rs.values():
            assert r.ok and r.output == long_text and "truncated" not in r.detail and not r.message
        assert manager.sent[-1]["OutputS3BucketName"] == "ecshell-out"
    finally:
        cluster.close()


def test_what_ssm_cannot_carry_is_refused_before_anything_is_sent(aws):
    cluster, fabric, machines = ssm_cluster(aws, 1, cluster="refuse")
    manager = SystemsManager(fabric, online=[m.id for m in machines])
    try:
        with pytest.raises(ArgumentError, match="no stdin"):
            machines.run("cat", input="x")
        with pytest.raises(ArgumentError, match="direct"):
            machines.run("true", transport="bogus")
        assert manager.sent == [] and command_ids(fabric) == []
    finally:
        cluster.close()


def test_ssm_refuses_machines_that_are_not_ec2_instances(cluster):
    local = cluster.launch(1, name="loc")
    with pytest.raises(ArgumentError, match="EC2 instances only"):
        local.run("true", transport="ssm")
    assert local.run("echo ok", transport="direct").all_ok


@pytest.mark.parametrize("reply,expected", [
    ({"Status": "InProgress"}, None),
    ({"Status": "Delayed"}, None),
    ({"Status": "Success", "ResponseCode": 0}, {"exit_code": 0}),
    ({"Status": "Failed", "ResponseCode": 2}, {"exit_code": 2, "error": "exit"}),
    ({"Status": "Failed", "ResponseCode": -1, "StatusDetails": "InvalidPlatform"}, {"error": "exit"}),
    ({"Status": "TimedOut", "StatusDetails": "DeliveryTimedOut"}, {"error": "timeout"}),
    ({"Status": "Cancelled"}, {"error": "interrupted"}),
    ({"Status": "Undeliverable"}, {"error": "unreachable"}),
])
def test_status_mapping(reply, expected):
    found = ssm.outcome(dict(reply, CommandId="c"))
    if expected is None:
        assert found is None
    else:
        assert {k: found.get(k) for k in expected} == expected


def test_output_key_is_where_ssm_writes_run_shell_script_output():
    assert ssm.output_key("ecshell/", "cid", "i-1", "stdout") == "ecshell/cid/i-1/awsrunShellScript/0.awsrunShellScript/stdout"
    assert ssm.output_key("", "cid", "i-1", "stderr") == "cid/i-1/awsrunShellScript/0.awsrunShellScript/stderr"
    assert os.path.basename(ssm.output_key("p", "c", "i", "stderr")) == "stderr"
