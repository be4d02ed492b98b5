"""The machine side of cloudlets: runs on the host machine as root, stdlib only (plus bubblewrap).

The controller (:mod:`ecshell.cloudlets.runtime`) sends this file's source
as ``python3 -I -S -c <code> <op> <base64 JSON> <base dir>``; it is never
imported there. Each op prints one line ``@ecshell {JSON}`` and exits 0;
anything else is a failure whose reason is on stderr.

A cloudlet ``NAME`` lives in ``<base>/NAME/``: ``upper/`` and ``work/``
(the overlay's upper layer, i.e. the user's state, and its work dir),
``root/`` (where the overlay of ``/`` is mounted, inside the sandbox's own
mount namespace only, so the mount dies with the sandbox), ``holder`` (the
pid of the outer bwrap) and ``child`` (the sandbox's pid 1 and its mount
namespace: ``PID MNTNS``). A command enters the sandbox with ``nsenter``
after checking that pid still has that mount namespace, so a reused pid is
never entered.

Inside, the machine's state directory, its SSH host keys and any path the
controller asks to hide are covered (an empty tmpfs, or /dev/null), and a
new cloudlet's ``/root`` and ``/home`` start empty: they are opaque
directories of its own layer, not the machine's.

ops:
  status    every cloudlet in <base>: running or not, since when
  prepare   make NAME's directory; say where a state archive to restore goes
  start     (restore the archive if asked, then) start NAME's sandbox; no-op if it runs;
            with existing, only over a layer already there
  save      write NAME's upper layer to <dir>/save.tar (GNU tar, xattrs and whiteouts kept)
  stop      kill NAME's sandbox (every process in it); with remove, delete its directory
"""

import base64
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: Characters an overlay mount option cannot carry unescaped, and whitespace: refused in paths.
UNSAFE_PATH = re.compile(r"[,:\\\s]")
#: What tar needs to keep an overlay upper layer whole: its opaque-directory xattrs.
TAR_XATTRS = ["--xattrs", "--xattrs-include=trusted.overlay.*", "--numeric-owner"]
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
#: The environment of the sandbox's pid 1 (commands entering it set their own, see runtime.py).
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Failed(Exception):
    pass


