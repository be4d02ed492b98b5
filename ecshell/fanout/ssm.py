"""SSM Run Command: AWS fans a broadcast out to EC2 instances, with no inbound SSH.

>>> cluster = Cluster(Ec2Fabric(region="eu-west-1", transport="ssm"))   # doctest: +SKIP
>>> cluster.run("uptime")                                               # doctest: +SKIP
>>> web.run("uptime", transport="ssm")       # or per call                # doctest: +SKIP

For the instances of each fabric: DescribeInstanceInformation says which
have an SSM agent online (the others are reported ``unreachable``, saying
why); SendCommand runs ``AWS-RunShellScript`` on the rest, at most
:data:`BATCH` instance ids per call (the API's limit), with MaxConcurrency
from ``c.EcShell.fanout`` and MaxErrors as large as the batch (one machine's
failure never stops the others, as on the direct path); GetCommandInvocation
is polled per instance until it ends, and the output is read from S3 when
``c.Ec2Fabric.ssm_output_bucket`` is set. Ctrl-C and the broadcast's total
timeout send CancelCommand for whatever still runs.

SSM's statuses as ecshell's kinds: see :data:`KINDS`. What SSM cannot give
that the direct path does: stdin, a PTY, output streamed as it arrives, and
stdout and stderr interleaved in arrival order (SSM keeps them apart: a
result holds stdout, then stderr); its inline output is cut at 24,000
characters of stdout and 8,000 of stderr (the result says so; S3 has all),
and it is text (SSM decodes it), not the exact bytes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Optional

from ..errors import ErrorKind
from .base import Fanout, FanoutRun, command_line_only
from .routes import SSM

if TYPE_CHECKING:
    from ..commands import Shell
    from ..machine import Machine

#: Most instance ids SendCommand (and a DescribeInstanceInformation filter) takes in one call.
BATCH = 50
#: GetCommandInvocation's inline output: at most this many characters of stdout, and of stderr.
STDOUT_INLINE, STDERR_INLINE = 24000, 8000
#: AWS-RunShellScript's executionTimeout bounds, in seconds (used when the broadcast has no timeout: the most).
EXECUTION_TIMEOUT_MAX = 172800
#: SendCommand's TimeoutSeconds (time to deliver the command to an instance) may not be below this.
DELIVERY_TIMEOUT_MIN = 30
#: Seconds between GetCommandInvocation polls of one instance, first and at most.
POLL_FIRST, POLL_MAX = 0.5, 2.0

#: Final invocation statuses as (error kind, what it means); Success and Failed are exits.
KINDS = {
    "TimedOut": (ErrorKind.TIMEOUT, "SSM timed the command out"),
    "Cancelled": (ErrorKind.INTERRUPTED, "cancelled through SSM"),
    "Undeliverable": (ErrorKind.UNREACHABLE, "SSM could not deliver the command to the instance"),
    "Terminated": (ErrorKind.INTERRUPTED, "SSM stopped sending the command (MaxErrors reached)"),
}
#: Invocation statuses of a command that has not ended.
RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}


def _client_error(exc: Exception) -> tuple[str, str]:
    """(AWS error code, message) of a botocore error, ('', str(exc)) for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return str(error.get("Code", "")), str(error.get("Message", exc))
    return "", str(exc)


def outcome(reply: dict[str, Any]) -> Optional[dict[str, Any]]:
    """What a GetCommandInvocation reply means for the Result; None while the command runs.

    The keys are :meth:`FanoutRun.finish`'s (``exit_code``, ``error``,
    ``message``, ``detail``) plus ``stdout``/``stderr`` (the inline text).
    """
    status = reply.get("Status", "")
    if status in RUNNING:
        return None
    details = reply.get("StatusDetails", "")
    stdout = reply.get("StandardOutputContent", "") or ""
    stderr = reply.get("StandardErrorContent", "") or ""
    detail: dict[str, Any] = {"ssm_status": status, "ssm_status_details": details,
                              "command_id": reply.get("CommandId")}
    code = reply.get("ResponseCode")
    found: dict[str, Any] = {"stdout": stdout, "stderr": stderr, "detail": detail}
    if status == "Success":
        found.update(exit_code=code if isinstance(code, int) and code >= 0 else 0)
    elif status == "Failed":
        if isinstance(code, int) and code > 0:
            found.update(exit_code=code, error=ErrorKind.EXIT)
        else:
            found.update(error=ErrorKind.EXIT, message=f"SSM: Failed ({details or 'no exit code'})")
    else:
        kind, meaning = KINDS.get(status, (ErrorKind.UNREACHABLE, f"SSM status {status!r}"))
        found.update(error=kind, message=f"{meaning} ({status}: {details})" if details else f"{meaning} ({status})")
    cut = [f"the first {limit:,} characters of {stream}" for stream, text, limit in
           (("stdout", stdout, STDOUT_INLINE), ("stderr", stderr, STDERR_INLINE)) if len(text) >= limit]
    if cut:
        detail["truncated"] = True
        note = (f"SSM returned only {' and '.join(cut)} inline; "
                "set c.Ec2Fabric.ssm_output_bucket to read all of it from S3")
        found["message"] = f"{found['message']}; {note}" if found.get("message") else note
    return found


