"""The machine side of installing ecshell-login: runs on the target, stdlib only.

The controller (ecshell.loginshell) sends this file's source through the
machine's existing login shell as ``python3 -c <code> <op> <base64 JSON>``;
it never imports it locally. Each op prints one JSON line starting with
``@ecshell`` on success and exits 0; anything else is a failure whose reason
is on stderr. Exit codes are the contract.

ops:
  prepare    check the user and python, create the prefix (refusing one that holds
             anything not ecshell's) and its manifest of what ecshell made there
  install    venv + pip install the shipped wheel; write the sh entry point
             <prefix>/bin/ecshell-login (entry_script); run it as the user
  switch     add to /etc/shells, switch the user's shell, then wait on stdin for
             COMMIT; anything else -- ABORT, EOF (the controller or its
             connection died), a signal, the timeout -- puts everything back.
             What to undo is in the user's record first, and a detached guard
             process undoes it if this one dies without committing (SIGKILL)
  uninstall  restore the recorded previous shell; remove what the manifest lists
"""

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time

ETC_SHELLS = "/etc/shells"
#: What ecshell made under the prefix: only these are removed by uninstall.
MANIFEST = "ecshell-manifest.json"
#: The names an install makes directly under the prefix (an install without a manifest holds only these).
OWN_NAMES = ("bin", "dist", "users", "venv", "installed.json", MANIFEST)


class Failed(Exception):
    pass


