"""AWS failures as :class:`Ec2Error`: the AWS error code, what was being done, and a remedy.

``with aws_call("launching web-0"): client.run_instances(...)`` turns a
botocore ``ClientError`` into ``Ec2Error(code="InvalidAMIID.NotFound", ...)``
whose message ends with what to do about it, and a missing credential chain
into one line that says what to set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from ...errors import FabricError

#: What to do about the AWS error codes an operator meets most.
REMEDIES = {
    "AuthFailure": "the credentials were refused: check AWS_PROFILE / AWS_ACCESS_KEY_ID, and the clock of this machine",
    "InvalidClientTokenId": "the access key is unknown to AWS: check AWS_ACCESS_KEY_ID or the profile's credentials",
    "SignatureDoesNotMatch": "the secret key does not match the access key: check AWS_SECRET_ACCESS_KEY",
    "ExpiredToken": "the session token expired: refresh it (aws sso login, or new temporary credentials)",
    "RequestExpired": "the request was signed too long ago: check this machine's clock",
    "UnauthorizedOperation": "the credentials lack this permission: grant it in IAM (the message names the action)",
    "OptInRequired": "the account is not subscribed to this region or AMI: opt in from the console, or pick another region",
    "InvalidAMIID.NotFound": "no such image in this region: check image_id for this region (ec2.list_images(), or the AMI catalog)",
    "InvalidAMIID.Malformed": "image_id must look like ami-0123456789abcdef0",
    "InvalidKeyPair.NotFound": "no such key pair in this region: run ec2.import_key_pair(), or set key_name to an existing one",
    "InvalidGroup.NotFound": "no such security group in this VPC: run ec2.ensure_security_group(), or fix security_groups",
    "InvalidSubnetID.NotFound": "no such subnet in this region: fix subnet_id (aws ec2 describe-subnets)",
    "InvalidInstanceID.NotFound": "the instance is gone (terminated a while ago?): cluster.refresh() forgets it",
    "InvalidInstanceID.Malformed": "instance ids look like i-0123456789abcdef0",
    "InsufficientInstanceCapacity": "AWS has no capacity for this type here now: try another instance_type, subnet (zone) or later",
    "InstanceLimitExceeded": "the account's instance limit is reached: terminate some, or ask AWS for a higher limit",
    "VcpuLimitExceeded": "the account's vCPU limit is reached: terminate some, or request a quota increase",
    "MaxSpotInstanceCountExceeded": "the account's spot limit is reached: launch on demand (spot=False) or request more",
    "SpotMaxPriceTooLow": "the spot price is above spot_max_price: raise it, or launch on demand",
    "Unsupported": "this combination is not offered here (type in this zone, spot for this type, ...): change instance_type or subnet",
    "InvalidParameterValue": "a launch setting was refused: the message names it",
    "InvalidParameterCombination": "two settings do not go together (security group names with a subnet?): the message names them",
    "RequestLimitExceeded": "AWS throttled the calls even after retries: wait a minute, or launch fewer at once",
    "Throttling": "AWS throttled the calls even after retries: wait a minute, or launch fewer at once",
    "InvalidKeyPair.Duplicate": "a key pair with that name exists already: pick another name or delete the old one",
    "InvalidGroup.Duplicate": "a security group with that name exists already in this VPC",
    "InvalidVolume.NotFound": "no such volume in this region",
    "IncorrectState": "the resource is not in a state that allows this: wait for it, or check its state",
    "VolumeInUse": "the volume is attached: detach it first (ec2.detach_volume)",
    "InvalidAMIName.Duplicate": "an image with that name exists already: pick another name",
    "MissingParameter": "a required setting is missing: the message names it",
    "DryRunOperation": "a dry run succeeded: nothing was done",
}

MISSING_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE to a profile in ~/.aws/config, or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run `aws configure` / `aws sso login`)"
)


class Ec2Error(FabricError):
    """An EC2 call failed. ``code`` is the AWS error code (or a short local one)."""

    def __init__(self, message: str, code: str | None = None, remedy: str | None = None, action: str | None = None,
                 created: Iterable[str] = (), terminated: Iterable[str] = ()) -> None:
        self.message = message
        self.code = code
        self.remedy = remedy
        self.action = action
        #: Instance ids a failed launch had created, and those of them it terminated again.
        self.created = list(created)
        self.terminated = list(terminated)
        text = message
        if remedy:
            text = f"{text}; {remedy}"
        super().__init__(text)

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the message is the whole story.
        return [f"{type(self).__name__}: {self}"]


def translate(exc: BaseException, action: str) -> Ec2Error | None:
    """An :class:`Ec2Error` for a boto3/botocore exception, or None if it is not one of theirs."""
    if isinstance(exc, Ec2Error):
        return exc
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "Unknown"
        message = error.get("Message") or str(exc)
        remedy = REMEDIES.get(code)
        if remedy is None and code.endswith(".NotFound"):
            remedy = "it does not exist in this region/account: check the id and the region"
        return Ec2Error(f"{action} failed: {code}: {message}", code=code, remedy=remedy, action=action)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return Ec2Error(MISSING_CREDENTIALS, code="NoCredentials", action=action)
    if isinstance(exc, bx.ProfileNotFound):
        return Ec2Error(f"AWS profile {exc.kwargs.get('profile')!r} is not in ~/.aws/config or ~/.aws/credentials: "
                        "fix AWS_PROFILE / profile=, or run `aws configure --profile NAME`",
                        code="ProfileNotFound", action=action)
    if isinstance(exc, bx.NoRegionError):
        return Ec2Error("no AWS region: set region='eu-west-1' (c.Ec2Fabric.region) or AWS_REGION",
                        code="NoRegion", action=action)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return Ec2Error(f"{action} failed: cannot reach the EC2 endpoint ({exc})",
                        code="Unreachable", remedy="check the network, the region, and endpoint_url", action=action)
    if isinstance(exc, bx.BotoCoreError):
        return Ec2Error(f"{action} failed: {exc}", code=type(exc).__name__, action=action)
    return None


@contextlib.contextmanager
def aws_call(action: str) -> Iterator[None]:
    """Re-raise boto3/botocore failures inside the block as :class:`Ec2Error`."""
    try:
        yield
    except Exception as exc:
        translated = translate(exc, action)
        if translated is None or translated is exc:
            raise
        raise translated from None