def output_key(prefix: str, command_id: str, instance_id: str, stream: str) -> str:
    """Where SSM puts one stream of AWS-RunShellScript's output in the bucket."""
    key = f"{command_id}/{instance_id}/awsrunShellScript/0.awsrunShellScript/{stream}"
    return f"{prefix.strip('/')}/{key}" if prefix.strip("/") else key


class SsmFanout(Fanout):
    """Broadcasts through AWS Systems Manager Run Command to the instances of Ec2Fabrics."""

    name = SSM

    def refuses(self, command: Shell) -> Optional[str]:
        return command_line_only("SSM Run Command", command)

    def cannot_reach(self, machines: list[Machine]) -> dict[str, str]:
        return {m.name: "SSM Run Command reaches EC2 instances only" for m in machines
                if getattr(m.fabric, "kind", None) != "ec2"}

    def broadcast(self, machines: list[Machine], command: Shell, run: FanoutRun) -> None:
        by_fabric: dict[int, list[Machine]] = {}
        for machine in machines:
            by_fabric.setdefault(id(machine.fabric), []).append(machine)
        sent: list[_Sent] = []
        for members in by_fabric.values():
            if run.stopped():
                break
            sent += _FabricRun(members[0].fabric, run).send(members, command)
        _Poller(sent, run).until_done()


class _Sent:
    """One SendCommand call: its command id, fabric and machines by instance id."""

    def __init__(self, fabric: Any, command_id: str, machines: dict[str, Machine]):
        self.fabric = fabric
        self.command_id = command_id
        self.machines = machines


class _FabricRun:
    """The agent check and SendCommand calls for one fabric's instances."""

    def __init__(self, fabric: Any, run: FanoutRun):
        self.fabric = fabric
        self.run = run
        self.ssm = fabric.service_client("ssm")

    def send(self, machines: list[Machine], command: Shell) -> list[_Sent]:
        online = self._with_agent(machines)
        settings = self.run.settings
        timeout = self.run.timeout
        parameters = {
            "commands": [command.command],
            "executionTimeout": [str(math.ceil(timeout) if timeout else EXECUTION_TIMEOUT_MAX)],
        }
        options: dict[str, Any] = {}
        if self.fabric.ssm_output_bucket:
            options.update(OutputS3BucketName=self.fabric.ssm_output_bucket,
                           OutputS3KeyPrefix=self.fabric.ssm_output_prefix)
        sent = []
        for start in range(0, len(online), BATCH):
            if self.run.stopped():
                break
            batch = online[start:start + BATCH]
            try:
                reply = self.ssm.send_command(
                    InstanceIds=[m.id for m in batch], DocumentName="AWS-RunShellScript",
                    Parameters=parameters, Comment=f"ecshell: {command.command}"[:100],
                    TimeoutSeconds=max(DELIVERY_TIMEOUT_MIN, math.ceil(settings.connect_timeout)),
                    MaxConcurrency=str(min(settings.fanout, len(batch))), MaxErrors=str(len(batch)),
                    **options)
            except Exception as exc:
                code, message = _client_error(exc)
                for machine in batch:
                    self.run.finish(machine, error=ErrorKind.UNREACHABLE,
                                    message=f"SSM SendCommand refused: {code + ': ' if code else ''}{message}")
                continue
            sent.append(_Sent(self.fabric, reply["Command"]["CommandId"], {m.id: m for m in batch}))
        return sent

    def _with_agent(self, machines: list[Machine]) -> list[Machine]:
        """The machines whose SSM agent is online; the others finished as ``unreachable``."""
        online = []
        for start in range(0, len(machines), BATCH):
            batch = machines[start:start + BATCH]
            found: dict[str, dict] = {}
            pages = self.ssm.get_paginator("describe_instance_information").paginate(
                Filters=[{"Key": "InstanceIds", "Values": [m.id for m in batch]}])
            for page in pages:
                for info in page.get("InstanceInformationList", []):
                    found[info["InstanceId"]] = info
            for machine in batch:
                info = found.get(machine.id)
                if info is None:
                    self.run.finish(machine, error=ErrorKind.UNREACHABLE, message=(
                        f"{machine.id} has no SSM agent registered with Systems Manager (no agent, or no "
                        "instance profile allowing it); run it with transport='direct'"))
                elif info.get("PingStatus") != "Online":
                    self.run.finish(machine, error=ErrorKind.UNREACHABLE, message=(
                        f"the SSM agent of {machine.id} is {info.get('PingStatus')}, not Online"))
                else:
                    online.append(machine)
        return online


