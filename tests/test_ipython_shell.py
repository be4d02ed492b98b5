"""The IPython layer in a real InteractiveShell, against real local sshd machines.

Every test loads the extension into a fresh shell in an isolated home; the
fixture unloads it, clears the shell singleton and terminates (by pid) every
machine the test launched, passed or failed.
"""

import os
import pwd
import signal
import threading

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from ipython_support import loaded_shell

from ecshell import LocalFabric, ResultSet, StaticFabric
from ecshell.shell.extension import extension_for


@pytest.fixture
def ip(isolated_home):
    try:
        with loaded_shell() as shell:
            yield shell
    finally:
        fabric = LocalFabric()
        fabric.terminate([p.id for p in fabric.discover()])


def launch(ip, n=3, name="node"):
    return ip.run_line_magic("launch", f"{n} --name {name}")


def shown(ip, obj):
    """What IPython's displayhook would print for ``obj``."""
    return ip.display_formatter.format(obj)[0]["text/plain"]


def ecshell_magics(ip):
    return [m for m in ip.magics_manager.registry.values() if type(m).__name__ == "EcShellMagics"]


# -- loading -----------------------------------------------------------------


def test_load_pushes_cluster_and_registers_magics(ip):
    cluster = ip.user_ns["cluster"]
    assert type(cluster).__name__ == "Cluster"
    for name in ("cluster", "launch", "on", "ready", "terminate", "put", "get", "cost"):
        assert ip.find_line_magic(name) is not None, name
    assert ip.find_cell_magic("on") is not None
    # IPython's own cell magics stay IPython's
    for name in ("bash", "sh"):
        assert ip.find_cell_magic(name).__module__.startswith("IPython."), name


def test_unload_closes_connections_and_removes_everything(ip):
    cluster = ip.user_ns["cluster"]
    launch(ip, 2)
    ip.run_line_magic("on", "all true")
    assert len(cluster.engine.pool) == 2
    ip.run_line_magic("unload_ext", "ecshell")
    assert len(cluster.engine.pool) == 0
    assert "cluster" not in ip.user_ns
    assert ip.find_line_magic("on") is None and ip.find_cell_magic("on") is None
    assert ecshell_magics(ip) == []
    assert ResultSet not in ip.display_formatter.formatters["text/plain"].type_printers
    assert not [m for m in ip.Completer.custom_matchers if m.matcher_identifier == "ecshell.targets"]


def test_reload_leaves_one_set_of_magics_and_no_leaked_connection(ip):
    old = ip.user_ns["cluster"]
    launch(ip, 2)
    ip.run_line_magic("on", "all true")
    ip.run_line_magic("reload_ext", "ecshell")
    new = ip.user_ns["cluster"]
    assert new is not old
    assert len(old.engine.pool) == 0
    assert len(ecshell_magics(ip)) == 1
    assert ip.find_line_magic("on").__self__ is ecshell_magics(ip)[0]
    assert len([m for m in ip.Completer.custom_matchers if m.matcher_identifier == "ecshell.targets"]) == 1
    # the new cluster finds the machines the old one launched
    assert new.machines.names == ["node-0", "node-1"]
    rs = ip.run_line_magic("on", "all true")
    assert rs.all_ok


def test_never_shadows_an_existing_magic(isolated_home, capsys):
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    try:
        shell.register_magic_function(lambda line: "theirs", magic_name="cost")
        shell.run_line_magic("load_ext", "ecshell")
        assert shell.run_line_magic("cost", "") == "theirs"
        assert "%cost already exists" in capsys.readouterr().err
        assert shell.find_line_magic("on") is not None
        shell.run_line_magic("unload_ext", "ecshell")
        assert shell.run_line_magic("cost", "") == "theirs"
    finally:
        InteractiveShell.clear_instance()


# -- %launch, %ready, %terminate -----------------------------------------------


