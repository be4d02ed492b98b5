"""What the shell's magics do, as plain Python: no IPython in here.

>>> from ecshell import Cluster, LocalFabric
>>> from ecshell.shell.session import Session
>>> s = Session(Cluster(LocalFabric()), ask=lambda question: True)
>>> s.launch(3, name="web")                         # doctest: +SKIP
>>> rs = s.on("all", "hostname")                    # doctest: +SKIP
>>> rs = s.on("failed")                             # the last command again, where it failed   # doctest: +SKIP

``ecshell.magics`` parses what the operator typed and calls one method here;
everything the shell does can be done (and tested) without a shell. ``ask``
is how the session asks the operator a yes/no question; ``None`` (or an
``ask`` that returns None) means it cannot ask, and then it refuses whatever
would need an answer.
"""

import re
import sys

from . import report, targets
from ..cloudlets.manager import MARKER_PREFIX as CLOUDLET_MARKER
from ..errors import ArgumentError, SelectionError
from ..hostset import check_prefix, fold
from ..results import ResultSet
from ..states import MachineState

#: ``name = `` before a magic: ``rs = %on web-*`` completes as ``%on web-*`` does.
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_][\w.]*\s*=\s*(?=%)")


def current_piece(text_until_cursor):
    """What a target completion replaces: the last word before the cursor, from its last comma on."""
    words = text_until_cursor.split()
    if not words or text_until_cursor[-1:].isspace():
        return ""
    return words[-1].rsplit(",", 1)[-1]


