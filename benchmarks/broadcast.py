#!/usr/bin/env python3
"""Broadcast benchmark: ecshell against parallel-ssh, asyncssh, Fabric and paramiko + threads.

A script, not a test. It launches local machines (real sshd on 127.0.0.1,
through LocalFabric, in a temporary ECSHELL_HOME and HOME), runs ``hostname``
on 10, 50 and 100 of them, cold and warm, with every tool holding its own
connections to the same machines, rounds interleaved between the tools, and
terminates every machine it started at the end, whatever happened.
``ecshell-static`` reaches the same machines as a StaticFabric whose names
are resolved through an ssh_config file (OpenSSH's ``ssh -G``).

    python benchmarks/broadcast.py              # the full run (N = 10, 50, 100)
    python benchmarks/broadcast.py --quick      # smoke test: N = 10, 2 rounds
    python benchmarks/broadcast.py --scale 500  # 500 machines, ecshell warm broadcast, memory
    python benchmarks/broadcast.py --sizes 50,100 --modes cold --peers asyncssh   # the StaticFabric case

See benchmarks/README.md for what each figure means. JSON goes to
benchmarks/results/ (gitignored).
"""

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

COMMAND = "hostname"
EXPECTED = socket.gethostname()
PEERS = ("parallel-ssh", "asyncssh", "fabric", "paramiko+threads")
OPTIONAL_PEERS = ("asyncssh-config",)
ECSHELLS = ("ecshell", "ecshell-static")
TOOLS = ECSHELLS + PEERS


# -- the machines -------------------------------------------------------------------


