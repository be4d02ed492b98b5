"""Every name check matches the whole name (issue 15, item 7): re.match(...$) let a trailing newline through."""

import pytest

import ecshell.remote.login
from ecshell import once
from ecshell.errors import ArgumentError, SelectionError
from ecshell.fabrics.ec2.pins import PinStore
from ecshell.loginshell import install_login_shell
from ecshell.shell.targets import parse
from ecshell.state import Lock, Op, check_name


@pytest.mark.parametrize("name", ["ok\n", "ok\n\n", "\nok", "ok\r"])
def test_marker_names_with_a_newline_are_refused_everywhere(name, tmp_path, monkeypatch):
    with pytest.raises(ArgumentError):
        check_name(name)
    with pytest.raises(ArgumentError):
        Op("mark", name)
    with pytest.raises(ArgumentError):
        once(name)
    with pytest.raises(ArgumentError):
        Lock(object(), name)  # the name is checked before the machines are looked at
    monkeypatch.setenv("ECSHELL_STATE_DIR", str(tmp_path))
    with pytest.raises(ValueError):
        ecshell.remote.login.mark(name)
    assert not (tmp_path / "markers").exists() or not list((tmp_path / "markers").iterdir())


def test_the_good_names_still_pass():
    assert check_name("ok") == "ok" and check_name("app:v2") == "app:v2"
    assert once("ok") is not None
    assert parse("role=db") == ("tags", {"role": "db"})


def test_the_install_user_check_refuses_a_trailing_newline():
    with pytest.raises(ArgumentError, match="login name"):
        install_login_shell([], user="ops\n")


def test_instance_ids_with_a_newline_are_not_instance_ids(tmp_path):
    pins = PinStore(str(tmp_path))
    with pytest.raises(ValueError):
        pins.save("i-0123456789abcdef\n", ["ssh-ed25519 AAAA"], "test")
    pins.save("i-0123456789abcdef", ["ssh-ed25519 AAAA"], "test")
    assert pins.ids() == ["i-0123456789abcdef"]


def test_a_tag_target_with_a_newline_in_its_key_is_refused():
    with pytest.raises(SelectionError):
        parse("role\n=db")