def test_launch_and_bad_arguments(ip):
    machines = launch(ip, 2, "web")
    assert machines.names == ["web-0", "web-1"]
    assert {m.state for m in machines} == {"ready"}
    for bad in ("", "zero", "0", "2 --image ami-1", "2 --fabric nowhere"):
        with pytest.raises(UsageError):
            ip.run_line_magic("launch", bad)


def test_launch_no_wait_then_ready(ip, capsys):
    machines = ip.run_line_magic("launch", "2 --name db --no-wait")
    assert "%ready" in capsys.readouterr().out
    ready = ip.run_line_magic("ready", "db-*")
    assert ready.names == machines.names == ["db-0", "db-1"]
    with pytest.raises(UsageError, match="machines are: db-\\[0-1\\]"):
        ip.run_line_magic("ready", "web-*")


def test_terminate_asks_for_all_and_honours_the_answer(ip, capsys):
    launch(ip, 3)
    session = extension_for(ip).session
    questions = []
    session.ask = lambda question: questions.append(question) or False
    assert ip.run_line_magic("terminate", "all") is None
    assert "Terminate 3 machines node-[0-2]?" in questions[0]
    assert "nothing terminated" in capsys.readouterr().out
    assert len(ip.user_ns["cluster"]) == 3
    gone = ip.run_line_magic("terminate", "node-2")  # one machine: no question
    assert gone.names == ["node-2"] and len(questions) == 1
    session.ask = None  # a session that cannot ask refuses instead
    with pytest.raises(UsageError, match="-y"):
        ip.run_line_magic("terminate", "all")
    assert ip.run_line_magic("terminate", "all -y").names == ["node-0", "node-1"]
    assert len(ip.user_ns["cluster"]) == 0
    with pytest.raises(UsageError):
        ip.run_line_magic("terminate", "")


# -- %on ---------------------------------------------------------------------------


def test_on_never_expands_variables_locally(ip):
    launch(ip, 2)
    ip.user_ns["HOME"] = "local-python-value"
    ip.run_cell("r = %on all echo $HOME {1+1} $ECSHELL_MACHINE")
    rs = ip.user_ns["r"]
    home = pwd.getpwuid(os.getuid()).pw_dir
    assert rs["node-0"].output == f"{home} {{1+1}} node-0\n"
    assert rs["node-1"].output == f"{home} {{1+1}} node-1\n"


def test_on_returns_resultset_and_keeps_history(ip):
    launch(ip, 3)
    cluster = ip.user_ns["cluster"]
    ip.run_cell("r = %on all uptime")
    assert isinstance(ip.user_ns["r"], ResultSet) and ip.user_ns["r"].all_ok
    rs = ip.run_line_magic("on", "all 'exit 3'")  # quoted as one word, as with ssh
    assert cluster.history[-2:] == [ip.user_ns["r"], rs]
    assert {r.exit_code for r in rs.results()} == {3}
    text = shown(ip, rs)
    assert "---------------- node-[0-2] (3) exit 3" in text
    assert "0 ok, 3 failed -- exit 3" in text


def test_on_transport_chooses_what_carries_the_broadcast(ip):
    launch(ip, 1, "gw")
    launch(ip, 2)
    cluster = ip.user_ns["cluster"]
    cluster.settings.gateways = ["gw-0"]
    through = ip.run_line_magic("on", "node-* echo $ECSHELL_MACHINE")
    direct = ip.run_line_magic("on", "--transport direct node-* echo $ECSHELL_MACHINE")
    assert [r.via for r in through.values()] == ["tree", "tree"]
    assert {r.via for r in direct.values()} <= {"channel", "executor", "shortcut"}
    assert [r.output for r in through.values()] == [r.output for r in direct.values()] == ["node-0\n", "node-1\n"]