class Fleet:
    """N local machines, the client key, and a known_hosts file with their pinned keys."""

    def __init__(self, home, count):
        from ecshell.fabrics.local import LocalFabric

        self.home = home
        # A loaded 2-core box can take more than LocalFabric's default 5 s to start 500 sshd.
        self.fabric = LocalFabric(start_timeout=120.0)
        self.prototypes = []
        started = time.perf_counter()
        batch = 100
        while len(self.prototypes) < count:
            self.prototypes += self.fabric.launch(min(batch, count - len(self.prototypes)), name="bench")
        self.launch_seconds = time.perf_counter() - started
        self.prototypes.sort(key=lambda p: int(p.name.rsplit("-", 1)[1]))
        self.user = self.prototypes[0].user
        self.key = self.prototypes[0].identity_files[0]
        self.known_hosts = os.path.join(home, "known_hosts")
        with open(self.known_hosts, "w") as f:
            for p in self.prototypes:
                for key in p.host_keys:
                    f.write(f"[{p.host}]:{p.port} {' '.join(key.split()[:2])}\n")
        self.ports = [p.port for p in self.prototypes]
        # The same machines as names in an ssh_config file, for StaticFabric (and asyncssh's
        # own config reader): one Host block per machine, the shared options under Host *.
        self.aliases = [f"box-{i}" for i in range(len(self.prototypes))]
        self.ssh_config = os.path.join(home, "ssh_config")
        with open(self.ssh_config, "w") as f:
            for alias, port in zip(self.aliases, self.ports):
                f.write(f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n")
            f.write(f"Host *\n  User {self.user}\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
                    f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n")

    def terminate(self):
        ids = [p.id for p in self.fabric.discover()]
        if ids:
            self.fabric.terminate(ids)


def _settings(fanout):
    return {} if fanout is None else {"fanout": fanout}


def _cluster(fleet, fanout=None):
    """A fresh Cluster (fresh Engine and pool) over the fleet's machines, found from disk."""
    from ecshell import Cluster
    from ecshell.fabrics.local import LocalFabric

    return Cluster(LocalFabric(directory=fleet.fabric.directory, key_file=fleet.fabric.key_file),
                   **_settings(fanout))


def _check(outputs, n):
    """Raise unless there are n outputs that are all the hostname."""
    good = sum(1 for o in outputs if o.strip() == EXPECTED)
    if len(outputs) != n or good != n:
        bad = [o for o in outputs if o.strip() != EXPECTED][:3]
        raise RuntimeError(f"{good}/{n} hosts answered {EXPECTED!r}; e.g. {bad!r}")


# -- the tools ----------------------------------------------------------------------
#
# Each tool has: connect_all(ports) for its warm pool (untimed, in the warm-up),
# warm(n) -> outputs over its pooled connections to the first n machines,
# cold(n) -> (outputs, cleanup) with fresh clients (cleanup is not timed), close().


class EcShellTool:
    name = "ecshell"

    def __init__(self, fleet, fanout=None):
        self.fleet, self.fanout = fleet, fanout
        self.cluster = _cluster(fleet, fanout)
        self.discover_seconds = []

    def _targets(self, cluster, n):
        return cluster.machines[:n]

    def connect_all(self, ports):
        self.warm(len(ports))

    def warm(self, n):
        rs = self._targets(self.cluster, n).run(COMMAND)
        return [r.output if r.ok else f"{r.status}: {r.message}" for r in rs.values()]

    def prepare_cold(self, n):
        # A cold round's clock starts at the fresh Cluster's first broadcast: building
        # the Cluster (finding the machines on disk) is measured apart, in discover_seconds.
        t = time.perf_counter()
        cluster = _cluster(self.fleet, self.fanout)
        self.discover_seconds.append(time.perf_counter() - t)
        return cluster

    def cold_with(self, cluster, n):
        rs = self._targets(cluster, n).run(COMMAND)
        return [r.output if r.ok else f"{r.status}: {r.message}" for r in rs.values()], cluster.close

    def interactive(self, count, machine_index=0):
        machine = self.cluster.machines[machine_index]
        times = []
        for _ in range(count):
            t = time.perf_counter()
            r = machine.run(COMMAND)
            times.append(time.perf_counter() - t)
            if r.output.strip() != EXPECTED:
                raise RuntimeError(f"ecshell interactive: {r!r}")
        return times

    def close(self):
        self.cluster.close()


class EcShellStaticTool(EcShellTool):
    """ecshell over a StaticFabric: the machines as names resolved through an ssh_config file.

    A cold round builds ``Cluster(StaticFabric(names, ssh_config=...))`` with
    ecshell's resolution cache emptied first, so that every name is resolved
    afresh (by ``ssh -G``) as in a new process; that build is timed apart
    (``build_seconds``, per N), the first broadcast is the cold figure.
    """

    name = "ecshell-static"

    def __init__(self, fleet, fanout=None):
        self.fleet, self.fanout = fleet, fanout
        self.build_seconds = {}
        self.cluster = self._static_cluster(len(fleet.aliases))

    def _static_cluster(self, n):
        from ecshell import Cluster, StaticFabric

        return Cluster(StaticFabric(self.fleet.aliases[:n], ssh_config=self.fleet.ssh_config),
                       **_settings(self.fanout))

    def _targets(self, cluster, n):
        return cluster.machines[:n]

    def prepare_cold(self, n):
        _forget_resolutions()()
        t = time.perf_counter()
        cluster = self._static_cluster(n)
        self.build_seconds.setdefault(n, []).append(time.perf_counter() - t)
        return cluster


def _forget_resolutions():
    """ecshell's cache of resolved ssh_config names, emptied before a cold static round."""
    from ecshell.ssh import options

    return options.forget


class ParamikoTool:
    """The plain baseline: one paramiko SSHClient per host, a thread per host, TCP_NODELAY."""

    name = "paramiko+threads"

    def __init__(self, fleet):
        self.fleet = fleet
        self.clients = {}
        self.pool = ThreadPoolExecutor(max_workers=100, thread_name_prefix="paramiko-bench")

    def _connect(self, port):
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(self.fleet.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect("127.0.0.1", port, username=self.fleet.user, key_filename=self.fleet.key,
                       look_for_keys=False, allow_agent=False, sock=sock, timeout=30,
                       banner_timeout=30, auth_timeout=30)
        return client

    @staticmethod
    def _exec(client):
        channel = client.get_transport().open_session(timeout=30)
        channel.set_combine_stderr(True)
        channel.exec_command(COMMAND)
        channel.shutdown_write()
        chunks = []
        while True:
            data = channel.recv(65536)
            if not data:
                break
            chunks.append(data)
        channel.recv_exit_status()
        channel.close()
        return b"".join(chunks).decode()

    def connect_all(self, ports):
        for port, client in zip(ports, self.pool.map(self._connect, ports)):
            self.clients[port] = client

    def warm(self, n):
        return list(self.pool.map(self._exec, [self.clients[p] for p in self.fleet.ports[:n]]))

    def cold(self, n):
        def one(port):
            client = self._connect(port)
            return client, self._exec(client)

        pairs = list(self.pool.map(one, self.fleet.ports[:n]))

        def cleanup():
            for client, _ in pairs:
                client.close()

        return [out for _, out in pairs], cleanup

    def interactive(self, count, machine_index=0):
        client = self.clients[self.fleet.ports[machine_index]]
        times = []
        for _ in range(count):
            t = time.perf_counter()
            out = self._exec(client)
            times.append(time.perf_counter() - t)
            assert out.strip() == EXPECTED
        return times

    def close(self):
        for client in self.clients.values():
            client.close()
        self.pool.shutdown()


class AsyncsshTool:
    """asyncio.gather over asyncssh connections, on one event loop kept between rounds."""

    name = "asyncssh"

    def __init__(self, fleet):
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.conns = {}

    async def _connect(self, port):
        import asyncssh

        return await asyncssh.connect(
            "127.0.0.1", port=port, username=self.fleet.user, client_keys=[self.fleet.key],
            known_hosts=self.fleet.known_hosts, agent_path=None, config=None,
            preferred_auth="publickey", connect_timeout=30)

    @staticmethod
    async def _run(conn):
        result = await conn.run(COMMAND, check=False, stdin=asyncssh_devnull())
        return result.stdout + result.stderr

    def connect_all(self, ports):
        async def go():
            return await asyncio.gather(*(self._connect(p) for p in ports))

        for port, conn in zip(ports, self.loop.run_until_complete(go())):
            self.conns[port] = conn

    def warm(self, n):
        async def go():
            return await asyncio.gather(*(self._run(self.conns[p]) for p in self.fleet.ports[:n]))

        return self.loop.run_until_complete(go())

    def cold(self, n):
        async def one(port):
            conn = await self._connect(port)
            return conn, await self._run(conn)

        async def go():
            return await asyncio.gather(*(one(p) for p in self.fleet.ports[:n]))

        pairs = self.loop.run_until_complete(go())

        def cleanup():
            async def close():
                for conn, _ in pairs:
                    conn.close()
                await asyncio.gather(*(conn.wait_closed() for conn, _ in pairs))

            self.loop.run_until_complete(close())

        return [out for _, out in pairs], cleanup

    def interactive(self, count, machine_index=0):
        conn = self.conns[self.fleet.ports[machine_index]]

        async def go():
            times = []
            for _ in range(count):
                t = time.perf_counter()
                out = await self._run(conn)
                times.append(time.perf_counter() - t)
                assert out.strip() == EXPECTED
            return times

        return self.loop.run_until_complete(go())

    def close(self):
        async def close():
            for conn in self.conns.values():
                conn.close()
            await asyncio.gather(*(c.wait_closed() for c in self.conns.values()), return_exceptions=True)

        self.loop.run_until_complete(close())
        self.loop.close()


class AsyncsshConfigTool(AsyncsshTool):
    """asyncssh connecting by name, resolved through the same ssh_config file by its own reader."""

    name = "asyncssh-config"

    async def _connect(self, port):
        import asyncssh

        alias = self.fleet.aliases[self.fleet.ports.index(port)]
        return await asyncssh.connect(alias, config=[self.fleet.ssh_config], agent_path=None,
                                      preferred_auth="publickey", connect_timeout=30)


def asyncssh_devnull():
    import asyncssh

    return asyncssh.DEVNULL


class PsshTool:
    """parallel-ssh's ParallelSSHClient (libssh2), host keys checked against known_hosts."""

    name = "parallel-ssh"

    def __init__(self, fleet):
        self.fleet = fleet
        self.clients = {}  # n -> ParallelSSHClient over the first n machines

    def _client(self, n):
        from pssh.clients import ParallelSSHClient
        from pssh.clients.native import SSHClient
        from pssh.config import HostConfig
        from ssh2.knownhost import LIBSSH2_KNOWNHOST_KEYENC_RAW, LIBSSH2_KNOWNHOST_TYPE_PLAIN

        known_hosts = self.fleet.known_hosts

        class VerifyingClient(SSHClient):
            # parallel-ssh does not check host keys itself: check after the handshake,
            # before authenticating, with libssh2's known_hosts code.
            def _init_session(self, retries=1):
                super()._init_session(retries)
                kh = self.session.knownhost_init()
                kh.readfile(known_hosts)
                key, _ = self.session.hostkey()
                kh.checkp(b"127.0.0.1", self.port, key,
                          LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW)  # raises unless it matches

        class Verifying(ParallelSSHClient):
            def _make_ssh_client(self, host, cfg, _pkey_data):
                return VerifyingClient(
                    host, user=cfg.user or self.user, port=cfg.port or self.port, pkey=_pkey_data,
                    num_retries=1, timeout=30, allow_agent=False, identity_auth=False,
                    keepalive_seconds=cfg.keepalive_seconds or self.keepalive_seconds)

        ports = self.fleet.ports[:n]
        return Verifying(["127.0.0.1"] * n,
                         host_config=[HostConfig(port=p, user=self.fleet.user) for p in ports],
                         user=self.fleet.user, pkey=self.fleet.key, num_retries=1, timeout=30,
                         pool_size=100, allow_agent=False, identity_auth=False)

    @staticmethod
    def _run(client):
        output = client.run_command(COMMAND, stop_on_errors=True)
        client.join(output)
        outs = []
        for host_out in output:
            if host_out.exception is not None:
                raise host_out.exception
            outs.append("\n".join(host_out.stdout) + "\n")
        return outs

    @staticmethod
    def _disconnect(client):
        for c in list(client._host_clients.values()):
            try:
                c._disconnect()
            except Exception:
                pass

    def connect_all(self, ports):
        pass  # one client per n, connected in its own warm-up round

    def warm(self, n):
        if n not in self.clients:
            self.clients[n] = self._client(n)
        return self._run(self.clients[n])

    def cold(self, n):
        client = self._client(n)
        return self._run(client), lambda: self._disconnect(client)

    def close(self):
        for client in self.clients.values():
            self._disconnect(client)


class FabricTool:
    """Fabric's ThreadingGroup over Connections that reject unknown host keys."""

    name = "fabric"

    def __init__(self, fleet):
        self.fleet = fleet
        self.connections = {}

    def _connection(self, port):
        import paramiko
        from fabric import Config, Connection

        config = Config(overrides={"load_ssh_configs": False})
        conn = Connection("127.0.0.1", user=self.fleet.user, port=port, config=config,
                          connect_timeout=30,
                          connect_kwargs={"key_filename": [self.fleet.key], "look_for_keys": False,
                                          "allow_agent": False})
        # Fabric auto-adds unknown keys by default: verify against the pinned keys instead.
        conn.client.load_host_keys(self.fleet.known_hosts)
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    @staticmethod
    def _run(group):
        results = group.run(COMMAND, hide=True, warn=True, in_stream=False)
        return [results[c].stdout + results[c].stderr for c in group]

    def connect_all(self, ports):
        from fabric import ThreadingGroup

        for port in ports:
            self.connections[port] = self._connection(port)
        self._run(ThreadingGroup.from_connections([self.connections[p] for p in ports]))

    def warm(self, n):
        from fabric import ThreadingGroup

        return self._run(ThreadingGroup.from_connections([self.connections[p] for p in self.fleet.ports[:n]]))

    def cold(self, n):
        from fabric import ThreadingGroup

        group = ThreadingGroup.from_connections([self._connection(p) for p in self.fleet.ports[:n]])
        return self._run(group), group.close

    def close(self):
        for conn in self.connections.values():
            conn.close()


# -- measuring ----------------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else None


def _timed(tool, mode, n):
    """Seconds for one broadcast, or raises. Cleanup (closing cold clients) is untimed."""
    cleanup = None
    if tool.name in ECSHELLS and mode == "cold":
        cluster = tool.prepare_cold(n)
        gc.collect()
        t = time.perf_counter()
        try:
            outputs, cleanup = tool.cold_with(cluster, n)
        except BaseException:
            cluster.close()
            raise
    else:
        gc.collect()
        t = time.perf_counter()
        if mode == "warm":
            outputs = tool.warm(n)
        else:
            outputs, cleanup = tool.cold(n)
    elapsed = time.perf_counter() - t
    try:
        _check(outputs, n)
    finally:
        if cleanup is not None:
            cleanup()
    return elapsed


def run_case(tools, mode, n, rounds, log):
    """Warm-up, then ``rounds`` rounds; in each round every tool once, the order rotating."""
    samples = {t.name: [] for t in tools}
    errors = {t.name: [] for t in tools}
    for r in range(rounds + 1):  # round 0 is the warm-up, not recorded
        order = tools[r % len(tools):] + tools[:r % len(tools)]
        for tool in order:
            try:
                elapsed = _timed(tool, mode, n)
            except Exception as exc:
                errors[tool.name].append(f"round {r}: {type(exc).__name__}: {exc}")
                log(f"  {tool.name} {mode} N={n} round {r} failed: {exc}")
                continue
            if r > 0:
                samples[tool.name].append(elapsed)
        time.sleep(0.05)  # let sshd reap the sessions of the round
    return samples, errors


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def scratch_home(prefix):
    """A temporary directory holding this run's ECSHELL_HOME and HOME (no ~/.ssh or agent of the operator's
    leaks in); set in the environment, returned for removal at the end."""
    home = tempfile.mkdtemp(prefix=prefix)
    os.environ["ECSHELL_HOME"] = os.path.join(home, "ecshell")
    os.environ["HOME"] = os.path.join(home, "home")
    os.makedirs(os.environ["HOME"], mode=0o700)
    os.environ.pop("SSH_AUTH_SOCK", None)
    return home


def raise_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def ru_maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def os_threads():
    """Threads of this process as the kernel counts them (paramiko's transport threads included)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


class PeakSampler:
    """The most open descriptors and threads seen, sampled every 20 ms from a thread of its own."""

    def __init__(self):
        import threading

        self.fds = self.threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.fds = max(self.fds, open_fds())
            self.threads = max(self.threads, os_threads() or 0)

    def stop(self):
        self._stop.set()
        self._thread.join()
        return {"fds": self.fds, "threads": self.threads}


def fmt(x, width=9):
    return f"{x:>{width}.4f}" if isinstance(x, float) else f"{'—':>{width}}"


def print_table(cases, tool_names, out=print):
    header = (f"{'case':<6}{'N':>5}" + "".join(f"{name:>18}" for name in tool_names)
              + f"{'fastest peer':>18}{'ratio':>8}{'static':>8}")
    out(header)
    out("-" * len(header))
    for case in cases:
        med = case["median"]
        row = f"{case['mode']:<6}{case['n']:>5}" + "".join(f"{fmt(med.get(t), 18)}" for t in tool_names)
        fastest = case.get("fastest_peer")
        ratio = case.get("ratio")
        row += f"{fastest or '—':>18}" + (f"{ratio:>8.2f}" if ratio is not None else f"{'—':>8}")
        static = case.get("static_ratio")
        row += f"{static:>8.2f}" if static is not None else f"{'—':>8}"
        out(row)


def summarise(mode, n, samples, errors):
    med = {name: median(xs) for name, xs in samples.items()}
    peers = {name: m for name, m in med.items() if name not in ECSHELLS and m is not None}
    fastest = min(peers, key=peers.get) if peers else None
    ratio = med["ecshell"] / peers[fastest] if fastest and med.get("ecshell") else None
    static = med.get("ecshell-static")
    static_ratio = static / peers[fastest] if fastest and static else None
    return {"mode": mode, "n": n, "median": med, "samples": samples, "errors": errors,
            "fastest_peer": fastest, "ratio": ratio, "static_ratio": static_ratio}


# -- the runs -----------------------------------------------------------------------


def broadcast_run(fleet, args, log):
    sizes = [n for n in args.sizes if n <= len(fleet.ports)]
    biggest = max(sizes)
    ecs = EcShellTool(fleet, args.fanout)
    peers = {"parallel-ssh": PsshTool, "asyncssh": AsyncsshTool, "fabric": FabricTool,
             "paramiko+threads": ParamikoTool, "asyncssh-config": AsyncsshConfigTool}
    static = EcShellStaticTool(fleet, args.fanout) if args.static else None
    tools = [ecs] + ([static] if static else []) + [peers[name](fleet) for name in args.peers]
    cases = []
    try:
        log(f"opening warm pools to {biggest} machines for {len(tools)} tools")
        for tool in tools:
            t = time.perf_counter()
            tool.connect_all(fleet.ports[:biggest])
            log(f"  {tool.name}: {time.perf_counter() - t:.2f}s")
        for n in sizes:
            for mode in args.modes:
                log(f"{mode} N={n}: {args.rounds} rounds + warm-up, {len(tools)} tools interleaved")
                samples, errors = run_case(tools, mode, n, args.rounds, log)
                case = summarise(mode, n, samples, errors)
                cases.append(case)
                log("  " + "  ".join(f"{k}={fmt(v, 0)}" for k, v in case["median"].items())
                    + (f"  ratio={case['ratio']:.2f}" if case["ratio"] else ""))
        interactive = None
        if args.interactive:
            interactive = interactive_run([t for t in tools if t.name in ("ecshell", "asyncssh", "paramiko+threads")],
                                          args.interactive, log)
        return {"cases": cases, "interactive": interactive, "fanout": ecs.cluster.settings.fanout,
                "ecshell_discover_seconds": median(ecs.discover_seconds),
                "static_build_seconds": {n: median(xs) for n, xs in static.build_seconds.items()} if static else None,
                "static_build_samples": static.build_seconds if static else None,
                "tools": [t.name for t in tools]}
    finally:
        for tool in tools:
            try:
                tool.close()
            except Exception:
                log(f"closing {tool.name}: {traceback.format_exc(limit=1)}")


def interactive_run(tools, count, log):
    """``count`` sequential commands on one pooled machine per tool, in interleaved blocks of 10."""
    log(f"interactive: {count} sequential commands on machine 0, blocks of 10 interleaved")
    times = {t.name: [] for t in tools}
    for tool in tools:
        tool.interactive(5)  # warm-up
    block = 10
    done = 0
    while done < count:
        k = min(block, count - done)
        for tool in tools:
            times[tool.name] += tool.interactive(k)
        done += k
    med = {name: median(xs) for name, xs in times.items()}
    ratio = med["ecshell"] / med["asyncssh"] if med.get("asyncssh") else None
    log("  " + "  ".join(f"{k}={v * 1000:.2f}ms" for k, v in med.items())
        + (f"  ecshell/asyncssh={ratio:.2f}" if ratio else ""))
    return {"count": count, "median": med, "samples": times, "ratio_vs_asyncssh": ratio}


def scale_run(fleet, args, log):
    """ecshell alone on every machine: cold, then warm rounds, then memory."""
    import tracemalloc

    n = len(fleet.ports)
    result = {"n": n, "fds_before": open_fds(), "threads_before": os_threads()}
    rss_before = ru_maxrss_mb()
    cluster = _cluster(fleet, args.fanout)
    try:
        result["fanout"] = cluster.settings.fanout
        machines = cluster.machines[:n]
        sampler = PeakSampler()
        cpu = os.times()
        t = time.perf_counter()
        rs = machines.run(COMMAND)
        result["cold_seconds"] = time.perf_counter() - t
        result["cold_cpu_seconds"] = _cpu_since(cpu)
        result["cold_peak"] = sampler.stop()
        result["cold_failed"] = {r.name: f"{r.status}: {r.message}" for r in rs.failed.values()}
        log(f"scale: cold broadcast to {n}: {result['cold_seconds']:.3f}s, {len(rs.failed)} failed")
        warm, warm_cpu = [], []
        sampler = PeakSampler()
        for r in range(args.rounds + 1):
            gc.collect()
            cpu = os.times()
            t = time.perf_counter()
            rs = machines.run(COMMAND)
            elapsed = time.perf_counter() - t
            used = _cpu_since(cpu)
            _check([x.output for x in rs.values()], n)
            if r > 0:
                warm.append(elapsed)
                warm_cpu.append(used)
        result["warm_peak"] = sampler.stop()
        result["warm_samples"] = warm
        result["warm_median"] = median(warm)
        result["warm_cpu_median"] = median(warm_cpu)
        result["pooled_connections"] = len(cluster.engine.pool)
        result["fds_pooled"] = open_fds()
        result["threads_pooled"] = os_threads()
        result["ru_maxrss_mb"] = ru_maxrss_mb()
        result["ru_maxrss_mb_before_cluster"] = rss_before
        log(f"scale: warm broadcast to {n}: median {result['warm_median']:.3f}s over {len(warm)} rounds "
            f"(controller CPU {result['warm_cpu_median']:.2f}s), fanout {result['fanout']}, "
            f"peak RSS {result['ru_maxrss_mb']:.0f} MB, open fds {result['fds_pooled']} "
            f"(peak {result['warm_peak']['fds']}), threads {result['threads_pooled']} "
            f"(peak {max(result['cold_peak']['threads'], result['warm_peak']['threads'])})")
    finally:
        cluster.close()
    # Python-heap figures with tracemalloc (slow, so on a separate fresh cluster, untimed).
    gc.collect()
    tracemalloc.start()
    cluster = _cluster(fleet, args.fanout)
    try:
        machines = cluster.machines[:n]
        base = tracemalloc.get_traced_memory()[0]
        machines.run(COMMAND)
        pooled, peak_cold = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        rs = machines.run(COMMAND)
        _, peak_warm = tracemalloc.get_traced_memory()
        del rs
        result["traced_pool_mb"] = (pooled - base) / 2**20
        result["traced_peak_cold_mb"] = (peak_cold - base) / 2**20
        result["traced_peak_warm_mb"] = (peak_warm - base) / 2**20
        log(f"scale: traced Python heap: {result['traced_pool_mb']:.1f} MB held by {n} pooled connections, "
            f"peak {result['traced_peak_cold_mb']:.1f} MB connecting, {result['traced_peak_warm_mb']:.1f} MB "
            f"during a warm broadcast (pool included)")
    finally:
        tracemalloc.stop()
        cluster.close()
    return result


def _cpu_since(before):
    """User + system CPU seconds of this process since ``before`` (an ``os.times()``)."""
    now = os.times()
    return (now.user - before.user) + (now.system - before.system)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: N=10 only, 2 rounds")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 50, 100],
                        help="comma-separated machine counts (default 10,50,100)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 7; --quick 2)")
    parser.add_argument("--interactive", type=int, default=None,
                        help="sequential commands for the interactive case (default 40; 0 skips it)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated peers to run (default {','.join(PEERS)})")
    parser.add_argument("--fanout", type=int, default=None, help="ecshell fanout (default: ecshell's own)")
    parser.add_argument("--modes", type=lambda s: [m for m in s.split(",") if m], default=["warm", "cold"],
                        help="comma-separated: warm, cold (default both)")
    parser.add_argument("--no-static", dest="static", action="store_false",
                        help="leave out ecshell-static (the machines as ssh_config names, through StaticFabric)")
    parser.add_argument("--scale", type=int, default=None, metavar="N",
                        help="instead: N machines, ecshell warm broadcast, peak memory")
    parser.add_argument("--output", default=os.path.join(HERE, "results"), help="directory for the JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [10]
        args.rounds = args.rounds or 2
        args.interactive = 10 if args.interactive is None else args.interactive
    args.rounds = args.rounds or 7
    args.interactive = 40 if args.interactive is None else args.interactive
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = set(args.peers) - set(PEERS + OPTIONAL_PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS + OPTIONAL_PEERS)}")
    if set(args.modes) - {"warm", "cold"}:
        parser.error("--modes takes warm, cold or both")

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    count = args.scale or max(args.sizes)
    limits = raise_fd_limit(max(4096, 16 * count))
    home = scratch_home("ecshell-bench-")

    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": COMMAND,
        "argv": sys.argv[1:],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": loadavg(), "nofile": limits},
        "versions": versions(),
    }
    fleet = None
    try:
        log(f"launching {count} local machines in {home}")
        fleet = Fleet(home, count)
        report["launch_seconds"] = fleet.launch_seconds
        log(f"launched {count} in {fleet.launch_seconds:.2f}s")
        if args.scale:
            report["scale"] = scale_run(fleet, args, log)
        else:
            report.update(broadcast_run(fleet, args, log))
    finally:
        if fleet is not None:
            try:
                fleet.terminate()
            except Exception:
                log(f"terminate failed: {traceback.format_exc()}")
        else:
            from ecshell.fabrics.local import LocalFabric

            try:  # a launch that failed half way: stop whatever reached the disk
                f = LocalFabric()
                f.terminate([p.id for p in f.discover()])
            except Exception:
                pass
        shutil.rmtree(home, ignore_errors=True)
    report["machine"]["loadavg_after"] = loadavg()
    report["machine"]["ru_maxrss_mb"] = ru_maxrss_mb()

    os.makedirs(args.output, exist_ok=True)
    kind = "scale" if args.scale else ("quick" if args.quick else "broadcast")
    path = os.path.join(args.output, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)

    print()
    if args.scale:
        s = report["scale"]
        print(f"scale: {s['n']} machines, fanout {s['fanout']}: cold {s['cold_seconds']:.3f}s, "
              f"warm median {s['warm_median']:.3f}s; peak RSS {s['ru_maxrss_mb']:.0f} MB; "
              f"open fds {s['fds_pooled']} pooled (peak {max(s['cold_peak']['fds'], s['warm_peak']['fds'])}); "
              f"threads {s['threads_pooled']} pooled (peak {max(s['cold_peak']['threads'], s['warm_peak']['threads'])}); "
              f"load {report['machine']['loadavg_before']} before, {report['machine']['loadavg_after']} after; "
              f"Python heap held by the pool {s['traced_pool_mb']:.1f} MB, "
              f"peak during a warm broadcast {s['traced_peak_warm_mb']:.1f} MB")
    else:
        print(f"median seconds to broadcast {COMMAND!r} ({args.rounds} rounds after a warm-up; "
              f"ecshell fanout {report['fanout']}; load {report['machine']['loadavg_before']})")
        print_table(report["cases"], report["tools"])
        builds = report.get("static_build_seconds")
        if builds:
            print("\necshell-static: building the cold Cluster (resolving N names through the ssh_config file, "
                  "untimed above): " + ", ".join(f"N={n} {s:.3f}s" for n, s in builds.items()))
        inter = report.get("interactive")
        if inter:
            print(f"\ninteractive: median round trip of {inter['count']} sequential commands on one machine: "
                  + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in inter["median"].items())
                  + (f"; ecshell / asyncssh = {inter['ratio_vs_asyncssh']:.2f}" if inter["ratio_vs_asyncssh"] else ""))
    print(f"\nJSON: {path}")
    return 0


def versions():
    found = {}
    for module, name in (("paramiko", "paramiko"), ("asyncssh", "asyncssh"), ("fabric", "fabric"),
                         ("pssh", "parallel-ssh"), ("ssh2", "ssh2-python")):
        try:
            from importlib import metadata

            found[name] = metadata.version(name)
        except Exception:
            try:
                found[name] = getattr(__import__(module), "__version__", "?")
            except Exception:
                found[name] = None
    try:
        import subprocess

        found["openssh"] = subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True).stderr.strip()
    except Exception:
        pass
    return found


if __name__ == "__main__":
    sys.exit(main())
