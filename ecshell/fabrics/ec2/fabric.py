"""Ec2Fabric: machines on AWS EC2, or on any EC2-compatible endpoint, through boto3.

>>> from ecshell import Cluster, Ec2Fabric
>>> ec2 = Ec2Fabric(region="eu-west-1", image_id="ami-0abc...", instance_type="t3.micro",
...                 user="admin")                              # doctest: +SKIP
>>> ec2.import_key_pair(); ec2.ensure_security_group()       # once per region  # doctest: +SKIP
>>> cluster = Cluster(ec2)                                     # doctest: +SKIP
>>> web = cluster.launch(3, name="web")   # EC2 says running, then `true` over SSH  # doctest: +SKIP
>>> ec2.cost()                                                 # doctest: +SKIP

Every instance is tagged at launch (``TagSpecifications``, so nothing ever
exists untagged) with its Name, ``ecshell:owner`` and ``ecshell:cluster``;
a new shell finds them again by those tags. Each instance gets an ed25519
host key generated here, delivered through cloud-init user data and pinned
by instance id before the first connection; an instance without a pin is
checked against the host-key block of its console output, and refused when
there is none. The fabric owns one boto3 Session and one client (adaptive
retries); AWS failures surface as :class:`ecshell.fabrics.ec2.errors.Ec2Error` with
the AWS error code and a remedy.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import getpass
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode, default, validate

from .errors import Ec2Error, aws_call
from .images import Images
from .pins import PinStore
from .pricing import hourly_price
from .setup import Setup
from .tags import ADDRESS_TAG, CLUSTER_TAG, EXPIRES_TAG, LAUNCH_TAG, OWNER_TAG, PRICE_TAG, aws_tag_list, tag_dict
from .volumes import Volumes
from ...config import ecshell_home
from ...ssh.endpoint import parse_target
from ...ssh.keys import client_key, generate_ed25519
from ...errors import ArgumentError
from ...hostset import check_prefix, name_problem
from ..base import PENDING, RUNNING, STOPPED, TERMINATED, Fabric, Prototype

if TYPE_CHECKING:
    from ...states import MachineState
    from .phonehome import PhoneHome

log = logging.getLogger("ecshell")

#: EC2 instance states as fabric states.
STATES = {
    "pending": PENDING, "running": RUNNING, "stopping": STOPPED, "stopped": STOPPED,
    "shutting-down": TERMINATED, "terminated": TERMINATED,
}
#: EC2 instance states that discovery (and the TTL reaper) lists: not shutting-down or terminated.
LISTED_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]

#: At most this many values in one describe filter.
_BATCH = 200


def _iso(timestamp):
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text):
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


class Ec2Fabric(Setup, Images, Volumes, Fabric):
    """Instances on EC2; traits double as keyword arguments.

    Region setup, images and volumes are mixins from :mod:`.setup`, :mod:`.images`
    and :mod:`.volumes` (methods only: every trait is here).
    """

    kind = "ec2"

    region = Unicode(None, allow_none=True, help="""AWS region, e.g. 'eu-west-1'.
        Default: $AWS_REGION, else $AWS_DEFAULT_REGION, else the profile's region.""").tag(config=True)

    profile = Unicode(None, allow_none=True, help="""AWS profile from ~/.aws/config.
        None: the standard chain ($AWS_PROFILE, environment keys, SSO, instance role).""").tag(config=True)

    endpoint_url = Unicode(None, allow_none=True, help="""EC2 API endpoint, for an EC2-compatible
        service or a test server (http://127.0.0.1:5000). None: AWS's own.""").tag(config=True)

    image_id = Unicode("", help="AMI to launch (ami-...); must exist in this region.").tag(config=True)

    instance_type = Unicode("t3.micro", help="Instance type to launch.").tag(config=True)

    key_name = Unicode(None, allow_none=True, help="""EC2 key pair to launch with (see
        import_key_pair()). None: none; the operator's key still reaches the default user
        through cloud-init.""").tag(config=True)

    security_groups = List(Unicode(), help="""Security groups: ids (sg-...) or names.
        Empty: the VPC's default group (see ensure_security_group()).""").tag(config=True)

    subnet_id = Unicode(None, allow_none=True, help="Subnet to launch into. None: the default VPC's choice.").tag(config=True)

    user_data = Unicode("", help="""The operator's own user data (a script starting with '#!' or a
        '#cloud-config' document), sent after ecshell's host-key part.""").tag(config=True)

    restrict_metadata = Bool(True, help="""Add a first boot step to the user data that lets only
        root reach the instance metadata service (an iptables owner match, else nft), which
        serves that user data, private host key included, and the instance role's credentials.
        False: every local user of the instance can read them.""").tag(config=True)

    user = Unicode("ec2-user", help="""User to log in as: the image's default user
        ('ec2-user' on Amazon Linux, 'admin' on Debian, 'ubuntu' on Ubuntu).""").tag(config=True)

    identity_file = Unicode(help="""Private key to log in with; its public half is given to
        cloud-init and to import_key_pair(). Default: <ECSHELL_HOME>/id_ed25519, created when missing.""").tag(config=True)

    ssh_port = Integer(22, help="SSH port of the instances.").tag(config=True)

    address = Enum(["public-ip", "private-ip", "public-dns", "private-dns"], "public-ip", help="""Which
        address to connect to. An instance tag named address_tag ('host' or 'host:port')
        overrides it per instance (bastions, VPNs, port forwards).""").tag(config=True)

    address_tag = Unicode(ADDRESS_TAG, help="Tag that overrides an instance's address.").tag(config=True)

    owner = Unicode(help="""Value of the ecshell:owner tag of every instance launched here;
        discovery and the TTL reaper only touch instances with this owner.
        Default: <local user>@<host name>.""").tag(config=True)

    cluster = Unicode("default", help="Value of the ecshell:cluster tag; discovery finds this cluster's instances.").tag(config=True)

    spot = Bool(False, help="Launch spot instances (one-time, terminated on interruption).").tag(config=True)

    spot_max_price = Unicode(None, allow_none=True, help="Highest hourly spot price (USD). None: up to the on-demand price.").tag(config=True)

    ttl = Float(None, allow_none=True, help="""Hours an instance may live: launch tags it with
        ecshell:expires and reap() terminates it after. None: no limit.""").tag(config=True)

    prices = Dict(help="""Hourly prices (USD) overriding the shipped table, per instance type
        ('t3.micro': 0.0104) or per region and type ('eu-west-1/t3.micro': 0.0114).""").tag(config=True)

    phone_home_url = Unicode(None, allow_none=True, help="""URL instances POST to when cloud-init
        has finished (its phone_home module), short-cutting the wait between readiness
        polls; listen_for_phone_home() starts a listener and sets it (each launch then adds
        a secret of its own to it). None: no call-back.""").tag(config=True)

    max_attempts = Integer(8, help="Attempts per AWS call in boto3's adaptive retry mode (throttling, 5xx).").tag(config=True)

    launch_workers = Integer(8, help="RunInstances calls in flight at once (one per instance: each has its own host key).").tag(config=True)

    max_launch = Integer(20, help="""Most instances one launch call starts (they cost money
        from the first second); a larger count is refused before anything starts.
        Number of instances.""").tag(config=True)

    transport = Enum(["direct", "ssm"], "direct", help="""What carries a shell broadcast
        (run, %on) to this fabric's instances: 'direct' (the controller's own SSH) or 'ssm'
        (AWS Systems Manager Run Command: needs the SSM agent and an instance profile on
        each instance, no inbound SSH). A call's transport= overrides it. Files, markers
        and readiness checks always go over SSH.""").tag(config=True)

    ssm_output_bucket = Unicode(None, allow_none=True, help="""S3 bucket that SSM Run
        Command writes each instance's full output to; results are read from it.
        None: SSM's inline output only, which is cut at 24,000 characters per stream
        (a result says so when that happened).""").tag(config=True)

    ssm_output_prefix = Unicode("ecshell", help="Key prefix of SSM output in ssm_output_bucket.").tag(config=True)

    console_recheck = Float(30.0, help="""Seconds between console-output reads for an instance
        whose host key is not pinned.""").tag(config=True)

    @default("region")
    def _default_region(self):
        return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None

    @default("identity_file")
    def _default_identity_file(self):
        return os.path.join(ecshell_home(), "id_ed25519")

    @default("owner")
    def _default_owner(self):
        return f"{getpass.getuser()}@{socket.gethostname()}"

    @validate("ttl")
    def _check_ttl(self, proposal):
        if proposal.value is not None and proposal.value <= 0:
            raise ArgumentError(f"ttl is in hours and must be positive, not {proposal.value}; e.g. ttl=8")
        return proposal.value

    @validate("launch_workers", "max_attempts")
    def _check_count(self, proposal):
        if proposal.value < 1:
            raise ArgumentError(f"{proposal.trait.name} must be at least 1, not {proposal.value}")
        return proposal.value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.name == self.kind and "name" not in kwargs and self.region:
            # Two regions attached to one cluster need two names.
            self.name = f"ec2-{self.region}"
        self._lock = threading.Lock()
        self._session: Any = None
        self._client: Any = None
        self._service_clients: dict[str, Any] = {}
        self._console_checked: dict[str, float] = {}  # instance id -> time.monotonic() of the last read
        self._renamed: set[str] = set()  # instance ids already warned about for a refused Name tag
        self._reaper: tuple[threading.Thread, threading.Event] | None = None
        self._phone_home: PhoneHome | None = None

    # -- the boto3 session and client ----------------------------------------

    @property
    def client(self) -> Any:  # boto3 makes the EC2 client's class at run time
        """The fabric's one EC2 client (thread-safe), made on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    with aws_call("opening an AWS session"):
                        import boto3
                        from botocore.config import Config

                        session = boto3.session.Session(profile_name=self.profile or None,
                                                        region_name=self.region or None)
                        if not session.region_name:
                            raise Ec2Error("no AWS region: set region='eu-west-1' (c.Ec2Fabric.region) "
                                           "or AWS_REGION", code="NoRegion")
                        config = Config(retries={"mode": "adaptive", "max_attempts": self.max_attempts},
                                        user_agent_extra="ecshell", connect_timeout=10, read_timeout=60)
                        self._client = session.client("ec2", endpoint_url=self.endpoint_url or None, config=config)
                        self._session = session
                        if not self.region:
                            self.region = session.region_name
        return self._client

    def service_client(self, service: str) -> Any:
        """A client of another AWS service ('ssm', 's3') from the fabric's session and endpoint, made once."""
        self.client  # the session, region and retry settings come from here
        with self._lock:
            made = self._service_clients.get(service)
            if made is None:
                from botocore.config import Config

                config = Config(retries={"mode": "adaptive", "max_attempts": self.max_attempts},
                                user_agent_extra="ecshell", connect_timeout=10, read_timeout=60)
                with aws_call(f"opening an AWS {service} client"):
                    made = self._session.client(service, endpoint_url=self.endpoint_url or None, config=config)
                self._service_clients[service] = made
        return made

    def _call(self, action, method, **params):
        with aws_call(action):
            return getattr(self.client, method)(**params)

    def _pages(self, action, method, key, **params):
        with aws_call(action):
            for page in self.client.get_paginator(method).paginate(**params):
                yield from page.get(key, [])

    # -- host keys ------------------------------------------------------------

    @property
    def pins(self) -> PinStore:
        """Pinned host keys of this endpoint and region, on disk."""
        scope = "aws"
        if self.endpoint_url:
            scope = "endpoint-" + hashlib.sha256(self.endpoint_url.encode()).hexdigest()[:10]
        return PinStore(os.path.join(ecshell_home(), "ec2", "hostkeys", scope, self.region or "default"))

    @property
    def known_hosts_file(self) -> str:
        """known_hosts for EC2 instances without a pin: empty unless the operator adds a verified key."""
        return os.path.join(ecshell_home(), "ec2", "known_hosts")

    def _host_keys(self, instance_id, state):
        pins = self.pins
        keys = pins.load(instance_id)
        if keys or state != RUNNING:
            return keys
        # Not launched from here (or the pin was lost): the console output's key
        # block, printed by cloud-init on the instance itself, is the fallback.
        last = self._console_checked.get(instance_id)
        if last is not None and time.monotonic() - last < self.console_recheck:
            return []
        self._console_checked[instance_id] = time.monotonic()
        from .userdata import host_keys_from_console

        try:
            reply = self._call(f"reading the console output of {instance_id}", "get_console_output",
                               InstanceId=instance_id)
        except Ec2Error as exc:
            log.warning("%s: %s", instance_id, exc)
            return []
        keys = host_keys_from_console(reply.get("Output") or "")
        if keys:
            pins.save(instance_id, keys, "console output")
        else:
            log.warning("%s has no pinned host key and no key block in its console output: "
                        "connections to it are refused until one appears", instance_id)
        return keys

    def _phoned_home(self, instance_id, keys):
        if self._phone_home is None or instance_id not in self._phone_home.arrived:
            return None
        at, fields = self._phone_home.arrived[instance_id]
        reported = fields.get("pub_key_ed25519", "").split()[:2]
        if keys and reported and " ".join(reported) not in {" ".join(k.split()[:2]) for k in keys}:
            log.warning("%s phoned home with a host key that is not its pinned one: ignored "
                        "(the SSH check accepts only the pinned key)", instance_id)
        return at

    def _forget(self, ids):
        pins = self.pins
        for instance_id in ids:
            pins.forget(instance_id)
            self._console_checked.pop(instance_id, None)

    # -- prototypes -------------------------------------------------------------

    def _address(self, instance, tags):
        override = tags.get(self.address_tag)
        if override:
            try:
                user, host, port = parse_target(override)
                return host, port or self.ssh_port, user
            except ValueError:
                log.warning("%s: ignoring tag %s=%r: write host, host:port or user@host:port",
                            instance["InstanceId"], self.address_tag, override)
        field = {"public-ip": "PublicIpAddress", "private-ip": "PrivateIpAddress",
                 "public-dns": "PublicDnsName", "private-dns": "PrivateDnsName"}[self.address]
        return instance.get(field) or "", self.ssh_port, None

    def _price(self, instance_type, tags):
        if PRICE_TAG in tags:
            try:
                return float(tags[PRICE_TAG])
            except ValueError:
                pass
        return hourly_price(self.region, instance_type, self.prices)

    def _prototype(self, instance):
        tags = tag_dict(instance.get("Tags"))
        instance_id = instance["InstanceId"]
        state = STATES.get(instance["State"]["Name"], PENDING)
        host, port, user = self._address(instance, tags)
        keys = self._host_keys(instance_id, state) if state != TERMINATED else []
        launched = instance.get("LaunchTime")
        prototype = Prototype(
            id=instance_id,
            name=self._machine_name(instance_id, tags.get("Name")),
            host=host,
            port=int(port),
            user=user or self.user,
            identity_files=[self.identity_file],
            host_keys=keys,
            tags=tags,
            state=state,
            identities_only=True,
            launched_at=launched.timestamp() if launched else None,
            extra={
                "region": self.region,
                "instance_type": instance.get("InstanceType"),
                "image_id": instance.get("ImageId"),
                "availability_zone": instance.get("Placement", {}).get("AvailabilityZone"),
                "spot": instance.get("InstanceLifecycle") == "spot",
                "ec2_state": instance["State"]["Name"],
                "hourly_cost": self._price(instance.get("InstanceType"), tags),
                "expires_at": _parse_iso(tags.get(EXPIRES_TAG)),
                "host_key_source": "pinned" if keys else None,
                "phoned_home_at": self._phoned_home(instance_id, keys),
            },
        )
        if not keys:
            # No key known out of band: refuse whatever is offered (never fall back to
            # the operator's ssh_config policy, which might say accept-new or no).
            prototype.strict_host_key_checking = "yes"
            prototype.known_hosts_files = [self.known_hosts_file]
        return prototype

    def _machine_name(self, instance_id, name_tag):
        """The instance's Name tag as its machine name; its id when the tag is missing or refused.

        Anyone allowed to CreateTags can set a Name: it is data, and one that is not
        an allowed machine name (:func:`ecshell.hostset.name_problem`) is not used.
        """
        if not name_tag:
            return instance_id
        problem = name_problem(name_tag)
        if problem is None:
            return name_tag
        if instance_id not in self._renamed:
            self._renamed.add(instance_id)
            log.warning("EC2 instance %s: its Name tag is refused (%s); listed as %s",
                        instance_id, problem, instance_id)
        return instance_id

    def _describe(self, action, filters=(), ids=None):
        """Instances matching ``filters`` (and ``ids``, batched); no error for unknown ids."""
        if ids is None:
            return list(self._pages(action, "describe_instances", "Reservations", Filters=list(filters)))
        ids = list(ids)
        reservations = []
        for start in range(0, len(ids), _BATCH):
            batch = [{"Name": "instance-id", "Values": ids[start:start + _BATCH]}] + list(filters)
            reservations += self._pages(action, "describe_instances", "Reservations", Filters=batch)
        return reservations

    @staticmethod
    def _instances(reservations):
        return [i for r in reservations for i in r.get("Instances", [])]

    def _owned(self, all_clusters=False):
        filters = [{"Name": f"tag:{OWNER_TAG}", "Values": [self.owner]},
                   {"Name": "instance-state-name", "Values": LISTED_INSTANCE_STATES}]
        if not all_clusters:
            filters.append({"Name": f"tag:{CLUSTER_TAG}", "Values": [self.cluster]})
        return filters

    # -- the Fabric interface ---------------------------------------------------

    def discover(self) -> list[Prototype]:
        """This owner's instances of this cluster (pending, running, stopped), by tag."""
        instances = self._instances(self._describe("finding this cluster's instances", self._owned()))
        prototypes = sorted((self._prototype(i) for i in instances), key=lambda p: p.name)
        self._prune_pins({p.id for p in prototypes})
        return prototypes

    def _prune_pins(self, alive):
        stale = [i for i in self.pins.ids() if i not in alive]
        if not stale:
            return
        # Pins of instances outside this cluster's live set: forget those EC2 says are
        # terminated. Unknown ids are kept: they may belong to another account whose
        # pins share this directory, and instance ids are never reused, so a pin of a
        # long-gone instance trusts nothing.
        states = {i["InstanceId"]: i["State"]["Name"]
                  for i in self._instances(self._describe("checking pinned instances", ids=stale))}
        self._forget([i for i in stale if states.get(i) in ("terminated", "shutting-down")])

    def prototypes(self, ids: Iterable[str]) -> list[Prototype]:
        """Fresh prototypes of these instances (address, state, host keys); gone ones are absent."""
        found = [self._prototype(i) for i in self._instances(self._describe("describing instances", ids=ids))]
        self._forget([p.id for p in found if p.state == TERMINATED])
        return found

    def states(self, ids: Iterable[str]) -> dict[str, MachineState]:
        return {p.id: p.state for p in self.prototypes(ids)}

    def stop(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if ids:
            self._call(f"stopping {len(ids)} instance(s)", "stop_instances", InstanceIds=ids)

    def start(self, ids: Iterable[str]) -> list[Prototype]:
        ids = list(ids)
        if not ids:
            return []
        self._call(f"starting {len(ids)} instance(s)", "start_instances", InstanceIds=ids)
        return self.prototypes(ids)

    def terminate(self, ids: Iterable[str], wait: bool = False) -> None:
        """Terminate instances and forget their host keys; ``wait`` for EC2 to confirm."""
        ids = list(ids)
        if not ids:
            return
        self._call(f"terminating {len(ids)} instance(s)", "terminate_instances", InstanceIds=ids)
        self._forget(ids)
        if wait:
            self.wait(ids, "terminated")

    def wait(self, ids: Collection[str], state: str = "running", timeout: float = 600) -> None:
        """One boto3 waiter call for all ``ids`` (instance_running, _stopped, _terminated)."""
        waiter = {"running": "instance_running", "stopped": "instance_stopped",
                  "terminated": "instance_terminated"}[state]
        delay = 5 if not self.endpoint_url else 1
        with aws_call(f"waiting for {len(ids)} instance(s) to be {state}"):
            self.client.get_waiter(waiter).wait(
                InstanceIds=list(ids), WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout / delay))})

    def listen_for_phone_home(self, host: str | None = None, port: int = 0, public_url: str | None = None) -> str:
        """Start a listener for instances' boot call-backs; instances launched after use it.

        ``host`` is the address to bind (default ``127.0.0.1``: give the address of this
        machine that the instances reach); ``public_url`` is the URL they post to (this
        machine as the VPC sees it), by default the listener's own address. Each launch
        adds a secret of its own to that URL in its instances' user data; calls without
        one are refused.
        """
        from .phonehome import DEFAULT_HOST, PhoneHome

        self.stop_phone_home()
        self._phone_home = PhoneHome(host or DEFAULT_HOST, port, public_url)
        self.phone_home_url = self._phone_home.url
        return self._phone_home.url

    def stop_phone_home(self) -> None:
        if self._phone_home is not None:
            self._phone_home.close()
            self._phone_home = None
            self.phone_home_url = None

    def wait_for_news(self, ids: Iterable[str], timeout: float) -> set[str]:
        """Sleep up to ``timeout`` between readiness polls, ending early when one of ``ids`` phones home."""
        if self._phone_home is None:
            time.sleep(timeout)
            return set()
        return self._phone_home.wait(ids, timeout)

    def close(self) -> None:
        self.stop_reaper()
        self.stop_phone_home()
        self._client = None
        self._session = None

    # -- launching ----------------------------------------------------------------

    def spot_price(self, instance_type: str | None = None) -> dict[str, float]:
        """``{availability zone: current hourly spot price}`` for Linux."""
        instance_type = instance_type or self.instance_type
        history = self._call("reading the spot price", "describe_spot_price_history",
                             InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                             StartTime=datetime.datetime.now(datetime.timezone.utc))
        prices = {}
        for entry in sorted(history.get("SpotPriceHistory", []), key=lambda e: e["Timestamp"]):
            prices[entry["AvailabilityZone"]] = float(entry["SpotPrice"])
        return prices

    def operator_public_key(self) -> str:
        """The public key line of identity_file, given to cloud-init and to import_key_pair()."""
        path = self.identity_file
        if path == self._default_identity_file():
            client_key(path)  # ecshell's own client key is made on first use
        try:
            with open(path + ".pub") as f:
                return f.read().strip()
        except FileNotFoundError:
            raise ArgumentError(f"no public key next to identity_file {path}: create {path}.pub "
                                f"(ssh-keygen -y -f {path} > {path}.pub)") from None

    def _security_group_params(self):
        ids = [g for g in self.security_groups if g.startswith("sg-")]
        names = [g for g in self.security_groups if not g.startswith("sg-")]
        if names and self.subnet_id:
            found = self._call("resolving security group names", "describe_security_groups",
                               Filters=[{"Name": "group-name", "Values": names}])
            by_name = {g["GroupName"]: g["GroupId"] for g in found.get("SecurityGroups", [])}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise Ec2Error(f"no security group named {', '.join(missing)}", code="InvalidGroup.NotFound",
                               remedy="run ec2.ensure_security_group(), or fix security_groups")
            ids += [by_name[n] for n in names]
            names = []
        params = {}
        if ids:
            params["SecurityGroupIds"] = ids
        if names:
            params["SecurityGroups"] = names
        return params

    def launch(self, count: int, name: str = "node", tags: Mapping[str, str] | None = None,
               instance_type: str | None = None, image_id: str | None = None, spot: bool | None = None,
               ttl: float | None = None, user_data: str | None = None, **options: Any) -> list[Prototype]:
        """Launch ``count`` instances named ``name-<i>``; their prototypes (state pending).

        One RunInstances call per instance, each with its own host key and its
        Name among the launch tags. If any call fails, every instance this
        launch created is terminated and an :class:`Ec2Error` says which.
        """
        if options:
            raise ArgumentError(f"Ec2Fabric.launch takes no {', '.join(sorted(options))}; it accepts count, "
                                "name, tags, instance_type, image_id, spot, ttl and user_data")
        if count < 1:
            raise ArgumentError(f"count must be at least 1, not {count}")
        check_prefix(name, count)
        image_id = image_id or self.image_id
        if not image_id:
            raise ArgumentError("no image to launch: Ec2Fabric(image_id='ami-...') or c.Ec2Fabric.image_id "
                                "(an AMI of this region)")
        instance_type = instance_type or self.instance_type
        spot = self.spot if spot is None else spot
        ttl = self.ttl if ttl is None else ttl
        user_data = self.user_data if user_data is None else user_data
        authorized = self.operator_public_key()
        if user_data:
            from .userdata import check_user_data

            check_user_data(user_data)  # refused before anything is launched

        base_tags = {"role": name}
        base_tags.update(tags or {})
        launch_id = secrets.token_hex(8)
        base_tags.update({OWNER_TAG: self.owner, CLUSTER_TAG: self.cluster, LAUNCH_TAG: launch_id})
        if ttl:
            base_tags[EXPIRES_TAG] = _iso(time.time() + ttl * 3600)
        params = {"ImageId": image_id, "InstanceType": instance_type, "MinCount": 1, "MaxCount": 1,
                  "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}}
        params.update(self._security_group_params())
        if self.key_name:
            params["KeyName"] = self.key_name
        if self.subnet_id:
            params["SubnetId"] = self.subnet_id
        if spot:
            prices = self.spot_price(instance_type)
            if prices:
                low = min(prices.values())
                base_tags[PRICE_TAG] = f"{low:g}"
                log.info("spot price of %s in %s now: %s", instance_type, self.region,
                         ", ".join(f"{zone} ${price:g}/h" for zone, price in sorted(prices.items())))
            options = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            if self.spot_max_price:
                options["MaxPrice"] = self.spot_max_price
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}

        names = self.free_names(name, count)
        phone_home = self._phone_home.url_for_launch() if self._phone_home is not None else self.phone_home_url

        failed = threading.Event()
        created, errors = [], []

        def one(position, machine_name):
            if failed.is_set():
                return
            try:
                instance = self._run_one(machine_name, base_tags, params, launch_id, position, authorized, user_data,
                                         phone_home)
            except Exception as exc:
                failed.set()
                errors.append((machine_name, exc))
            else:
                created.append(instance)

        pool = concurrent.futures.ThreadPoolExecutor(min(self.launch_workers, count), thread_name_prefix="ecshell-launch")
        try:
            futures = [pool.submit(one, position, n) for position, n in enumerate(names)]
            while concurrent.futures.wait(futures, timeout=0.2).not_done:
                pass  # a timed wait, so that Ctrl-C is noticed at once
        except BaseException:
            # Ctrl-C (or worse) mid-launch: let the calls in flight finish, then undo them all.
            failed.set()
            pool.shutdown(wait=True, cancel_futures=True)
            log.warning("%s", self._abandon(launch_id, created, errors + [(f"{name}-*", "interrupted")]))
            raise
        pool.shutdown()
        if errors:
            raise self._abandon(launch_id, created, errors)
        order = {n: i for i, n in enumerate(names)}
        return sorted((self._prototype(i) for i in created), key=lambda p: order.get(p.name, len(order)))

    def _run_one(self, machine_name, base_tags, params, launch_id, position, authorized, user_data, phone_home):
        from .userdata import build

        private, public = generate_ed25519()
        tags = dict(base_tags, Name=machine_name)
        specs = [{"ResourceType": "instance", "Tags": aws_tag_list(tags)},
                 {"ResourceType": "volume", "Tags": aws_tag_list(tags)}]
        call = dict(params, UserData=build(private, public, [authorized], user_data, phone_home,
                                           self.restrict_metadata),
                    TagSpecifications=specs,
                    # the same token on boto3's own retries makes RunInstances idempotent
                    ClientToken=f"ecshell-{launch_id}-{position}")
        reply = self._call(f"launching {machine_name}", "run_instances", **call)
        instance = reply["Instances"][0]
        self.pins.save(instance["InstanceId"], [public], "user data at launch")
        return instance

    def _abandon(self, launch_id, created, errors):
        """A launch failed part way: terminate what it made (found by its launch tag too)."""
        ids = {i["InstanceId"] for i in created}
        try:
            tagged = self._instances(self._describe("finding the instances of the failed launch",
                                                    [{"Name": f"tag:{LAUNCH_TAG}", "Values": [launch_id]}]))
            ids |= {i["InstanceId"] for i in tagged if i["State"]["Name"] not in ("terminated", "shutting-down")}
        except Ec2Error as exc:
            log.warning("could not list the instances of the failed launch: %s", exc)
        name, first = errors[0]
        code = getattr(first, "code", None)
        remedy = getattr(first, "remedy", None)
        message = f"launch failed at {name}: {first.message if isinstance(first, Ec2Error) else first}"
        terminated = []
        if ids:
            try:
                self.terminate(sorted(ids))
                terminated = sorted(ids)
                message += f"; terminated the {len(ids)} instance(s) it had started: {', '.join(sorted(ids))}"
            except Ec2Error as exc:
                message += (f"; COULD NOT TERMINATE the {len(ids)} instance(s) it had started "
                            f"({', '.join(sorted(ids))}): {exc}. Terminate them by hand")
        else:
            message += "; nothing was started"
        return Ec2Error(message, code=code, remedy=remedy, action="launch",
                        created=sorted(ids), terminated=terminated)

    # -- cost and TTL ----------------------------------------------------------------

    def cost(self, prototypes: Iterable[Prototype] | None = None, now: float | None = None) -> dict[str, Any]:
        """Uptime and cost so far of each machine, and the total.

        ``{"machines": [{name, id, type, state, uptime, hourly, cost}], "total": float}``.
        Uptime counts from the last start (LaunchTime); stopped machines cost nothing
        here (their volumes still do). ``hourly`` is None for a type without a price.
        """
        now = time.time() if now is None else now
        rows, total = [], 0.0
        for p in self.discover() if prototypes is None else prototypes:
            running = p.state in (RUNNING, PENDING)
            uptime = now - p.launched_at if (running and p.launched_at) else 0.0
            hourly = p.extra.get("hourly_cost")
            cost = uptime / 3600 * hourly if hourly is not None else None
            total += cost or 0.0
            rows.append({"name": p.name, "id": p.id, "type": p.extra.get("instance_type"),
                         "state": p.state, "uptime": uptime, "hourly": hourly, "cost": cost,
                         "expires_at": p.extra.get("expires_at")})
        return {"machines": rows, "total": total}

    def reap(self, warn_within: float = 3600.0, now: float | None = None, dry_run: bool = False) -> dict[str, list[str]]:
        """Terminate this owner's instances (every cluster) whose TTL has passed.

        Instances expiring within ``warn_within`` seconds are warned about.
        Returns ``{"terminated": [ids], "warned": [ids]}``.
        """
        now = time.time() if now is None else now
        expired, warned = [], []
        for instance in self._instances(self._describe("finding expired instances", self._owned(all_clusters=True))):
            tags = tag_dict(instance.get("Tags"))
            expires = _parse_iso(tags.get(EXPIRES_TAG))
            if expires is None:
                continue
            label = f"{tags.get('Name', instance['InstanceId'])} ({instance['InstanceId']})"
            if expires <= now:
                expired.append(instance["InstanceId"])
                log.warning("%s passed its TTL at %s: %s", label, tags[EXPIRES_TAG],
                            "would terminate (dry run)" if dry_run else "terminating")
            elif expires - now <= warn_within:
                warned.append(instance["InstanceId"])
                log.warning("%s reaches its TTL in %d min (%s) and will then be terminated",
                            label, (expires - now) // 60, tags[EXPIRES_TAG])
        if expired and not dry_run:
            self.terminate(expired)
        return {"terminated": expired, "warned": warned}

    def start_reaper(self, interval: float = 300.0, warn_within: float = 3600.0) -> threading.Thread:
        """Run :meth:`reap` every ``interval`` seconds in a daemon thread until close()."""
        self.stop_reaper()
        stop = threading.Event()

        def loop():
            while not stop.wait(interval):
                try:
                    self.reap(warn_within=warn_within)
                except Exception as exc:  # the reaper must outlive a transient AWS failure
                    log.warning("TTL reaper: %s", exc)

        thread = threading.Thread(target=loop, name="ecshell-ttl-reaper", daemon=True)
        self._reaper = (thread, stop)
        thread.start()
        return thread

    def stop_reaper(self) -> None:
        if self._reaper is not None:
            thread, stop = self._reaper
            stop.set()
            thread.join(timeout=5)
            self._reaper = None

    def __repr__(self) -> str:
        where = self.region or "?"
        if self.endpoint_url:
            where += f" via {self.endpoint_url}"
        return f"<Ec2Fabric {self.name!r} {where} cluster={self.cluster!r}>"
