"""Hourly on-demand prices (USD, Linux) of common instance types.

The shipped table is us-east-1 list prices; other regions cost somewhat more,
so set ``c.Ec2Fabric.prices`` (per ``type`` or per ``region/type``) where the
difference matters. A type that is in neither has no price: its cost shows
as unknown rather than as zero.
"""

from __future__ import annotations

from collections.abc import Mapping

US_EAST_1 = {
    "t2.nano": 0.0058, "t2.micro": 0.0116, "t2.small": 0.023, "t2.medium": 0.0464,
    "t2.large": 0.0928, "t2.xlarge": 0.1856, "t2.2xlarge": 0.3712,
    "t3.nano": 0.0052, "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416,
    "t3.large": 0.0832, "t3.xlarge": 0.1664, "t3.2xlarge": 0.3328,
    "t3a.nano": 0.0047, "t3a.micro": 0.0094, "t3a.small": 0.0188, "t3a.medium": 0.0376,
    "t3a.large": 0.0752, "t3a.xlarge": 0.1504,
    "t4g.nano": 0.0042, "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336,
    "t4g.large": 0.0672, "t4g.xlarge": 0.1344,
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m5.4xlarge": 0.768,
    "m6i.large": 0.096, "m6i.xlarge": 0.192, "m6i.2xlarge": 0.384,
    "m6g.large": 0.077, "m6g.xlarge": 0.154,
    "m7i.large": 0.1008, "m7i.xlarge": 0.2016, "m7g.large": 0.0816, "m7g.xlarge": 0.1632,
    "c5.large": 0.085, "c5.xlarge": 0.17, "c5.2xlarge": 0.34,
    "c6i.large": 0.085, "c6i.xlarge": 0.17, "c6g.large": 0.068, "c6g.xlarge": 0.136,
    "c7i.large": 0.0893, "c7g.large": 0.0725, "c7g.xlarge": 0.145,
    "r5.large": 0.126, "r5.xlarge": 0.252, "r6i.large": 0.126, "r6i.xlarge": 0.252,
    "r6g.large": 0.1008, "r7g.large": 0.1071,
}


def hourly_price(region: str | None, instance_type: str,
                 overrides: Mapping[str, float | str] | None = None) -> float | None:
    """The hourly price of ``instance_type`` in ``region``, or None if unknown."""
    overrides = overrides or {}
    for key in (f"{region}/{instance_type}", instance_type):
        if key in overrides:
            return float(overrides[key])
    return US_EAST_1.get(instance_type)
