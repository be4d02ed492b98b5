"""The tags ecshell writes on EC2 resources, and AWS's tag lists as dicts and back.

>>> tag_dict([{"Key": "Name", "Value": "web-0"}, {"Key": OWNER_TAG, "Value": "ops@laptop"}])
{'Name': 'web-0', 'ecshell:owner': 'ops@laptop'}
>>> aws_tag_list({CLUSTER_TAG: "default", "port": 22})
[{'Key': 'ecshell:cluster', 'Value': 'default'}, {'Key': 'port', 'Value': '22'}]
>>> markers_from_tags(marker_tags(["built", "tested"]))
['built', 'tested']

Instances, volumes, images, snapshots, key pairs and security groups made
here carry OWNER_TAG; discovery, listing and the TTL reaper look only at
resources with this operator's owner value.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

#: Who launched it (``<user>@<host>`` by default): every resource ecshell creates.
OWNER_TAG = "ecshell:owner"
#: Which cluster an instance (volume, image) belongs to; discovery lists one cluster.
CLUSTER_TAG = "ecshell:cluster"
#: The same value on every instance of one launch call, to undo a failed launch.
LAUNCH_TAG = "ecshell:launch"
#: When the TTL reaper terminates the instance (ISO 8601, UTC).
EXPIRES_TAG = "ecshell:expires"
#: A spot instance's hourly price (USD) at launch; cost() prefers it to the price table.
PRICE_TAG = "ecshell:hourly-price"
#: The default of Ec2Fabric.address_tag: an instance's address for SSH, set by the operator.
ADDRESS_TAG = "ecshell:address"
#: The instance id an image (and its snapshots) was bundled from.
SOURCE_TAG = "ecshell:source-instance"
#: The machine name an image was bundled from.
SOURCE_NAME_TAG = "ecshell:source-name"
#: The image a snapshot belongs to.
IMAGE_TAG = "ecshell:image"
#: The machine's markers at bundle time, as JSON (continued in -2, -3 ... when long).
MARKERS_TAG = "ecshell:markers"
#: EC2 tag values hold at most 256 characters.
TAG_VALUE_MAX = 256


def tag_dict(aws_tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    """``{key: value}`` from AWS's ``[{"Key": ..., "Value": ...}]`` (None: no tags)."""
    return {t["Key"]: t["Value"] for t in aws_tags or ()}


def aws_tag_list(tags: Mapping[str, object]) -> list[dict[str, str]]:
    """AWS's ``[{"Key": ..., "Value": ...}]`` from ``{key: value}``, values as strings."""
    return [{"Key": k, "Value": str(v)} for k, v in tags.items()]


def marker_tags(markers: Iterable[str]) -> dict[str, str]:
    """Marker names as tags: JSON in ecshell:markers, continued in -2, -3 ... when long."""
    text = json.dumps(sorted(markers), separators=(",", ":"))
    chunks = [text[i:i + TAG_VALUE_MAX] for i in range(0, len(text), TAG_VALUE_MAX)] or ["[]"]
    return {MARKERS_TAG if n == 0 else f"{MARKERS_TAG}-{n + 1}": chunk for n, chunk in enumerate(chunks)}


def markers_from_tags(tags: Mapping[str, str]) -> list[str]:
    """The marker names :func:`marker_tags` wrote; [] when there are none or they are garbled."""
    parts, n = [tags.get(MARKERS_TAG, "")], 2
    while f"{MARKERS_TAG}-{n}" in tags:
        parts.append(tags[f"{MARKERS_TAG}-{n}"])
        n += 1
    try:
        return json.loads("".join(parts)) if parts[0] else []
    except ValueError:
        return []