def say(**fields):
    sys.stdout.write("@ecshell " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def note(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _user(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise Failed(f"no user {name!r} on this machine; create it first (useradd -m {shlex.quote(name)})") from None


def _entry(prefix):
    """The login shell: a POSIX sh script (:func:`entry_script`), no Python on a command's path."""
    return os.path.join(prefix, "bin", "ecshell-login")


def _venv_entry(prefix):
    """pip's console script, the Python entry point (the login shell of installs made before _entry)."""
    return os.path.join(prefix, "venv", "bin", "ecshell-login")


# No variable is set before a command is exec'd: sshd's environment reaches /bin/sh byte for
# byte (an assignment to a name the environment holds would change it). `sh -c CMD sh` names
# it "sh", as sshd names a login shell run for a command. Python starts only for a login,
# isolated (-I: PYTHONHOME, PYTHONPATH and user site ignored), and only once it has shown it
# can start at all; for no terminal or TERM=dumb it only execs a login sh named "-sh".
ENTRY_SCRIPT = """\
#!/bin/sh
# ecshell-login, written by ecshell's installer: the login shell sshd runs.
# A command (ssh host CMD, scp, sftp-server, rsync: sshd runs SHELL -c CMD) is
# /bin/sh's alone. Only a login starts Python: IPython on a terminal, else a
# login /bin/sh; when Python cannot start at all, a plain login /bin/sh.
case $# in
0) ;;
1) case $1 in -l|--login|-i) ;; *) exec /bin/sh "$@" ;; esac ;;
2) [ "$1" != -c ] || exec /bin/sh -c "$2" sh
   exec /bin/sh "$@" ;;
*) exec /bin/sh "$@" ;;
esac
if {python} -I -S -c '' </dev/null >/dev/null 2>&1; then
    if [ -t 0 ] && [ -t 1 ] && [ "${{TERM-}}" != dumb ]; then
        exec {python} -I {login} "$@"
    fi
    exec {python} -I -S {login} "$@"
fi
[ ! -t 2 ] || echo "ecshell-login: "{python}" cannot start; this is a plain /bin/sh instead." >&2
exec /bin/sh -l
"""


def entry_script(python, login):
    """The text of the sh entry point for the venv's ``python`` and its ecshell/remote/login.py."""
    return ENTRY_SCRIPT.format(python=shlex.quote(python), login=shlex.quote(login))


def _write_entry(path, python):
    done = subprocess.run([python, "-I", "-c", "import ecshell.remote.login as l; print(l.__file__)"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode:
        raise Failed(f"{python} cannot import ecshell.remote.login: {done.stderr.strip()[-300:]}")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(entry_script(python, done.stdout.strip()))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def _record_path(prefix, user):
    return os.path.join(prefix, "users", user + ".json")


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _etc_shells_write(lines):
    """Rewrite /etc/shells atomically, keeping its mode and owner."""
    st = os.stat(ETC_SHELLS)
    tmp = ETC_SHELLS + ".ecshell-tmp"
    with open(tmp, "w") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, st.st_mode & 0o7777)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, ETC_SHELLS)


def etc_shells_add(entry):
    """Add ``entry`` to /etc/shells; True if it was not there before."""
    with open(ETC_SHELLS) as f:
        lines = f.readlines()
    if any(line.strip() == entry for line in lines):
        return False
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    _etc_shells_write(lines + [entry + "\n"])
    return True


def etc_shells_remove(entry):
    with open(ETC_SHELLS) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() != entry]
    if kept != lines:
        _etc_shells_write(kept)


def set_shell(user, shell):
    for argv in (["usermod", "-s", shell, user], ["chsh", "-s", shell, user]):
        if shutil.which(argv[0]) is None:
            continue
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode == 0 and pwd.getpwnam(user).pw_shell == shell:
            return
        note(f"{' '.join(argv)}: exit {done.returncode} {done.stderr.strip()}")
    raise Failed(f"could not set the shell of {user} to {shell} (neither usermod nor chsh worked)")


def as_user(account, argv, timeout=120):
    """Run ``argv`` as ``account`` with a login-like environment; CompletedProcess."""
    env = {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
           "SHELL": account.pw_shell, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    kwargs = {}
    if os.geteuid() != account.pw_uid:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    cwd = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
    return subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, **kwargs)


# -- ops ----------------------------------------------------------------------

def op_prepare(p):
    if os.geteuid() != 0:
        raise Failed("installing a login shell needs root on the machine (/etc/shells, usermod); "
                     "connect as root")
    account = _user(p["user"])
    if sys.version_info < (3, 11):
        raise Failed(f"{sys.executable} is Python {sys.version.split()[0]}; ecshell needs 3.11 or newer "
                     "(pass python='/path/to/python3.11')")
    prefix = p["prefix"]
    manifest = _manifest(prefix)
    if manifest is None:
        manifest = _claim_prefix(prefix)
    for sub in ("dist", "users"):
        _make(prefix, manifest, sub, lambda path: os.makedirs(path, mode=0o755))
    os.chmod(prefix, 0o755)
    say(user=account.pw_name, shell=account.pw_shell, home=account.pw_dir, python=sys.executable)


def _manifest(prefix):
    manifest = _read_json(os.path.join(prefix, MANIFEST))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("created"), list):
        return None
    return manifest


def _claim_prefix(prefix):
    """A manifest for a prefix that is new, empty, or an install from before manifests; else Failed."""
    if os.path.islink(prefix) or (os.path.lexists(prefix) and not os.path.isdir(prefix)):
        raise Failed(f"prefix {prefix} exists and is not a directory; choose another prefix=")
    existed = os.path.isdir(prefix)
    there = sorted(os.listdir(prefix)) if existed else []
    foreign = [name for name in there if name not in OWN_NAMES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise Failed(f"prefix {prefix} already holds files that are not ecshell's ({shown}); "
                     "choose a new or empty directory as prefix= (uninstall would remove what ecshell put there)")
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    manifest = {"created_prefix": not existed, "created": there}
    _write_json(os.path.join(prefix, MANIFEST), manifest)
    return manifest


def _make(prefix, manifest, name, make):
    """Make ``<prefix>/<name>`` with ``make(path)`` unless it exists; record it in the manifest first."""
    path = os.path.join(prefix, name)
    if os.path.lexists(path):
        return
    if name not in manifest["created"]:
        manifest["created"].append(name)
        _write_json(os.path.join(prefix, MANIFEST), manifest)
    make(path)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def op_install(p):
    prefix, wheel = p["prefix"], p["wheel"]
    account = _user(p["user"])
    venv = os.path.join(prefix, "venv")
    python = os.path.join(venv, "bin", "python")
    stamp_path = os.path.join(prefix, "installed.json")
    sha = _sha256(wheel)
    stamp = _read_json(stamp_path) or {}
    fresh = not (stamp.get("sha256") == sha and stamp.get("deps") == p["deps"]
                 and os.access(_venv_entry(prefix), os.X_OK))
    manifest = _manifest(prefix)
    if manifest is None:
        raise Failed(f"{prefix} has no {MANIFEST}: run the prepare step first")
    for name in ("venv", "installed.json"):
        if name not in manifest["created"]:
            manifest["created"].append(name)
            _write_json(os.path.join(prefix, MANIFEST), manifest)
    if fresh:
        if not os.access(python, os.X_OK):
            done = subprocess.run([sys.executable, "-m", "venv", venv], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
            if done.returncode:
                raise Failed(f"python3 -m venv {venv} failed: {done.stderr.strip() or done.stdout.strip()} "
                             "(on Debian: apt-get install python3-venv)")
        pip = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "-q"]
        if p.get("find_links"):
            pip += ["--no-index", "--find-links", p["find_links"]]
        steps = []
        if p["deps"] == "login":
            steps.append(pip + ["--force-reinstall", "--no-deps", wheel])
            steps.append(pip + p["login_requirements"])
        else:
            steps.append(pip + [wheel])
            steps.append(pip + ["--force-reinstall", "--no-deps", wheel])
        for argv in steps:
            started = time.monotonic()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
                raise Failed(f"pip install failed (exit {done.returncode}):\n{tail}")
            note(f"{' '.join(argv[3:])}: {time.monotonic() - started:.1f}s")
        subprocess.run(["chmod", "-R", "a+rX", venv], check=False)
        _write_json(stamp_path, {"sha256": sha, "deps": p["deps"], "at": time.time()})
    entry = _entry(prefix)
    _make(prefix, manifest, "bin", lambda path: os.makedirs(path, mode=0o755))
    _write_entry(entry, python)
    # Before anything changes for the user: does the shell work as that user?
    done = as_user(account, [entry, "-c", "echo $((6*7)); exit 5"])
    if done.returncode != 5 or done.stdout != b"42\n":
        raise Failed(f"{entry} -c, run as {account.pw_name}, gave exit {done.returncode} and "
                     f"{(done.stdout + done.stderr)[-300:]!r} instead of 42 and exit 5")
    done = as_user(account, [python, "-c", "import ecshell.remote.login as l; l.check()"])
    if done.returncode:
        raise Failed(f"IPython cannot start for {account.pw_name}: "
                     f"{done.stderr.decode(errors='replace').strip().splitlines()[-1:] or done.returncode}")
    say(entry=entry, installed=fresh, sha256=sha, check=done.stdout.decode(errors="replace").splitlines()[:1])


def op_switch(p):
    prefix, user, entry = p["prefix"], p["user"], _entry(p["prefix"])
    account = _user(user)
    if not os.access(entry, os.X_OK):
        raise Failed(f"{entry} is missing: run the install step first")
    record_path = _record_path(prefix, user)
    record = _read_json(record_path)
    new_record = record is None
    if new_record:
        if account.pw_shell == entry:
            raise Failed(f"{user}'s shell is {entry} already but no previous shell is recorded; "
                         "set it back with usermod -s /bin/bash first")
        record = {"previous_shell": account.pw_shell, "at": time.time()}
    previous = record["previous_shell"]
    # What to undo is on disk before anything changes, so that a guard process can undo it
    # when this one is gone (SIGKILL leaves no chance to clean up).
    record["pending"] = {"entry": entry, "new_record": new_record, "etc_shells_added": False}
    _write_json(record_path, record)
    _start_guard(prefix, user)
    restored = []

    def restore(why):
        if not restored:
            restored.append(why)
            roll_back(prefix, user)
            say(restored=previous, why=why)

    def on_signal(signum, frame):
        restore(f"signal {signum}")
        sys.exit(3)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        if etc_shells_add(entry):
            record["pending"]["etc_shells_added"] = record["etc_shells_added"] = True
            _write_json(record_path, record)
        if account.pw_shell != entry:
            set_shell(user, entry)
        say(switched=entry, previous=previous)
        answer = _wait_line(p.get("timeout", 300))
        if answer != "COMMIT":
            restore(f"no commit ({answer or 'end of input'})")
            sys.exit(3)
        with _locked(record_path):
            del record["pending"]
            _write_json(record_path, record)  # committed: from here on no one rolls back
        say(committed=entry, previous=previous)
    except Failed as exc:
        restore(str(exc))
        raise
    except Exception as exc:
        restore(f"{type(exc).__name__}: {exc}")
        raise


@contextlib.contextmanager
def _locked(record_path):
    """The user's record to ourselves: the switch and its guard never both roll back."""
    with open(record_path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def roll_back(prefix, user):
    """Undo a switch the record says is pending (once, whoever calls first); True if there was one."""
    record_path = _record_path(prefix, user)
    with _locked(record_path):
        record = _read_json(record_path)
        pending = record.get("pending") if isinstance(record, dict) else None
        if not pending:
            return False
        # The previous shell goes back first, whatever else fails (even usermod half-way).
        steps = [lambda: set_shell(user, record["previous_shell"])]
        if pending.get("etc_shells_added"):
            steps.append(lambda: etc_shells_remove(pending["entry"]))
        if pending.get("new_record"):
            steps.append(lambda: os.unlink(record_path))
        else:
            steps.append(lambda: _write_json(record_path, {k: v for k, v in record.items() if k != "pending"}))
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep going: the shell itself came first
                note(f"while restoring: {exc}")
        return True


def _start_guard(prefix, user):
    """A detached process that rolls the switch back when this one ends without committing.

    It waits on a pipe whose only writer is this process: the pipe ends when this
    process does, however it ends (SIGKILL included); then the record decides.
    """
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(read_end)
        os.waitpid(first, 0)
        return write_end  # kept open (never written) until this process exits
    try:
        os.setsid()  # out of the ssh session's process group and terminal
        if os.fork():
            os._exit(0)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the channel must close when the switch process ends
            os.dup2(null, fd)
        os.closerange(3, read_end)
        os.closerange(read_end + 1, 65536)
        while os.read(read_end, 1):
            pass
        roll_back(prefix, user)
    finally:
        os._exit(0)


def _wait_line(timeout):
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        ready, _, _ = select.select([0], [], [], left)
        if not ready:
            continue
        chunk = os.read(0, 256)
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


def op_uninstall(p):
    prefix, user, entry = p["prefix"], p["user"], _entry(p["prefix"])
    account = _user(user)
    record_path = _record_path(prefix, user)
    record = _read_json(record_path)
    ours = (entry, _venv_entry(prefix))
    if record is None:
        if account.pw_shell in ours:
            raise Failed(f"{user}'s shell is {entry} but no previous shell is recorded in {record_path}; "
                         "set one with usermod -s /bin/bash")
        say(user=user, shell=account.pw_shell, changed=False)
        return
    previous = record["previous_shell"]
    if account.pw_shell in ours:
        set_shell(user, previous)
    os.unlink(record_path)
    left = [n for n in os.listdir(os.path.join(prefix, "users")) if n.endswith(".json")]
    removed, kept = False, []
    if not left:
        for shell in ours:
            etc_shells_remove(shell)
        if p.get("remove"):
            removed, kept = _remove_ours(prefix)
    say(user=user, shell=previous, changed=True, removed=removed, kept=kept, users_left=len(left))


def _remove_ours(prefix):
    """Remove what the manifest lists, then the prefix if ecshell made it and it is empty; (removed, kept)."""
    manifest = _manifest(prefix)
    if manifest is None:
        note(f"{prefix} has no {MANIFEST}: nothing under it removed")
        return False, [prefix]
    for name in reversed(manifest["created"]):
        path = os.path.join(prefix, name)
        if os.path.basename(name) != name or name in ("", ".", ".."):
            continue  # a manifest names entries directly under the prefix, nothing else
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    os.unlink(os.path.join(prefix, MANIFEST))
    kept = sorted(os.listdir(prefix))
    if manifest.get("created_prefix") and not kept:
        os.rmdir(prefix)
    return True, kept


OPS = {"prepare": op_prepare, "install": op_install, "switch": op_switch, "uninstall": op_uninstall}


def run(op, params_b64):
    params = json.loads(base64.b64decode(params_b64))
    try:
        OPS[op](params)
    except Failed as exc:
        note(f"ecshell-login {op}: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