def test_on_targets(ip):
    launch(ip, 3)
    launch(ip, 1, "db")
    cases = {"all": ["db-0", "node-0", "node-1", "node-2"], "node-*": ["node-0", "node-1", "node-2"],
             "node-[0-1]": ["node-0", "node-1"], "role=db": ["db-0"], "db-0,node-2": ["db-0", "node-2"]}
    for target, names in cases.items():
        assert sorted(ip.run_line_magic("on", f"{target} true")) == names, target
    with pytest.raises(UsageError, match=r"machines are: db-0,node-\[0-2\]"):
        ip.run_line_magic("on", "web-* true")
    with pytest.raises(UsageError, match="tags in use: role=db, role=node"):
        ip.run_line_magic("on", "role=web true")
    with pytest.raises(UsageError, match="give a command"):
        ip.run_line_magic("on", "all")
    with pytest.raises(UsageError):
        ip.run_line_magic("on", "")
    with pytest.raises(UsageError, match="bad range"):
        ip.run_line_magic("on", "node-[1-x] true")


def test_on_marker_target(ip):
    launch(ip, 3)
    cluster = ip.user_ns["cluster"]
    cluster["node-[0-1]"].mark("configured")
    assert list(ip.run_line_magic("on", "marker=configured true")) == ["node-0", "node-1"]
    assert list(ip.run_line_magic("on", "marker=!configured true")) == ["node-2"]
    table = ip.run_line_magic("cluster", "")
    assert [row[-1] for row in table.rows] == ["configured", "configured", "-"]


def test_failed_retargets_and_reruns_the_last_command(ip):
    launch(ip, 3)
    with pytest.raises(UsageError, match="nothing has been broadcast yet"):
        ip.run_line_magic("on", "failed true")
    first = ip.run_line_magic("on", "all test $ECSHELL_MACHINE = node-1")
    assert list(first.failed) == ["node-0", "node-2"]
    again = ip.run_line_magic("on", "failed")  # no command: the last one, where it failed
    assert list(again) == ["node-0", "node-2"]
    assert again.command.command == "test $ECSHELL_MACHINE = node-1"
    assert not again.ok
    fixed = ip.run_line_magic("on", "failed echo fixed $ECSHELL_MACHINE")
    assert {n: r.output for n, r in fixed.items()} == {"node-0": "fixed node-0\n", "node-2": "fixed node-2\n"}
    assert list(ip.run_line_magic("on", "ok true")) == ["node-0", "node-2"]
    with pytest.raises(UsageError, match="failed nowhere"):
        ip.run_line_magic("on", "failed true")


def test_cell_magic_sends_the_script(ip):
    launch(ip, 2)
    rs = ip.run_cell_magic("on", "-t 10 node-*", "x=$ECSHELL_MACHINE\necho \"cell on $x\"\nexit 0\n")
    assert {n: r.output for n, r in rs.items()} == {"node-0": "cell on node-0\n", "node-1": "cell on node-1\n"}
    assert shown(ip, rs).endswith("2 ok, 0 failed -- x=$ECSHELL_MACHINE ... (3 lines)")
    with pytest.raises(UsageError, match="from the cell"):
        ip.run_cell_magic("on", "all echo no", "echo yes\n")


def test_help_has_usage_and_examples(ip):
    doc = ip.find_line_magic("on").__doc__
    assert "%on [-t TIMEOUT] [--quiet] [--transport {direct,tree,ssm}] TARGET ..." in doc and "Examples" in doc and "%on failed" in doc
    for name in ("cluster", "launch", "ready", "terminate", "put", "get", "cost"):
        assert "Examples" in ip.find_line_magic(name).__doc__, name


def test_interrupt_returns_the_partial_resultset(ip):
    launch(ip, 2)
    main = threading.get_ident()
    timer = threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        rs = ip.run_line_magic("on", "all sleep 30")
    finally:
        timer.cancel()
    assert rs.interrupted
    assert {r.error for r in rs.results()} == {"interrupted"}
    assert "(interrupted: results shown are those that arrived)" in shown(ip, rs)
    assert ip.run_line_magic("on", "all echo still usable").all_ok


