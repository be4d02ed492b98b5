"""Differential basics: the real ``ssh`` and ecshell on the same config, keys and known_hosts.

The harness (tests/openssh_support.py) reads each decision from the servers'
logs; these scenarios check the everyday paths and the harness itself.
"""

import pytest
from openssh_support import Lab, same_decision


@pytest.fixture(scope="module")
def lab():
    world = Lab()
    try:
        world.key = world.keygen("id_ed25519")
        world.other = world.keygen("other_ed25519")
        world.web = world.server("web", authorized=[world.key])
        world.known_hosts(world.web)
        yield world
    finally:
        world.close()



def test_alias_with_hostname_port_and_default_key(lab):
    lab.config(f"Host web\n  HostName 127.0.0.1\n  Port {lab.web.port}\n")
    theirs, mine = same_decision(lab, "web")
    assert theirs.connected and theirs.user == "root" and theirs.hops == ["web"]
    assert theirs.key_fingerprint == lab.fingerprint(lab.key)


def test_explicit_identity_file(lab):
    lab.config(f"Host web\n  HostName 127.0.0.1\n  Port {lab.web.port}\n  IdentityFile ~/.ssh/other_ed25519\n"
               "  IdentitiesOnly yes\n")
    theirs, mine = same_decision(lab, "web")
    assert not theirs.connected and mine.error == "auth"


def test_unknown_host_key_under_ask_is_refused_by_both(lab):
    lab.config(f"Host fresh\n  HostName localhost\n  Port {lab.web.port}\n")
    theirs, mine = same_decision(lab, "fresh")
    assert not theirs.connected and mine.error == "hostkey"


def test_one_proxy_jump_shows_both_hops(lab):
    if "bastion" not in lab.servers:
        lab.known_hosts(lab.server("bastion", authorized=[lab.key]))
    bastion = lab.servers["bastion"]
    lab.config(f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n"
               f"Host web\n  HostName 127.0.0.1\n  Port {lab.web.port}\n  ProxyJump bastion\n")
    theirs, mine = same_decision(lab, "web")
    assert theirs.connected and theirs.hops == ["bastion", "web"]
