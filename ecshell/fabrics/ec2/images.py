"""AMIs bundled from running machines: where they came from travels with them as tags.

>>> image = ec2.bundle(cluster.machine("web-0"))     # waits until available  # doctest: +SKIP
>>> ec2.list_images()                                # doctest: +SKIP
>>> ec2.deregister_image(image["id"])                # and its snapshots      # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import Ec2Error, aws_call
from .tags import (CLUSTER_TAG, IMAGE_TAG, OWNER_TAG, SOURCE_NAME_TAG, SOURCE_TAG, aws_tag_list, marker_tags,
                   markers_from_tags, tag_dict)

if TYPE_CHECKING:
    from ...machine import Machine


def _markers_of(machine):
    """The machine's markers at bundle time, if it can tell (issue 5's Machine.markers())."""
    reader = getattr(machine, "markers", None)
    if reader is None:
        return []
    try:
        found = reader()
    except Exception:  # a machine that cannot answer is bundled without markers
        return []
    if isinstance(found, dict) and machine.name in found and isinstance(found[machine.name], dict):
        found = found[machine.name]
    return list(found)


def _image_row(image):
    tags = tag_dict(image.get("Tags"))
    return {"id": image["ImageId"], "name": image.get("Name"), "state": image.get("State"),
            "created": image.get("CreationDate"), "source": tags.get(SOURCE_TAG),
            "source_name": tags.get(SOURCE_NAME_TAG), "markers": markers_from_tags(tags),
            "snapshots": [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
                          if m.get("Ebs", {}).get("SnapshotId")],
            "tags": tags}


def describe_image(fabric: Images, image_id: str) -> dict[str, Any]:
    with aws_call(f"describing image {image_id}"):
        images = fabric.client.describe_images(ImageIds=[image_id])["Images"]
    if not images:
        raise Ec2Error(f"image {image_id} not found", code="InvalidAMIID.NotFound")
    return _image_row(images[0])


class Images:
    """Ec2Fabric's AMIs; mixed into the fabric, so ``self`` is the Ec2Fabric."""

    if TYPE_CHECKING:  # what the methods use of the Ec2Fabric
        client: Any
        owner: str
        cluster: str
        endpoint_url: str | None

    def bundle(self, machine: Machine | str, name: str | None = None, markers: Iterable[str] | None = None,
               wait: bool = True, reboot: bool = False) -> dict[str, Any]:
        """Make an AMI of a running machine, tagged with its source and markers.

        ``machine`` is a Machine or an instance id.
        """
        instance_id = getattr(machine, "id", machine)
        source_name = getattr(machine, "name", instance_id)
        if markers is None:
            markers = _markers_of(machine) if not isinstance(machine, str) else []
        name = name or f"{source_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        tags = {"Name": name, OWNER_TAG: self.owner, CLUSTER_TAG: self.cluster,
                SOURCE_TAG: instance_id, SOURCE_NAME_TAG: source_name}
        tags.update(marker_tags(markers))
        with aws_call(f"bundling {source_name} into an image"):
            image_id = self.client.create_image(
                InstanceId=instance_id, Name=name, NoReboot=not reboot,
                Description=f"ecshell bundle of {source_name} ({instance_id})",
                TagSpecifications=[{"ResourceType": "image", "Tags": aws_tag_list(tags)}])["ImageId"]
        if wait:
            delay = 15 if not self.endpoint_url else 1
            with aws_call(f"waiting for image {image_id}"):
                self.client.get_waiter("image_available").wait(
                    ImageIds=[image_id], WaiterConfig={"Delay": delay, "MaxAttempts": 3600 // delay})
        image = describe_image(self, image_id)
        snapshots = image["snapshots"]
        if snapshots:
            # Tagged afterwards: the snapshots exist only once the image does.
            with aws_call(f"tagging the snapshots of {image_id}"):
                self.client.create_tags(Resources=snapshots, Tags=aws_tag_list(
                    {OWNER_TAG: self.owner, SOURCE_TAG: instance_id, IMAGE_TAG: image_id}))
        return image

    def list_images(self) -> list[dict[str, Any]]:
        """Images this owner bundled, newest first."""
        with aws_call("listing images"):
            images = self.client.describe_images(
                Owners=["self"], Filters=[{"Name": f"tag:{OWNER_TAG}", "Values": [self.owner]}])["Images"]
        return sorted((_image_row(i) for i in images), key=lambda r: r["created"] or "", reverse=True)

    def deregister_image(self, image_id: str, delete_snapshots: bool = True) -> list[str]:
        """Deregister an image and (by default) delete its snapshots; the snapshot ids deleted."""
        image = describe_image(self, image_id)
        with aws_call(f"deregistering {image_id}"):
            self.client.deregister_image(ImageId=image_id)
        deleted = []
        if delete_snapshots:
            for snapshot in image["snapshots"]:
                with aws_call(f"deleting snapshot {snapshot} of {image_id}"):
                    self.client.delete_snapshot(SnapshotId=snapshot)
                deleted.append(snapshot)
        return deleted
