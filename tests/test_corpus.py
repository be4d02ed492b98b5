"""The differential corpus: real-world command lines through the real ``ssh`` and through ecshell.

Every line of ``corpus/commands.txt`` runs through OpenSSH's own client and
through ecshell on every path (a channel per command; the executor without
the shortcut; the executor with the shortcut on a fresh executor, then
again on the same one), against one real sshd on 127.0.0.1. Each path must
give ssh's exit status and ssh's output bytes. The only differences allowed
are the documented ones:

- stream order: ssh keeps stdout and stderr apart, ecshell gives them
  combined, so ecshell's output must be an interleaving of ssh's stdout and
  ssh's stderr (every byte of each, in each stream's order);
- ``ECSHELL_*`` variables in the environment (lines naming one are dropped);
- the parent process (no line of the corpus looks at it), and the client's
  port in ``SSH_CLIENT``/``SSH_CONNECTION`` (another connection).

A command killed by a signal is ssh's exit 255, ecshell's ``r.signal``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shutil
import time

import pytest
from openssh_support import Lab, via_ssh_many

CORPUS = pathlib.Path(__file__).parent / "corpus" / "commands.txt"
INPUT_CORPUS = pathlib.Path(__file__).parent / "corpus" / "with-input.txt"
CLIENT_PORT = re.compile(rb"127\.0\.0\.1 \d+ ")
#: Where a line (or an entry of ``env -0``) ends.
ENTRY_END = re.compile(rb"(?<=[\n\0])")


def corpus_commands(startup_too_only: bool = False) -> list[str]:
    """The corpus' command lines: every line but blank ones and ``#`` comments, kept byte for byte;
    with ``startup_too_only``, those of the blocks marked ``[start-up too]``."""
    commands, taken = [], True
    for line in CORPUS.read_text(encoding="utf-8").split("\n"):
        if line.startswith("# --- "):
            taken = not startup_too_only or line.startswith("# --- [start-up too]")
        elif line and not line.startswith("#") and taken:
            commands.append(line)
    return commands


def normalized(output: bytes) -> bytes:
    kept = b"".join(entry for entry in ENTRY_END.split(output) if b"ECSHELL_" not in entry)
    return CLIENT_PORT.sub(b"127.0.0.1 PORT ", kept)


def interleaves(merged: bytes, first: bytes, second: bytes) -> bool:
    """Whether ``merged`` is ``first`` and ``second`` interleaved, each kept whole and in order."""
    if len(merged) != len(first) + len(second):
        return False
    if not first or not second:
        return merged == first + second
    branches, tried = [(0, 0)], set()
    while branches:
        i, j = branches.pop()
        while True:
            k = i + j
            if k == len(merged):
                return True
            from_first = i < len(first) and merged[k] == first[i]
            from_second = j < len(second) and merged[k] == second[j]
            if from_first and from_second:
                if (i, j + 1) not in tried:
                    tried.add((i, j + 1))
                    branches.append((i, j + 1))
                i += 1
            elif from_first:
                i += 1
            elif from_second:
                j += 1
            else:
                break
    return False


def test_normalized_drops_ecshell_variables_and_the_client_port_only():
    assert normalized(b"A=1\nECSHELL_RUN=x\nSSH_CLIENT=127.0.0.1 5000 22\n") == b"A=1\nSSH_CLIENT=127.0.0.1 PORT 22\n"
    assert normalized(b"A=1\0ECSHELL_RUN=x\0B=2\0") == b"A=1\0B=2\0"
    assert normalized(b"ECSHELL") == b"ECSHELL"


def test_interleaves_keeps_every_byte_in_each_streams_order():
    assert interleaves(b"a\nerr\nb\n", b"a\nb\n", b"err\n")
    assert interleaves(b"aab", b"ab", b"a")
    assert not interleaves(b"b\na\nerr\n", b"a\nb\n", b"err\n")  # stdout's order changed
    assert not interleaves(b"a\nb\n", b"a\nb\n", b"err\n")  # stderr lost
    assert not interleaves(b"a\nb\nerr\nx", b"a\nb\n", b"err\n")
    assert interleaves(b"out", b"out", b"")


def test_the_corpus_is_big_and_unique():
    commands = corpus_commands()
    assert len(commands) >= 300
    assert 200 <= len(corpus_commands(startup_too_only=True)) < len(commands)
    duplicates = {c for c in commands if commands.count(c) > 1}
    assert not duplicates, duplicates


@pytest.fixture
def lab(isolated_home):
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def through_ecshell(config: pathlib.Path, commands: list[str], inputs: list[bytes | None], passes: int,
                    **settings) -> tuple[list, list]:
    """Each pass of ``commands`` on one machine of a new Cluster (so a new connection and executor):
    ([[Result per command] per pass], [the executor's hello after each pass, or None])."""
    from ecshell import Cluster, StaticFabric
    from ecshell.ssh import executor as executor_module

    cluster = Cluster(StaticFabric(["web"], ssh_config=str(config)), **settings)
    runs, hellos = [], []
    try:
        (machine,) = cluster.machines
        for _ in range(passes):
            runs.append([machine.run(command, timeout=30, input=given) for command, given in zip(commands, inputs)])
            executor = executor_module.peek(machine.connection())
            hellos.append(executor.hello if executor else None)
    finally:
        cluster.close()
    return runs, hellos


def serve(lab: Lab, user: str = "root", environment: dict[str, str | None] | None = None) -> pathlib.Path:
    """One sshd of the lab's, known to both clients as ``web``; the ssh_config file that says so."""
    key = lab.keygen("id_ed25519")
    server = lab.server("web", authorized=[key], environment=environment)
    lab.known_hosts(server)
    return lab.config(f"Host web\n  HostName 127.0.0.1\n  Port {server.port}\n  User {user}\n"
                      f"  IdentityFile {key}\n  IdentitiesOnly yes\n")


def compare_every_path(lab: Lab, config: pathlib.Path, commands: list[str],
                       inputs: list[bytes | None] | None = None, minimum_exec_d: int = 100) -> list:
    """Run ``commands`` through ssh and every ecshell path side by side, each on a connection of its own
    (they share nothing but the sshd); check what must hold for the comparison to mean something, and
    return ssh's results. Fails with every difference, per path."""
    inputs = inputs or [None] * len(commands)
    timings = {}

    def timed(name, run, *args, **kwargs):
        started = time.monotonic()
        try:
            return run(*args, **kwargs)
        finally:
            timings[name] = time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ssh = pool.submit(timed, "ssh", via_ssh_many, lab, "web", commands, parallel=2, inputs=inputs)
        channel = pool.submit(timed, "channel", through_ecshell, config, commands, inputs, 1, executor="channel")
        executor = pool.submit(timed, "executor", through_ecshell, config, commands, inputs, 1,
                               executor="executor", executor_shortcut=False)
        shortcut = pool.submit(timed, "shortcut, cold and warm", through_ecshell, config, commands, inputs, 2,
                               executor="executor", executor_shortcut=True)
    theirs = ssh.result()
    (cold, warm), hellos = shortcut.result()
    assert [h and h["shortcut"] for h in hellos] == ["on", "on"], hellos  # else it was the shell's path
    assert hellos[0]["pid"] == hellos[1]["pid"]  # warm: the executor of the cold pass
    seen = {"channel": channel.result()[0][0], "executor": executor.result()[0][0],
            "shortcut, cold": cold, "shortcut, warm": warm}

    differences = []
    for path, results in seen.items():
        for command, given, (status, stdout, stderr), r in zip(commands, inputs, theirs, results):
            ours = 255 if r.signal else r.exit_code
            if ours != status or not interleaves(normalized(r.output_bytes), normalized(stdout), normalized(stderr)):
                stdin = "" if given is None else f" (stdin: {len(given)} bytes {given[:20]!r})"
                differences.append(f"{path}: {command!r}{stdin}\n    ssh:     {status} {stdout[:2000]!r} "
                                   f"{stderr[:2000]!r}\n    ecshell: {ours} {r.error} {r.output_bytes[:2000]!r} "
                                   f"{r.message!r}")
    exec_d = {path: sum(r.via == "shortcut" for r in seen[path]) for path in ("shortcut, cold", "shortcut, warm")}
    print(f"{len(commands)} commands, {exec_d} exec'd by the shortcut; seconds per path: "
          + ", ".join(f"{path} {seconds:.1f}" for path, seconds in timings.items()))
    # the shortcut's passes ran its own exec, not only the shell's
    assert exec_d["shortcut, cold"] == exec_d["shortcut, warm"] >= minimum_exec_d, exec_d
    counts = {path: sum(d.startswith(path + ":") for d in differences) for path in seen}
    assert not differences, f"{len(differences)} differences {counts}:\n" + "\n".join(differences[:40])
    return theirs


#: A $BASH_ENV that changes what commands inherit and still keeps the shortcut on: the probe must copy it
#: all, and each command must see it applied once (not once more for the executor's own start).
STARTUP = """umask 027
export CORPUS_STARTUPS=$((CORPUS_STARTUPS + 1))
PATH=/usr/local/sbin:$PATH:relative-nonexistent
ulimit -S -n 512
[ -z "$PS1" ] && return
"""


def stock_user(lab: Lab) -> str:
    """A throwaway account whose login shell is bash, with Debian's stock ~/.bashrc and ~/.profile."""
    home = lab.root / "stock-home"
    home.mkdir()
    for name in (".bashrc", ".profile"):
        shutil.copy(f"/etc/skel/{name}", home / name)
    user = lab.user(f"eccorpus{os.getpid() % 100000}", shell="/bin/bash", home=home)
    shutil.chown(home, user, user)
    for name in (".bashrc", ".profile"):
        shutil.chown(home / name, user, user)
    return user


@pytest.mark.parametrize("variant", ["root", "root under a BASH_ENV", "a user, stock start-up files"])
def test_every_path_gives_what_ssh_gives(lab, monkeypatch, variant):
    user, environment = "root", None
    if variant == "root under a BASH_ENV":
        bash_env = lab.root / "bash_env"
        bash_env.write_text(STARTUP)
        bash_env.chmod(0o644)
        environment = {"BASH_ENV": str(bash_env)}
    elif variant == "a user, stock start-up files":
        if not os.path.exists("/etc/skel/.bashrc") or not os.path.exists("/etc/bash.bashrc"):
            pytest.skip("Debian's stock start-up files are not here")
        user = stock_user(lab)
        environment = {"SHLVL": None}  # as sshd leaves it: bash then reads /etc/bash.bashrc and ~/.bashrc
    config = serve(lab, user, environment)
    monkeypatch.setenv("HOME", str(lab.home))  # ecshell's ~ is the lab's, as ssh's is
    commands = corpus_commands(startup_too_only=variant != "root")
    theirs = compare_every_path(lab, config, commands)
    assert theirs[commands.index("id -un")][1] == f"{user}\n".encode()  # the variant's account ran them


#: What the commands of corpus/with-input.txt get on stdin, each in turn.
INPUTS = {"none": b"", "two lines": b"hello\nworld\n", "no newline": b"no newline at the end",
          "binary": bytes(range(256)) * 4, "a megabyte": b"".join(b"%07d\n" % i for i in range(131072))}


def input_cases() -> list[tuple[str, bytes]]:
    """(command, stdin) for every line of corpus/with-input.txt and every input; the megabyte is left
    out for the lines of a block titled [small inputs only]."""
    cases, small_only = [], False
    for line in INPUT_CORPUS.read_text(encoding="utf-8").split("\n"):
        if line.startswith("# --- "):
            small_only = "[small inputs only]" in line
        elif line and not line.startswith("#"):
            cases += [(line, given) for name, given in INPUTS.items() if not (small_only and name == "a megabyte")]
    return cases


def test_every_path_gives_what_ssh_gives_with_input(lab, monkeypatch):
    """The command's stdin: ssh's from a pipe, ecshell's from ``input=`` (then EOF)."""
    config = serve(lab)
    monkeypatch.setenv("HOME", str(lab.home))
    cases = input_cases()
    assert len(cases) >= 100
    compare_every_path(lab, config, [c for c, _ in cases], [i for _, i in cases], minimum_exec_d=30)
