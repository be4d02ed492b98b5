"""One-time setup in a region, idempotent: the operator's key pair and an SSH-only security group.

>>> ec2.import_key_pair()                    # "ecshell-<user>", from the ecshell client key  # doctest: +SKIP
>>> ec2.ensure_security_group()              # port 22 from this machine's public address only  # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import ipaddress
from typing import TYPE_CHECKING, Any

from .errors import Ec2Error, aws_call
from .tags import OWNER_TAG, aws_tag_list

#: Answers with the caller's public IPv4 address; used only when no cidr is given.
CHECKIP_URL = "https://checkip.amazonaws.com"


def _key_body(line):
    return " ".join(line.split()[:2])


def operator_cidr(url: str = CHECKIP_URL, timeout: float = 5.0) -> str:
    """This machine's public IPv4 address as a /32, as AWS sees it."""
    import urllib.request  # with http.client and ssl, ~20 ms: not for every Ec2Fabric import

    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            text = reply.read(64).decode().strip()
        return f"{ipaddress.IPv4Address(text)}/32"
    except (OSError, ValueError) as exc:
        raise Ec2Error(f"cannot find this machine's public address from {url} ({exc})", code="NoAddress",
                       remedy="pass cidr='203.0.113.7/32' to ensure_security_group") from None


def _default_vpc(fabric: Setup) -> str:
    client = fabric.client
    with aws_call("finding the VPC"):
        if fabric.subnet_id:
            subnets = client.describe_subnets(SubnetIds=[fabric.subnet_id])["Subnets"]
            return subnets[0]["VpcId"]
        vpcs = client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise Ec2Error(f"{fabric.region} has no default VPC", code="NoDefaultVpc",
                       remedy="set subnet_id (its VPC is used), or pass vpc_id=")
    return vpcs[0]["VpcId"]


class Setup:
    """Ec2Fabric's one-time setup in a region; mixed into the fabric, so ``self`` is the Ec2Fabric."""

    if TYPE_CHECKING:  # what the methods use of the Ec2Fabric
        client: Any
        region: str | None
        owner: str
        key_name: str | None
        security_groups: list[str]
        subnet_id: str | None
        ssh_port: int

        def operator_public_key(self) -> str: ...

    def import_key_pair(self, name: str | None = None, public_key: str | None = None) -> str:
        """Import the operator's public key as an EC2 key pair (idempotent); its name.

        ``public_key`` defaults to identity_file's .pub, ``name`` to ``ecshell-<user>``.
        An existing pair with the same key is kept; one with another key under the
        same name is an error, never overwritten. Sets ``key_name`` when it was unset.
        """
        name = name or f"ecshell-{getpass.getuser()}"
        public_key = public_key or self.operator_public_key()
        client = self.client
        try:
            with aws_call(f"looking up key pair {name}"):
                found = client.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
        except Ec2Error as exc:
            if exc.code != "InvalidKeyPair.NotFound":
                raise
            found = []
        if found:
            existing = found[0].get("PublicKey")
            if existing and _key_body(existing) != _key_body(public_key):
                raise Ec2Error(f"key pair {name} exists in {self.region} with another public key",
                               code="InvalidKeyPair.Duplicate",
                               remedy="pass another name=, or delete the old pair (aws ec2 delete-key-pair)")
        else:
            with aws_call(f"importing key pair {name}"):
                client.import_key_pair(
                    KeyName=name, PublicKeyMaterial=public_key.encode(),
                    TagSpecifications=[{"ResourceType": "key-pair",
                                        "Tags": aws_tag_list({OWNER_TAG: self.owner})}])
        if not self.key_name:
            self.key_name = name
        return name

    def ensure_security_group(self, name: str = "ecshell-ssh", cidr: str | None = None,
                              vpc_id: str | None = None) -> str:
        """A security group opening SSH only to the operator's address (idempotent); its id.

        The group allows TCP ``ssh_port`` from ``cidr`` only (default: this machine's
        /32). It is created if missing, the rule added if missing; other rules are
        left alone. The group id is added to ``security_groups``.
        """
        cidr = str(ipaddress.ip_network(cidr, strict=False)) if cidr else operator_cidr()
        vpc_id = vpc_id or _default_vpc(self)
        port = self.ssh_port
        client = self.client
        with aws_call(f"looking up security group {name}"):
            groups = client.describe_security_groups(Filters=[
                {"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
        if groups:
            group = groups[0]
        else:
            with aws_call(f"creating security group {name}"):
                group_id = client.create_security_group(
                    GroupName=name, VpcId=vpc_id, Description="SSH from the ecshell operator only",
                    TagSpecifications=[{"ResourceType": "security-group",
                                        "Tags": aws_tag_list({OWNER_TAG: self.owner})}])["GroupId"]
            group = {"GroupId": group_id, "IpPermissions": []}
        present = any(
            perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == port and perm.get("ToPort") == port
            and any(r.get("CidrIp") == cidr for r in perm.get("IpRanges", []))
            for perm in group.get("IpPermissions", []))
        if not present:
            try:
                with aws_call(f"opening port {port} of {name} to {cidr}"):
                    client.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=[{
                        "IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                        "IpRanges": [{"CidrIp": cidr, "Description": "ecshell operator"}]}])
            except Ec2Error as exc:
                if exc.code != "InvalidPermission.Duplicate":
                    raise
        if group["GroupId"] not in self.security_groups:
            self.security_groups = list(self.security_groups) + [group["GroupId"]]
        return group["GroupId"]