class _Poller:
    """Polls GetCommandInvocation until every sent instance has ended, or the broadcast stops."""

    def __init__(self, sent: list[_Sent], run: FanoutRun):
        self.sent = sent
        self.run = run
        self.pending = [(s, instance_id) for s in sent for instance_id in s.machines]
        timeout = run.timeout
        # SSM itself ends a command at its executionTimeout; past that and the delivery time
        # (and a margin for the agent's report), the controller stops waiting and cancels.
        self.give_up = (run.started + timeout + max(DELIVERY_TIMEOUT_MIN, run.settings.connect_timeout) + 30
                        if timeout else None)

    def until_done(self) -> None:
        wait = POLL_FIRST
        while self.pending:
            if self.run.stopped():
                self._cancel(ErrorKind.INTERRUPTED, "interrupted; cancelled through SSM CancelCommand")
                return
            if self.give_up is not None and time.monotonic() >= self.give_up:
                self._cancel(ErrorKind.TIMEOUT, f"no end reported after {self.run.timeout:g}s; "
                                                "cancelled through SSM CancelCommand")
                return
            still = []
            for sent, instance_id in self.pending:
                if self.run.stopped():
                    still.append((sent, instance_id))
                    continue
                if not self._poll(sent, instance_id):
                    still.append((sent, instance_id))
            self.pending = still
            if self.pending:
                self.run.cancel.wait(wait)
                wait = min(POLL_MAX, wait * 1.5)

    def _poll(self, sent: _Sent, instance_id: str) -> bool:
        """True once the instance's invocation has ended and its Result is reported."""
        machine = sent.machines[instance_id]
        ssm = sent.fabric.service_client("ssm")
        try:
            reply = ssm.get_command_invocation(CommandId=sent.command_id, InstanceId=instance_id)
        except Exception as exc:
            code, message = _client_error(exc)
            if code == "InvocationDoesNotExist":
                return False  # SSM has not registered it yet
            self.run.finish(machine, error=ErrorKind.UNREACHABLE,
                            message=f"SSM GetCommandInvocation failed: {code + ': ' if code else ''}{message}")
            return True
        found = outcome(reply)
        if found is None:
            return False
        stdout, stderr = found.pop("stdout"), found.pop("stderr")
        bucket = sent.fabric.ssm_output_bucket
        if bucket:
            stdout = self._from_s3(sent, instance_id, "stdout", stdout)
            stderr = self._from_s3(sent, instance_id, "stderr", stderr)
            found["detail"].pop("truncated", None)
            if found.get("message", "").startswith("SSM returned only"):
                found.pop("message")
            found["detail"]["output_from"] = f"s3://{bucket}"
        self.run.output(machine, stdout.encode() + stderr.encode())
        self.run.finish(machine, **found)
        return True

    @staticmethod
    def _from_s3(sent: _Sent, instance_id: str, stream: str, inline: str) -> str:
        """The whole stream from the bucket; ``inline`` when SSM wrote no object (an empty stream)."""
        s3 = sent.fabric.service_client("s3")
        key = output_key(sent.fabric.ssm_output_prefix, sent.command_id, instance_id, stream)
        try:
            body = s3.get_object(Bucket=sent.fabric.ssm_output_bucket, Key=key)["Body"].read()
        except Exception as exc:
            code, _ = _client_error(exc)
            if code in ("NoSuchKey", "404"):
                return inline
            raise
        return body.decode("utf-8", "replace")

    def _cancel(self, kind: ErrorKind, message: str) -> None:
        """CancelCommand for every instance still running; each reported as ``kind``."""
        by_command: dict[int, tuple[_Sent, list[str]]] = {}
        for sent, instance_id in self.pending:
            by_command.setdefault(id(sent), (sent, []))[1].append(instance_id)
        for sent, ids in by_command.values():
            note = message
            try:
                sent.fabric.service_client("ssm").cancel_command(CommandId=sent.command_id, InstanceIds=ids)
            except Exception as exc:
                code, text = _client_error(exc)
                note = f"{message.split(';')[0]}; SSM CancelCommand failed ({code or text}): it may still run"
            for instance_id in ids:
                self.run.finish(sent.machines[instance_id], error=kind, message=note,
                                detail={"command_id": sent.command_id})
        self.pending = []
