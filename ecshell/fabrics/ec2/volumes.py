"""EBS volumes: create (tagged), attach to a machine, detach, delete.

>>> vol = ec2.create_volume(20, name="data")                     # doctest: +SKIP
>>> ec2.attach_volume(vol["id"], cluster.machine("db-0"))        # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import aws_call
from .tags import CLUSTER_TAG, OWNER_TAG, aws_tag_list, tag_dict

if TYPE_CHECKING:
    from ...machine import Machine


def _row(volume):
    attachments = volume.get("Attachments") or []
    return {"id": volume["VolumeId"], "size": volume.get("Size"), "type": volume.get("VolumeType"),
            "state": volume.get("State"), "availability_zone": volume.get("AvailabilityZone"),
            "instance": attachments[0].get("InstanceId") if attachments else None,
            "device": attachments[0].get("Device") if attachments else None,
            "tags": tag_dict(volume.get("Tags"))}


def _wait(fabric: Volumes, name: str, volume_id: str) -> None:
    delay = 15 if not fabric.endpoint_url else 1
    with aws_call(f"waiting for volume {volume_id}"):
        fabric.client.get_waiter(name).wait(VolumeIds=[volume_id],
                                            WaiterConfig={"Delay": delay, "MaxAttempts": 600 // delay})


def describe_volume(fabric: Volumes, volume_id: str) -> dict[str, Any]:
    with aws_call(f"describing volume {volume_id}"):
        return _row(fabric.client.describe_volumes(VolumeIds=[volume_id])["Volumes"][0])


class Volumes:
    """Ec2Fabric's EBS volumes; mixed into the fabric, so ``self`` is the Ec2Fabric."""

    if TYPE_CHECKING:  # what the methods use of the Ec2Fabric
        client: Any
        owner: str
        cluster: str
        endpoint_url: str | None

    def create_volume(self, size: int, availability_zone: str | None = None, volume_type: str = "gp3",
                      name: str | None = None, wait: bool = True) -> dict[str, Any]:
        """A new volume of ``size`` GiB, tagged with the owner; in the first zone of the region by default."""
        if availability_zone is None:
            with aws_call("listing availability zones"):
                zones = self.client.describe_availability_zones(
                    Filters=[{"Name": "state", "Values": ["available"]}])["AvailabilityZones"]
            availability_zone = sorted(z["ZoneName"] for z in zones)[0]
        tags = {OWNER_TAG: self.owner, CLUSTER_TAG: self.cluster}
        if name:
            tags["Name"] = name
        with aws_call(f"creating a {size} GiB volume"):
            volume = self.client.create_volume(
                Size=int(size), AvailabilityZone=availability_zone, VolumeType=volume_type,
                TagSpecifications=[{"ResourceType": "volume", "Tags": aws_tag_list(tags)}])
        if wait:
            _wait(self, "volume_available", volume["VolumeId"])
        return describe_volume(self, volume["VolumeId"])

    def attach_volume(self, volume_id: str, machine: Machine | str, device: str = "/dev/sdf",
                      wait: bool = True) -> dict[str, Any]:
        instance_id = getattr(machine, "id", machine)
        with aws_call(f"attaching {volume_id} to {instance_id}"):
            self.client.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        if wait:
            _wait(self, "volume_in_use", volume_id)
        return describe_volume(self, volume_id)

    def detach_volume(self, volume_id: str, force: bool = False, wait: bool = True) -> dict[str, Any]:
        current = describe_volume(self, volume_id)
        params = {"VolumeId": volume_id, "Force": force}
        if current["instance"]:
            # naming the attachment refuses to detach it from anything else
            params.update(InstanceId=current["instance"], Device=current["device"])
        with aws_call(f"detaching {volume_id}"):
            self.client.detach_volume(**params)
        if wait:
            _wait(self, "volume_available", volume_id)
        return describe_volume(self, volume_id)

    def delete_volume(self, volume_id: str) -> None:
        with aws_call(f"deleting {volume_id}"):
            self.client.delete_volume(VolumeId=volume_id)

    def list_volumes(self) -> list[dict[str, Any]]:
        """Volumes tagged with this owner."""
        with aws_call("listing volumes"):
            pages = self.client.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [self.owner]}])
            return [_row(v) for page in pages for v in page.get("Volumes", [])]
