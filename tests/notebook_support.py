"""A real IPython kernel (ipykernel) driven through jupyter_client, as Jupyter drives it.

The kernel runs this Python with the test's HOME and ECSHELL_HOME (and the
PYTHONPATH, so it imports the ecshell under test); :meth:`Kernel.run` sends
an execute_request and returns every iopub message that answered it, each
with the monotonic time it arrived.
"""

import json
import os
import queue
import sys
import time

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

#: Seconds a cell may take (two busy cores, sshd started per machine).
PATIENCE = 120


class Kernel:
    def __init__(self, workdir, env):
        specs = workdir / "kernels"
        (specs / "ecshell-test").mkdir(parents=True)
        (specs / "ecshell-test" / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "ecshell test", "language": "python"}))
        self.manager = KernelManager(kernel_name="ecshell-test", transport="ipc",
                                     kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
        self.manager.connection_file = str(workdir / "kernel.json")
        self.manager.ip = str(workdir / "kernel-ipc")
        self.manager.start_kernel(env=env, cwd=str(workdir))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=PATIENCE)

    def run(self, code, timeout=PATIENCE, interrupt_after=None):
        """``[(arrived, msg_type, content)]`` of the iopub messages for ``code``, up to idle.

        As nbclient and papermill run a cell: no stdin (input() cannot ask).
        ``interrupt_after``: seconds after which to interrupt the kernel (the stop button).
        """
        msg_id = self.client.execute(code, allow_stdin=False)
        messages = []
        until = time.monotonic() + timeout
        interrupt_at = None if interrupt_after is None else time.monotonic() + interrupt_after
        while True:
            if interrupt_at is not None and time.monotonic() >= interrupt_at:
                self.manager.interrupt_kernel()
                interrupt_at = None
            wait = until - time.monotonic() if interrupt_at is None else interrupt_at - time.monotonic()
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, wait))
            except queue.Empty:
                if interrupt_at is not None:
                    continue
                raise AssertionError(f"no idle within {timeout}s for {code!r}; got {messages}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                return messages
            messages.append((time.monotonic(), kind, content))

    def complete(self, code):
        """The reply to a complete_request at the end of ``code``: what Jupyter's Tab shows."""
        msg_id = self.client.complete(code, len(code))
        reply = self.client.get_shell_msg(timeout=PATIENCE)
        while reply["parent_header"].get("msg_id") != msg_id:  # execute_replies of earlier cells
            reply = self.client.get_shell_msg(timeout=PATIENCE)
        content = reply["content"]
        return [code[:content["cursor_start"]] + m for m in content["matches"]]

    def stop(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


def kernel_env(home, ecshell_home):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSH_AUTH_SOCK", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                        "AWS_SESSION_TOKEN", "JPY_PARENT_PID")}
    env.update(HOME=str(home), ECSHELL_HOME=str(ecshell_home), PYTHONUNBUFFERED="1",
               AWS_CONFIG_FILE=str(home / ".aws" / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / ".aws" / "credentials"))
    if "PYTHONPATH" not in env:
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return env


def errors(messages):
    return [c for _t, kind, c in messages if kind == "error"]


def result_data(messages):
    """The mime bundle of the cell's result (execute_result)."""
    found = [c["data"] for _t, kind, c in messages if kind == "execute_result"]
    assert len(found) == 1, messages
    return found[0]


def saved_outputs(messages):
    """The cell's outputs as a notebook saves them: displays updated in place by display_id."""
    outputs = []
    for _t, kind, content in messages:
        if kind in ("stream", "execute_result", "error"):
            outputs.append(content)
        elif kind == "display_data":
            outputs.append(dict(content))
        elif kind == "update_display_data":
            wanted = content["transient"]["display_id"]
            for output in outputs:
                if output.get("transient", {}).get("display_id") == wanted:
                    output["data"] = content["data"]
    return outputs