class Session:
    """The operator's shell over one Cluster: targets, broadcasts, questions, tables."""

    def __init__(self, cluster, ask=None, stream=None, color=False, passphrase=None, notebook=False):
        self.cluster = cluster
        #: In a kernel: progress as a display updated in place (shell/notebook.py), not terminal lines.
        self.notebook = notebook
        self.ask = ask
        #: ``passphrase(prompt)``: a secret typed at the prompt, or None (nobody to ask).
        self.passphrase = passphrase
        self.stream = stream
        self.color = color
        #: Markers last read from the machines (``%cluster``), offered to completion.
        self.known_markers = set()

    @property
    def settings(self):
        return self.cluster.settings

    def say(self, text):
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    # -- selection -----------------------------------------------------------

    def select(self, target):
        """The MachineSet a target word selects (see :mod:`ecshell.targets`)."""
        return targets.resolve(self.cluster, target)

    def _live(self, target):
        chosen = self.select(target)
        live = chosen.reachable()
        if not live:
            states = ", ".join(f"{m.name}: {m.state}" for m in chosen)
            raise SelectionError(f"no running machine in {target!r} ({states}); "
                                 "check with %ready, or launch some with %launch 3")
        skipped = chosen - live
        if skipped:
            self.say(f"skipping {len(skipped)} machines not running: {skipped}")
        return live

    # -- broadcasts ------------------------------------------------------------

    def on(self, target, command=None, timeout=None, live=True, transport=None):
        """Run a shell command on ``target``; a ResultSet, also kept in ``cluster.history``.

        With no command and target ``failed``, re-runs the last broadcast's
        command on the machines where it failed.
        """
        if command is None or (isinstance(command, str) and not command.strip()):
            if target != "failed":
                raise ArgumentError(f"give a command to run, e.g. %on {target} uptime "
                                    "(only '%on failed' re-runs the last command)")
            last = self.cluster.history[-1] if self.cluster.history else None
            if last is None or last.command is None:
                raise ArgumentError("nothing to re-run: no broadcast yet; run %on all CMD first")
            operation = last.command
        elif isinstance(command, str):
            from ..commands import Shell

            operation = Shell(command, timeout=timeout)
        else:
            operation = command
        machines = self._live(target)
        return self.broadcast(machines, operation, live=live, transport=transport)

    def broadcast(self, machines, operation, live=True, transport=None):
        """Run a Command object with the live view, ask about new host keys, record the result.

        ``transport`` (``direct``, ``tree``, ``ssm``; None: each machine's own) carries it.
        """
        results = self._execute(machines, operation, live, transport)
        results = self._hostkeys(results, operation, live)
        results = self._passphrases(results, operation, live)
        self.cluster.history.append(results)
        return results

    def _execute(self, machines, operation, live, transport=None):
        if not live:
            return machines.execute(operation, transport=transport)
        if self.notebook:
            from .notebook import BroadcastProgress

            with BroadcastProgress(machines, delay=self.settings.progress_after,
                                   stream_output=self.settings.stream_output) as progress:
                return machines.execute(operation, on_output=progress.output, on_result=progress.result,
                                        transport=transport)
        from .live import LiveView

        view = LiveView(machines, delay=self.settings.progress_after, stream=self.stream or sys.stdout,
                        color=self.color, stream_output=self.settings.stream_output)
        with view:
            return machines.execute(operation, on_output=view.output, on_result=view.result, transport=transport)

    def _hostkeys(self, results, operation, live):
        """Where the policy would ask: show every new key of the broadcast, ask once, record, run again.

        Each key is shown under the name of the host that offered it: a jump
        host's own name and key when the bastion is the new one, once however
        many machines sit behind it. Each is recorded under the name its own
        verifier knows it by (HostKeyAlias, ``host`` or ``[host]:port``). Keys
        that only show once the first ones are trusted (the machine behind a
        new bastion) make a second question.
        """
        shown = set()
        while self.ask is not None:
            pending = self._new_host_keys(results, shown)
            if not pending:
                break
            shown.update(pending)
            if not self._ask_host_keys(results, pending):
                break
            behind_them = [m for _label, _detail, behind in pending.values() for m in behind]
            results = self._run_again(results, behind_them, operation, live)
        return results

    def _passphrases(self, results, operation, live):
        """Encrypted keys no agent holds: ask each one's passphrase once, then run those machines again.

        The keys stay in this process's memory only (as an agent keeps them),
        until their files change. Nothing ran on a machine refused at
        authentication, so running again there runs the command once.
        """
        if self.passphrase is None:
            return results
        from ..ssh.keys import unlock

        locked = {}
        for r in results.failed.results():
            if r.error == "auth":
                for path in r.detail.get("locked", ()):
                    locked.setdefault(path, []).append(r.machine)
        opened = []
        for path, machines in locked.items():
            for _ in range(3):  # as ssh-add asks
                secret = self.passphrase(f"Passphrase for {path} ({fold(m.name for m in machines)}): ")
                if not secret:
                    break
                why = unlock(path, secret)
                if not why:
                    opened.append(path)
                    break
                self.say(why)
        return self._run_again(results, [m for path in opened for m in locked[path]], operation, live)

    def _run_again(self, results, machines, operation, live):
        """``results`` with those of ``machines`` replaced by a new run there (refused before anything ran)."""
        if not machines:
            return results
        from ..machineset import MachineSet

        retried = self._execute(MachineSet(machines), operation, live)
        merged = [retried.get(r.name, r) for r in results.results()]
        return ResultSet(merged, results.command, interrupted=results.interrupted or retried.interrupted)

    @staticmethod
    def _new_host_keys(results, shown):
        """``{(file, name, key): (label, detail, [machines])}`` for the new keys not asked about yet."""
        pending = {}
        for r in results.failed.results():
            detail = r.detail
            if not (r.error == "hostkey" and detail.get("reason") == "unknown"
                    and detail.get("offered") is not None and detail.get("verifier") is not None):
                continue
            verifier = detail["verifier"]
            ident = (tuple(verifier.files[:1]), detail.get("entry"), detail["offered"].asbytes())
            if ident in shown:
                continue
            hop = detail.get("endpoint")
            label = r.machine.name
            if hop is not None and hop.key != r.machine.endpoint.key:
                label = hop.alias or f"{hop.host}:{hop.port}"
            pending.setdefault(ident, (label, detail, []))[2].append(r.machine)
        return pending

    def _ask_host_keys(self, results, pending):
        from ..ssh.hostkeys import fingerprint

        rows, behind = [], set()
        for label, detail, machines in pending.values():
            names = [m.name for m in machines]
            behind.update(names)
            if label not in names:
                label = f"{label} (jump host for {', '.join(names)})"
            key = detail["offered"]
            where = detail.get("entry") or f"{detail.get('host')}:{detail.get('port')}"
            rows.append((label, where, f"{key.get_name()} {fingerprint(key)}"))
        width = max(len(label) for label, _w, _k in rows)
        if len(behind) == len(rows):
            header = f"{len(rows)} of {len(results)} hosts offered a host key that is not in known_hosts:"
        else:
            header = (f"{len(rows)} hosts on the way to {len(behind)} of {len(results)} machines offered a "
                      "host key that is not in known_hosts:")
        lines = [header]
        lines += [f"  {label:<{width}}  {where}  {key}" for label, where, key in rows]
        files = sorted({d["verifier"].files[0] for _l, d, _m in pending.values() if d["verifier"].files})
        lines.append(f"Check these fingerprints out of band. Trusting records them in {', '.join(files)}.")
        self.say("\n".join(lines))
        answer = self.ask(f"Trust these {len(rows)} keys? [y/N] ")
        if not answer:
            self.say("not trusted: those hosts stay failed (hostkey)" if answer is not None else
                     "nobody can answer here (no stdin): those hosts stay failed (hostkey)")
            return False
        for _label, detail, _machines in pending.values():
            try:
                detail["verifier"].accept(detail["host"], detail["port"], detail["offered"])
            except (OSError, ValueError) as exc:
                self.say(f"could not record the key of {detail.get('entry')}: {exc}")
        return True

    def put(self, local, remote, target="all", mode=None):
        from ..commands import Put

        operation = Put(local, remote, mode)  # its arguments are checked before the target
        return self.broadcast(self._live(target), operation)

    def get(self, remote, local, target="all"):
        from ..commands import Get

        operation = Get(remote, local)  # its arguments are checked before the target
        return self.broadcast(self._live(target), operation)

    # -- lifecycle -------------------------------------------------------------

    def launch(self, count, name="node", instance_type=None, image=None, fabric=None, wait=True, yes=False):
        """Launch machines, asking first for more than ``confirm_launch_above``; None if not confirmed."""
        chosen = self.cluster.fabric(fabric)
        # refused outright, with no question, past the fabric's max_launch or for a bad name
        chosen.check_launch_count(count)
        check_prefix(name, count)
        if count > self.settings.confirm_launch_above and not yes and not self._confirmed(
                f"Launch {count} machines {name}-[0-{count - 1}] on {chosen.name}? [y/N] ",
                f"launching {count} machines needs a confirmation: add -y, e.g. %launch {count} --name {name} -y"):
            self.say("nothing launched")
            return None
        options = {}
        if instance_type:
            options["instance_type"] = instance_type
        if image:
            options["image_id"] = image
        machines = self.cluster.launch(count, name=name, fabric=fabric, wait=False, **options)
        if wait:
            with self._readiness(machines, "launch"):
                self.cluster.ready(machines)
            failed = machines - machines.in_state(MachineState.READY)
            if failed:
                self.say(f"did not become ready (failed-init): {failed}; "
                         f"try %ready {failed} again, or %terminate {failed}")
        else:
            self.say("not waiting: %ready checks them")
        return machines

    def ready(self, target=None):
        chosen = self.select(target or "all")
        with self._readiness(chosen, "ready"):
            ready = self.cluster.ready(chosen)
        missing = chosen - ready
        if missing:
            self.say("not ready: " + ", ".join(f"{m.name} ({m.state})" for m in missing))
        return ready

    def terminate(self, target, yes=False):
        """Terminate the target's machines, asking first for 'all' or a large selection."""
        chosen = self.select(target)
        large = target == "all" or len(chosen) > self.settings.confirm_terminate_above
        if large and not yes and not self._confirmed(
                f"Terminate {len(chosen)} machines {chosen}? [y/N] ",
                f"terminating {len(chosen)} machines ({chosen}) needs a confirmation: add -y, "
                f"e.g. %terminate {target} -y"):
            self.say("nothing terminated")
            return None
        return self.cluster.terminate(chosen)

    def _readiness(self, machines, label):
        """Progress of a readiness wait: a display in a notebook; nothing in a terminal."""
        if not self.notebook:
            import contextlib

            return contextlib.nullcontext()
        from .notebook import ReadinessProgress

        return ReadinessProgress(machines, delay=self.settings.progress_after, label=label)

    def _confirmed(self, question, unasked):
        """Whether the operator answers yes to ``question``; where nobody can answer, ArgumentError(``unasked``).

        Nobody can answer when there is no ``ask``, or when it returns None
        (a kernel without stdin, as nbclient and papermill run it).
        """
        answer = None if self.ask is None else self.ask(question)
        if answer is None:
            raise ArgumentError(unasked)
        return answer

    # -- tables ------------------------------------------------------------------

    def machine_table(self, markers=True):
        self.cluster.refresh()
        found = {}
        ready = self.cluster.machines.reachable()
        if markers and ready and hasattr(ready, "markers"):
            try:
                found = {name: marks for name, marks in ready.markers().items() if marks}
            except Exception as exc:  # markers are a convenience here; the table must still show
                self.say(f"(markers not read: {exc})")
            for marks in found.values():
                self.known_markers.update(marks)
        return report.machine_table(self.cluster, found)

    def cost(self):
        return report.cost_table(self.cluster)

    # -- cloudlets ---------------------------------------------------------------

    def cloudlet(self, user, login=False, save=False, release=False):
        """``user``'s cloudlet (placed if needed); or what --login, --save, --release gave."""
        cloudlet = self.cluster.cloudlet(user)  # what placing it found (changes lost, ...) is logged
        marker = CLOUDLET_MARKER + cloudlet.owner  # its host's marker: completion offers cloudlet:<user>
        if save:
            return cloudlet.save()
        if release:
            self.known_markers.discard(marker)
            return cloudlet.release()
        self.known_markers.add(marker)
        if login:
            from ..cloudlets.login import login as interactive

            status = interactive(cloudlet)
            if status:
                self.say(f"(the shell in {cloudlet.name} exited with status {status})")
            return None
        return cloudlet

    def cloudlet_table(self):
        found = self.cluster.cloudlets.scan()
        self.known_markers.update(CLOUDLET_MARKER + user for user in found)
        return report.cloudlet_table(found)

    def toolbar(self):
        return report.toolbar_text(self.cluster)

    def exit_warning(self):
        return report.exit_warning(self.cluster)

    # -- completion ----------------------------------------------------------------

    #: For each magic, the argument positions (after options) that are targets.
    TARGET_POSITIONS = {"on": 0, "ready": 0, "terminate": 0, "put": 2, "get": 2}
    #: Options that take a value (the next word is not a positional argument).
    VALUED_OPTIONS = ("-t", "--timeout", "-m", "--mode", "--transport")

    def complete(self, text_until_cursor):
        """Target words for the piece of a magic line before the cursor (``%on we``), or None.

        None when the cursor is not on a target; else the words that can
        replace :func:`current_piece` (an empty list when none fits). A line
        may assign the magic's result (``rs = %on we``); in ``web-0,we`` or
        ``role=web,zo`` only the part after the last comma is completed.
        """
        text_until_cursor = _ASSIGNMENT.sub("", text_until_cursor, count=1)
        words = text_until_cursor.split()
        if not words:
            return None
        magic = words[0].lstrip("%")
        position = self.TARGET_POSITIONS.get(magic)
        if position is None:
            return None
        args, skip = [], False
        for word in words[1:]:
            if skip:
                skip = False
            elif word.startswith("-"):
                skip = word in self.VALUED_OPTIONS
            else:
                args.append(word)
        current = len(args) if text_until_cursor[-1:].isspace() else len(args) - 1
        if words[1:] and words[-1].startswith("-") and not text_until_cursor[-1:].isspace():
            return None
        if current != position:
            return None
        prefix = current_piece(text_until_cursor)
        return [w for w in targets.candidates(self.cluster, self.known_markers) if w.startswith(prefix)]

    def __repr__(self):
        return f"<Session {self.cluster!r} history={len(self.cluster.history)}>"