def test_streams_output_past_the_progress_delay(ip, capsys):
    launch(ip, 2)
    ip.run_line_magic("config", "EcShell.progress_after = 0")
    rs = ip.run_line_magic("on", "all 'echo one; sleep 0.3; printf two'")
    assert rs.all_ok
    out = capsys.readouterr().out
    for name in ("node-0", "node-1"):
        assert f"{name}: one\n" in out and f"{name}: two\n" in out
    ip.run_line_magic("config", "EcShell.progress_after = 60")
    ip.run_line_magic("on", "all echo quiet")
    assert "quiet" not in capsys.readouterr().out


def test_live_view_status_names_the_stragglers(ip):
    from ecshell.shell.live import LiveView

    machines = launch(ip, 3)
    view = LiveView(machines, delay=60)
    rs = machines[:1].run("true")
    view.result(rs["node-0"])
    assert "1/3 done, running: node-[1-2]" in view.status_text()


# -- display -----------------------------------------------------------------------


def test_display_folds_and_escapes(ip):
    launch(ip, 3)
    rs = ip.run_line_magic("on", "all 'if [ $ECSHELL_MACHINE = node-2 ]; then echo odd; exit 4; fi; "
                                 "printf \"same <b>\\033[31m\\n\"'")
    text = shown(ip, rs)
    assert "---------------- node-[0-1] (2) ok" in text
    assert "---------------- node-2 (1) exit 4" in text
    assert "\x1b[31m" not in text  # remote escape sequences are made visible, never obeyed
    html = rs._repr_html_()
    assert "&lt;b&gt;" in html and "<b>same" not in html
    colored = extension_for(ip)._pretty_resultset
    from IPython.lib.pretty import pretty

    assert "\x1b[" not in pretty(rs)  # no colour when stdout is not a terminal
    assert callable(colored)


# -- host keys -------------------------------------------------------------------------


def _static_hosts(isolated_home, machines):
    """An ssh_config naming the local machines ext0, ext1 (no pinned keys: known_hosts rules)."""
    key = os.path.join(os.environ["ECSHELL_HOME"], "id_ed25519")
    config = isolated_home / "ssh_config"
    user = pwd.getpwuid(os.getuid()).pw_name
    config.write_text("".join(
        f"Host ext{i}\n  HostName 127.0.0.1\n  Port {m.port}\n  User {user}\n  IdentityFile {key}\n"
        for i, m in enumerate(machines)))
    return StaticFabric([f"ext{i}" for i in range(len(machines))], ssh_config=str(config), name="static")


def test_new_host_keys_are_shown_together_and_asked_once(ip, isolated_home, capsys):
    machines = launch(ip, 2)
    cluster = ip.user_ns["cluster"]
    cluster.attach(_static_hosts(isolated_home, machines))
    session = extension_for(ip).session
    questions = []
    session.ask = lambda question: questions.append(question) or False
    refused = ip.run_line_magic("on", "ext* hostname")
    assert {r.error for r in refused.results()} == {"hostkey"}
    assert len(questions) == 1
    out = capsys.readouterr().out
    assert "2 of 2 hosts offered a host key that is not in known_hosts" in out
    assert out.count("ssh-ed25519 SHA256:") == 2
    assert "hostkey" in shown(ip, refused)

    session.ask = lambda question: questions.append(question) or True
    accepted = ip.run_line_magic("on", "ext* hostname")
    assert accepted.all_ok and len(questions) == 2
    known = (isolated_home / "home" / ".ssh" / "known_hosts").read_text()
    assert all(f"[127.0.0.1]:{m.port} ssh-ed25519" in known for m in machines)
    assert ip.run_line_magic("on", "ext* true").all_ok and len(questions) == 2  # never asked again


# -- files ----------------------------------------------------------------------------------


