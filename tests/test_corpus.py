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

import os
import pathlib
import re
import time

import pytest
from openssh_support import Lab, via_ssh_many

CORPUS = pathlib.Path(__file__).parent / "corpus" / "commands.txt"
CLIENT_PORT = re.compile(rb"127\.0\.0\.1 \d+ ")
RUN_VARIABLE_LINE = re.compile(rb"^.*ECSHELL_.*\n?", re.MULTILINE)


def corpus_commands() -> list[str]:
    """The corpus' command lines: every line but blank ones and ``#`` comments, kept byte for byte."""
    lines = CORPUS.read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line and not line.startswith("#")]


def normalized(output: bytes) -> bytes:
    return CLIENT_PORT.sub(b"127.0.0.1 PORT ", RUN_VARIABLE_LINE.sub(b"", output))


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
    duplicates = {c for c in commands if commands.count(c) > 1}
    assert not duplicates, duplicates


@pytest.fixture
def lab(isolated_home):
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def test_every_path_gives_what_ssh_gives(lab, monkeypatch):
    from ecshell import Cluster, StaticFabric
    from ecshell.ssh import executor as executor_module

    key = lab.keygen("id_ed25519")
    server = lab.server("web", authorized=[key])
    lab.known_hosts(server)
    lab.config(f"Host web\n  HostName 127.0.0.1\n  Port {server.port}\n  User root\n  IdentityFile {key}\n"
               "  IdentitiesOnly yes\n")
    commands = corpus_commands()
    started = time.monotonic()
    theirs = via_ssh_many(lab, "web", commands)
    timings = {"ssh": time.monotonic() - started}

    monkeypatch.setenv("HOME", str(lab.home))
    cluster = Cluster(StaticFabric(["web"], ssh_config=str(lab.config_path)))
    seen, executors = {}, {}
    try:
        (machine,) = cluster.machines
        for path, executor, shortcut in (("channel", "channel", True), ("executor", "executor", False),
                                         ("shortcut, cold", "executor", True), ("shortcut, warm", "executor", True)):
            cluster.settings.executor, cluster.settings.executor_shortcut = executor, shortcut
            if path == "shortcut, cold":
                machine.close()  # a new connection, so a new executor that probes afresh
            started = time.monotonic()
            seen[path] = [machine.run(command, timeout=30) for command in commands]
            timings[path] = time.monotonic() - started
            if executor == "executor":
                hello = executor_module.peek(machine.connection()).hello
                assert hello["shortcut"] == "on", hello  # else the shortcut paths would be the shell's
                executors[path] = hello["pid"]
    finally:
        cluster.close()

    assert executors["executor"] != executors["shortcut, cold"] == executors["shortcut, warm"]
    differences = []
    for path, results in seen.items():
        for command, (status, stdout, stderr), r in zip(commands, theirs, results):
            ours = 255 if r.signal else r.exit_code
            if ours != status or not interleaves(normalized(r.output_bytes), normalized(stdout), normalized(stderr)):
                differences.append(f"{path}: {command!r}\n    ssh:     {status} {stdout!r} {stderr!r}\n"
                                   f"    ecshell: {ours} {r.error} {r.output_bytes!r} {r.message!r}")
    print(f"{len(commands)} commands; seconds per path: "
          + ", ".join(f"{path} {seconds:.1f}" for path, seconds in timings.items()))
    assert not differences, f"{len(differences)} differences:\n" + "\n".join(differences[:40])