def say(**fields):
    sys.stdout.write("@ecshell " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def directory(base, name):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Failed(f"bad cloudlet name {name!r}")
    return os.path.join(base, name)


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def running(path):
    """``(holder pid, sandbox pid 1)`` if the cloudlet at ``path`` runs, else None."""
    fields = _read(os.path.join(path, "child")).split()
    if len(fields) != 2 or not all(f.isdigit() for f in fields):
        return None
    child, namespace = int(fields[0]), fields[1]
    try:
        if os.readlink(f"/proc/{child}/ns/mnt") != f"mnt:[{namespace}]":
            return None
    except OSError:
        return None
    holder = _read(os.path.join(path, "holder"))
    return (int(holder) if holder.isdigit() else None), child


def _started_at(path):
    try:
        return float(_read(os.path.join(path, "started_at")))
    except ValueError:
        return None


def op_status(params, base):
    found = {}
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        names = []
    for name in names:
        if not NAME.fullmatch(name):
            continue
        path = os.path.join(base, name)
        alive = running(path)
        found[name] = {"running": alive is not None, "started_at": _started_at(path) if alive else None,
                       "pid": alive[1] if alive else None}
    say(base=base, cloudlets=found)


def op_prepare(params, base):
    path = directory(base, params["name"])
    os.makedirs(path, mode=0o700, exist_ok=True)
    say(dir=path, restore=os.path.join(path, "restore.tar"), running=running(path) is not None)


#: Directories a new cloudlet gets empty and its own: opaque in its upper layer, so the machine's are not seen.
OWN_DIRECTORIES = (("root", 0o700), ("home", 0o755))
#: Files of the machine a cloudlet never reads (its SSH host keys), shown as empty.
HOST_SECRETS = "/etc/ssh"


def _fresh(path):
    for part in ("upper", "work"):
        shutil.rmtree(os.path.join(path, part), ignore_errors=True)
        os.makedirs(os.path.join(path, part), mode=0o755)
    for name, mode in OWN_DIRECTORIES:
        own = os.path.join(path, "upper", name)
        os.makedirs(own, mode=mode)
        os.chmod(own, mode)
        os.setxattr(own, "trusted.overlay.opaque", b"y")


def _host_secrets():
    try:
        names = sorted(os.listdir(HOST_SECRETS))
    except OSError:
        return []
    return [os.path.join(HOST_SECRETS, n) for n in names if n.startswith("ssh_host_") and n.endswith("_key")]


def _restore(path):
    archive = os.path.join(path, "restore.tar")
    if not os.path.exists(archive):
        raise Failed(f"no state archive at {archive} to restore")
    _fresh(path)
    done = subprocess.run(["tar", *TAR_XATTRS, "-xpf", archive, "-C", os.path.join(path, "upper")],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.unlink(archive)
    if done.returncode != 0:
        raise Failed("restoring the saved state failed: " + done.stdout.decode(errors="replace")[-500:])


def sandbox_command(path, hostname, hide, info_fd):
    """The holder's argv: a private mount namespace, the overlay of / mounted in it, then bwrap."""
    upper, work, merged = (os.path.join(path, p) for p in ("upper", "work", "root"))
    for each in (upper, work, merged):
        if UNSAFE_PATH.search(each):
            raise Failed(f"cannot mount an overlay with {each!r}: no commas, colons, backslashes or "
                         "spaces in the state directory's path")
    mount = ('mount -t overlay -o "lowerdir=/,upperdir=$1,workdir=$2,nodev" '
             'ecshell-cloudlet "$3" && shift 3 && exec "$@"')
    bwrap = ["bwrap", "--bind", merged, "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for secret in hide:  # the machine's own state (other users' layers among it) is not the user's to see
        if os.path.isdir(secret):
            bwrap += ["--tmpfs", secret]
        elif os.path.exists(secret):
            bwrap += ["--ro-bind", "/dev/null", secret]
    bwrap += ["--unshare-user", "--uid", "0", "--gid", "0", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
              "--unshare-cgroup-try", "--hostname", hostname, "--info-fd", str(info_fd),
              "--clearenv", "--setenv", "PATH", PATH, "--setenv", "HOME", "/root", "--chdir", "/root",
              "sleep", "infinity"]
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount, "sh",
            upper, work, merged, *bwrap]


def op_start(params, base):
    path = directory(base, params["name"])
    hostname = params["hostname"]
    if not isinstance(hostname, str) or not NAME.fullmatch(hostname):
        raise Failed(f"bad hostname {hostname!r}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    alive = running(path)
    if alive is not None:
        say(dir=path, pid=alive[1], started_at=_started_at(path), already=True)
        return
    if params.get("existing") and not os.path.isdir(os.path.join(path, "upper")):
        say(dir=path, missing=True)  # its layer is not here: the controller places it from the store
        return
    if params.get("restore"):
        _restore(path)
    elif not os.path.isdir(os.path.join(path, "upper")) or not os.path.isdir(os.path.join(path, "work")):
        _fresh(path)
    else:  # restarting over the layer left here: the overlay wants an empty work dir
        shutil.rmtree(os.path.join(path, "work"), ignore_errors=True)
        os.makedirs(os.path.join(path, "work"), mode=0o755)
    os.makedirs(os.path.join(path, "root"), mode=0o755, exist_ok=True)
    asked = [p for p in params.get("hide", []) if isinstance(p, str) and os.path.isabs(p) and "\0" not in p]
    hide = [os.path.dirname(os.path.abspath(base)), *_host_secrets(), *asked]
    reading, writing = os.pipe()
    with open(os.path.join(path, "sandbox.log"), "ab") as log:
        holder = subprocess.Popen(sandbox_command(path, hostname, hide, writing), stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, start_new_session=True, pass_fds=(writing,))
    os.close(writing)
    info = _info(reading, holder)
    child = info.get("child-pid")
    namespace = None
    try:
        namespace = os.readlink(f"/proc/{child}/ns/mnt")[len("mnt:["):-1]
    except (OSError, TypeError):
        pass
    if not isinstance(child, int) or not namespace:
        _kill(holder.pid, child if isinstance(child, int) else None)
        log_tail = _read(os.path.join(path, "sandbox.log"))[-800:]
        raise Failed(f"the sandbox did not start: {log_tail or 'no output from bwrap'}")
    now = time.time()
    _write(os.path.join(path, "holder"), str(holder.pid))
    _write(os.path.join(path, "started_at"), repr(now))
    _write(os.path.join(path, "child"), f"{child} {namespace}")
    say(dir=path, pid=child, holder=holder.pid, started_at=now, already=False)


def _write(path, text):
    with open(path + ".new", "w") as f:
        f.write(text + "\n")
    os.replace(path + ".new", path)


def _info(fd, holder):
    """bwrap's --info-fd JSON (it writes it once the sandbox runs), or {} if it exited first."""
    data = b""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
            try:
                return json.loads(data)
            except ValueError:
                continue
    finally:
        os.close(fd)
    try:
        value = json.loads(data)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"Z"


def _kill(holder, child):
    """Kill the sandbox's pid 1 (the kernel then kills every process in its pid namespace).

    The holder (the outer bwrap) reaps it and exits by itself; it is killed
    too only if it does not.
    """
    for pid in (child, holder):
        if not pid:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and not all(_gone(p) for p in (child, holder) if p):
            time.sleep(0.01)
        if all(_gone(p) for p in (child, holder) if p):
            return


def op_stop(params, base):
    path = directory(base, params["name"])
    alive = running(path)
    if alive is not None:
        holder, child = alive
        # the holder's pid is only signalled if it is still the bwrap that holds this sandbox
        if holder is not None and f"{path}/root".encode() not in _cmdline(holder):
            holder = None
        _kill(holder, child)
        if not _gone(child):
            raise Failed(f"the sandbox (pid {child}) did not exit after SIGKILL")
    removed = False
    if params.get("remove") and os.path.isdir(path):
        shutil.rmtree(path)
        removed = True
    else:
        for name in ("child", "holder", "started_at"):
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
    say(dir=path, stopped=alive is not None, removed=removed)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def op_save(params, base):
    path = directory(base, params["name"])
    upper = os.path.join(path, "upper")
    if not os.path.isdir(upper):
        raise Failed(f"cloudlet {params['name']} has no state layer here ({upper})")
    archive = os.path.join(path, "save.tar")
    started = time.time()
    done = subprocess.run(["tar", *TAR_XATTRS, "-cf", archive + ".partial", "-C", upper, "."],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # 1: a file changed while it was read (the cloudlet runs on); the archive is still whole
    if done.returncode not in (0, 1):
        raise Failed("saving the state layer failed: " + done.stdout.decode(errors="replace")[-500:])
    os.replace(archive + ".partial", archive)
    say(archive=archive, size=os.path.getsize(archive), at=started)


OPS = {"status": op_status, "prepare": op_prepare, "start": op_start, "save": op_save, "stop": op_stop}


def main(argv):
    if len(argv) != 4 or argv[1] not in OPS:
        sys.stderr.write(f"usage: cloudlet.py {{{','.join(OPS)}}} <base64 JSON> <base dir>\n")
        return 2
    if os.geteuid() != 0:
        sys.stderr.write("ecshell cloudlet: cloudlets need root on their host (mounts, namespaces): "
                         "their host's login user must be root\n")
        return 1
    try:
        params = json.loads(base64.b64decode(argv[2]))
        OPS[argv[1]](params, os.path.abspath(argv[3]))
    except Failed as exc:
        sys.stderr.write(f"ecshell cloudlet: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