def test_put_and_get(ip, tmp_path):
    launch(ip, 2)
    source = tmp_path / "app.txt"
    source.write_text("payload\n")
    remote = tmp_path / "remote"
    remote.mkdir()
    ip.user_ns["src"], ip.user_ns["remote"] = str(source), str(remote)
    rs = ip.run_line_magic("put", f"{source} {remote}/ node-0 -m 640")
    assert rs.all_ok and (remote / "app.txt").read_text() == "payload\n"
    assert oct((remote / "app.txt").stat().st_mode & 0o777) == "0o640"
    got = ip.run_line_magic("get", f"{remote}/app.txt {tmp_path}/got")
    assert got.all_ok
    assert (tmp_path / "got" / "node-1" / "app.txt").read_text() == "payload\n"
    assert ip.user_ns["cluster"].history[-1] is got
    missing = ip.run_line_magic("get", f"{remote}/nothing {tmp_path}/got node-0")
    assert missing["node-0"].error == "exit"
    with pytest.raises(UsageError, match="no local file"):
        ip.run_line_magic("put", f"{tmp_path}/nothing /tmp/")
    with pytest.raises(UsageError, match="octal"):
        ip.run_line_magic("put", f"{source} {remote}/ node-0 -m rw")


# -- tables, cost, completion, config ------------------------------------------------------


def test_cluster_and_cost_tables(ip):
    ip.run_line_magic("config", "LocalFabric.hourly_cost = 0.5")
    launch(ip, 2, "web")
    table = ip.run_line_magic("cluster", "--no-markers")
    assert [row[0] for row in table.rows] == ["web-0", "web-1"]
    assert table.header == ["name", "fabric", "id", "state", "address", "uptime", "cost", "markers"]
    assert {row[3] for row in table.rows} == {"ready"}
    cost = ip.run_line_magic("cost", "")
    assert cost.rows[0][:3] == ["local", "web-[0-1]", "2"]
    assert cost.rows[0][5:7] == ["$0.5000", "$1.00"]
    assert "2 machines running, $1.00/h now" in str(cost)
    assert "<table>" in cost._repr_html_()
    session = extension_for(ip).session
    assert "2 running (local) | $1.00/h" in session.toolbar()
    warning = session.exit_warning()
    assert warning.startswith("WARNING: 2 machines that cost money are still running (web-[0-1])")
    ip.run_line_magic("terminate", "all -y")
    assert session.exit_warning() is None and session.toolbar() == ""
    assert "nothing running" in str(ip.run_line_magic("cost", ""))


def completed(ip, line):
    """Whole words, as ``line`` reads after accepting each completion, through IPython's
    ``completions()`` with Jedi on: what prompt_toolkit and Jupyter's complete_request call."""
    from IPython.core.completer import provisionalcompleter

    assert ip.Completer.use_jedi
    with provisionalcompleter():
        found = list(ip.Completer.completions(line, len(line)))
    return [(line[:c.start] + c.text).split()[-1] for c in found]


def test_completion_of_targets(ip, capsys):
    launch(ip, 2)
    launch(ip, 1, "db")
    complete = lambda line: completed(ip, line)  # noqa: E731

    assert complete("%on node-") == ["node-*", "node-0", "node-1"]  # never Python names (Jedi's)
    assert complete("%on no") == ["node-*", "node-0", "node-1"]
    assert complete("%on ")[:3] == ["all", "ok", "failed"]
    assert complete("%on role=") == ["role=db", "role=node"]
    assert complete("%on role=d") == ["role=db"]
    assert complete("%on -t 5 d") == ["db-*", "db-0"]
    assert complete("%on node-0,d") == ["node-0,db-*", "node-0,db-0"]  # after a comma: the next name
    assert complete("rs = %on d") == ["db-*", "db-0"]
    assert "db-0" in complete("%terminate d")
    assert "node-1" in complete("%ready node-")
    assert "node-1" in complete("%put app.tgz /tmp/ node-")
    assert "node-1" in complete("%get /etc/hostname logs/ node-")
    assert "node-1" in complete("%%on no")
    assert "node-1" in complete("x = 1\n%on node-")  # a magic on a later line of a cell
    assert "node-1" not in complete("%on all echo no")  # the command is not a target
    assert "node-0" not in complete("") and "node-0" not in complete("x = 1\n")  # no target here ...
    assert "Traceback" not in capsys.readouterr().err  # ... and no error (IPython prints a matcher's and goes on)
    assert [w.rstrip("\"']") for w in complete("cluster['no")] == ["cluster['node-*", "cluster['node-0", "cluster['node-1"]
    assert [w.rstrip("\"']") for w in complete('cluster["d')] == ['cluster["db-*', 'cluster["db-0']
    ip.user_ns["cluster"]["node-0"].mark("configured")
    ip.run_line_magic("cluster", "")  # reads markers
    assert complete("%on marker=") == ["marker=configured"]
    ip.user_ns["cluster"]["node-1"].mark("cloudlet.alice")  # what placing alice's cloudlet leaves on its host
    ip.run_line_magic("cluster", "")
    assert complete("%on cloudlet:") == ["cloudlet:*", "cloudlet:alice"]
    assert complete("%on cloudlet:a") == ["cloudlet:alice"]


def test_config_traits_are_tagged_with_help(ip, capsys):
    from ecshell.config import EcShell

    classes = [EcShell, LocalFabric, StaticFabric]
    try:
        from ecshell import Ec2Fabric
        classes.append(Ec2Fabric)
    except ImportError:
        pass
    expected = {"default_fabric", "fanout", "connect_timeout", "command_timeout", "output_memory_limit",
                "home", "strict_host_key_checking", "progress_after", "stream_output",
                "confirm_terminate_above", "confirm_launch_above", "toolbar"}
    assert expected <= set(EcShell.class_traits(config=True))
    for cls in classes:
        for name, trait in cls.class_traits(config=True).items():
            assert trait.help.strip(), f"{cls.__name__}.{name} has no help"
    ip.run_line_magic("config", "EcShell")
    out = capsys.readouterr().out
    assert "EcShell.progress_after" in out and "EcShell.fanout" in out
    ip.run_line_magic("config", "EcShell.fanout = 8")
    assert ip.user_ns["cluster"].settings.fanout == 8


def test_cluster_from_shell_config(isolated_home):
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.EcShell.fanout = 5
    config.LocalFabric.hourly_cost = 0.25
    shell = InteractiveShell.instance(config=config)
    try:
        shell.run_line_magic("load_ext", "ecshell")
        cluster = shell.user_ns["cluster"]
        assert cluster.settings.fanout == 5
        assert cluster.fabrics["local"].hourly_cost == 0.25
        shell.run_line_magic("unload_ext", "ecshell")
    finally:
        InteractiveShell.clear_instance()


def test_changed_host_key_is_refused_without_a_question(ip, isolated_home):
    from ecshell.ssh.keys import generate_ed25519

    machines = launch(ip, 1)
    cluster = ip.user_ns["cluster"]
    cluster.attach(_static_hosts(isolated_home, machines))
    known = isolated_home / "home" / ".ssh" / "known_hosts"
    known.write_text(f"[127.0.0.1]:{machines[0].port} {generate_ed25519()[1]}\n")
    questions = []
    extension_for(ip).session.ask = lambda question: questions.append(question) or True
    rs = ip.run_line_magic("on", "ext0 hostname")
    assert rs["ext0"].error == "hostkey" and questions == []
    text = shown(ip, rs)
    assert "HOST KEY CHANGED" in text and f"ssh-keygen -f {known} -R '[127.0.0.1]:{machines[0].port}'" in text


def test_a_bad_setting_loads_nothing_and_says_why(isolated_home):
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.EcShell.default_fabric = "nowhere"
    shell = InteractiveShell.instance(config=config)
    try:
        with pytest.raises(UsageError, match="ecshell not loaded: unknown default_fabric 'nowhere'"):
            shell.run_line_magic("load_ext", "ecshell")
        assert "cluster" not in shell.user_ns and shell.find_line_magic("on") is None
        assert extension_for(shell) is None
        shell.run_line_magic("config", "EcShell.default_fabric = 'local'")
        shell.run_line_magic("load_ext", "ecshell")  # fixed: loads now
        assert shell.find_line_magic("on") is not None
        shell.run_line_magic("unload_ext", "ecshell")
    finally:
        InteractiveShell.clear_instance()


def test_streaming_is_bounded(ip):
    import io

    from ecshell.shell import live

    machines = launch(ip, 1)
    screen = io.StringIO()
    view = live.LiveView(machines, delay=60, stream=screen)
    chunk = b"x" * 65536 + b"\n"
    for _ in range(3 * live.QUEUE_LIMIT // len(chunk)):
        view.output(machines[0], chunk)
    assert view._queued <= live.QUEUE_LIMIT and view._skipped >= live.QUEUE_LIMIT
    view._drain(final=True)
    text = screen.getvalue()
    assert "arrived too fast to stream; the results hold all of it" in text
    assert len(text) <= live.QUEUE_LIMIT + 4096


def test_display_lists_connection_failures_by_kind(ip):
    machines = launch(ip, 3)
    cluster = ip.user_ns["cluster"]
    cluster.fabrics["local"].stop([machines[2].id])  # behind the cluster's back: it still says ready
    rs = ip.run_line_magic("on", "all echo up")
    text = shown(ip, rs)
    assert "---------------- node-[0-1] (2) ok" in text
    assert "failed:\n  unreachable node-2 (1): connection refused" in text
    assert text.endswith("2 ok, 1 failed -- echo up")
    assert list(ip.run_line_magic("on", "failed true")) == ["node-2"]


def test_console_command_line(isolated_home):
    from ecshell.shell.console import ipython_argv, operator_profile

    argv, config = ipython_argv(["--fabric", "local", "--EcShell.fanout=16"])
    assert config.EcShell.default_fabric == "local"
    assert f"--ipython-dir={os.environ['ECSHELL_HOME']}/ipython" in argv
    assert "--profile=operator" in argv and "--ext=ecshell" in argv
    assert f"--config={operator_profile()}" in argv
    assert operator_profile().endswith("profiles/operator/ipython_config.py")
    assert argv[-1] == "--EcShell.fanout=16"  # the rest goes to IPython unchanged
    argv, config = ipython_argv(["--hosts", "h0,ops@127.0.0.1:2222", "--profile=mine"])
    assert config.EcShell.default_fabric == "static"
    assert config.StaticFabric.hosts == ["h0", "ops@127.0.0.1:2222"]
    assert "--profile=operator" not in argv and "--profile=mine" in argv
    with pytest.raises(SystemExit):
        ipython_argv(["--fabric", "cloud9"])


# -- nothing typed into a magic is evaluated (issue 15, item 5) -----------------


def test_no_magic_expands_braces_or_dollars_from_a_tag_or_a_name(ip, tmp_path):
    """A tag value from a fabric (a cloud API others write) reaches the magics as data, in every magic."""
    canary = tmp_path / "expanded"
    ip.user_ns["canary_path"] = str(canary)
    hostile = "{open(canary_path,chr(119)).close()}"  # no quotes or spaces: shell-style splitting keeps it whole
    ip.run_line_magic("launch", "1 --name web")
    cluster = ip.user_ns["cluster"]
    cluster.machine("web-0").tags["zone"] = hostile  # as a fabric would report it
    word = f"zone={hostile}"
    lines = {"cluster": word, "launch": f"1 --name {hostile}", "on": f"{word} true", "ready": word,
             "terminate": f"{word} -y", "put": f"{tmp_path}/none /tmp/ {word}", "get": f"/etc/hostname {hostile} {word}",
             "cost": word}
    evaluated = []
    for magic, line in lines.items():
        ip.run_cell(f"%{magic} {line}")
        if canary.exists():
            evaluated.append(magic)
            canary.unlink()
    assert evaluated == []
