"""ecshell in a real Jupyter kernel: completion, progress and the HTML result, as a notebook sees them.

One kernel (ipykernel, started through jupyter_client) serves the module,
with eight local machines (web-0 ... web-7) and one (db-0); the fixture
terminates them by pid when the module ends, passed or failed.
"""

import re

import pytest

from ecshell import LocalFabric
from notebook_support import Kernel, errors, kernel_env, result_data, saved_outputs


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("notebook")
    home, ecshell_home = workdir / "home", workdir / "ecshell"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    kernel = Kernel(workdir, kernel_env(home, ecshell_home))
    try:
        setup = kernel.run("%load_ext ecshell\n%launch 8 --name web\n%launch 1 --name db")
        assert not errors(setup), setup
        yield kernel
    finally:
        try:
            kernel.stop()
        finally:
            with pytest.MonkeyPatch.context() as env:
                env.setenv("ECSHELL_HOME", str(ecshell_home))
                env.setenv("HOME", str(home))
                fabric = LocalFabric()
                fabric.terminate([p.id for p in fabric.discover()])


def test_complete_request_offers_targets_not_python_names(kernel):
    assert kernel.complete("%on web-") == ["%on web-*"] + [f"%on web-{i}" for i in range(8)]
    assert kernel.complete("%on role=") == ["%on role=db", "%on role=web"]
    assert kernel.complete("%terminate d") == ["%terminate db-*", "%terminate db-0"]
    assert kernel.complete('cluster["d') == ['cluster["db-*', 'cluster["db-0']


def _rows(html):
    return re.findall(r"<tr[ >]", html.split("<tbody>", 1)[1])


def test_eight_timeouts_are_one_row(kernel):
    messages = kernel.run("%on -t 1 web-* sleep 5")
    assert not errors(messages), errors(messages)
    html = result_data(messages)["text/html"]
    assert len(_rows(html)) == 1, html
    assert "web-[0-7]" in html and "(8)" in html


def test_terminate_all_where_nobody_can_answer_says_how(kernel):
    messages = kernel.run("%terminate all")
    assert not errors(messages)  # was StdinNotImplementedError and its 30-line traceback
    said = "".join(c["text"] for _t, kind, c in messages if kind == "stream")
    assert said.startswith("UsageError: terminating 9 machines") and said.count("\n") == 1, said
    assert "needs a confirmation: add -y, e.g. %terminate all -y" in said
    assert not errors(kernel.run("assert len(cluster.machines.reachable()) == 9, cluster.machines"))


def test_the_stop_button_leaves_one_row_and_says_so(kernel):
    messages = kernel.run("%on web-* sleep 30", interrupt_after=2.5)
    assert not errors(messages), errors(messages)
    html = result_data(messages)["text/html"]
    assert len(_rows(html)) == 1 and "web-[0-7]" in html and "interrupted" in html, html
    assert "(interrupted: results shown are those that arrived)" in html and "sleep 30" in html
    assert all(o["data"] == {"text/plain": ""} for o in saved_outputs(messages) if "transient" in o)


def _displays(messages):
    return [(t, kind, c) for t, kind, c in messages if kind in ("display_data", "update_display_data")]


def test_a_long_broadcast_shows_progress_then_only_its_result(kernel):
    messages = kernel.run("%on web-[0-2] 'for i in 1 2 3; do echo line-$i; sleep 1; done'")
    assert not errors(messages), errors(messages)
    result_at = next(t for t, kind, _c in messages if kind == "execute_result")
    displays = _displays(messages)
    assert displays and displays[0][1] == "display_data", messages
    assert result_at - displays[0][0] > 1.0  # progress came well before the result
    shown = [c["data"]["text/plain"] for _t, _k, c in displays]
    assert any("running: web-[0-2]" in text and "line-1" in text for text in shown), shown  # output as it came
    assert any("web-0 (running)" in text for text in shown)
    assert all(c["transient"]["display_id"] == displays[0][2]["transient"]["display_id"] for _t, _k, c in displays)

    saved = saved_outputs(messages)
    text = "".join(str(output.get("data", output.get("text", ""))) for output in saved)
    assert text.count("line-1") == 2, saved  # the result's text/plain and text/html, nothing above them
    assert not [o for o in saved if "text" in o], saved  # no streamed lines left


def test_ready_and_launch_show_progress(kernel):
    kernel.run("%config EcShell.progress_after = 0")
    try:
        for code, words in [("%ready web-*", "ready"), ("%launch 1 --name extra", "launch")]:
            messages = kernel.run(code)
            assert not errors(messages), errors(messages)
            displays = _displays(messages)
            assert displays and displays[0][2]["data"]["text/plain"].startswith(f"{words} "), messages
            assert saved_outputs(messages)[0]["data"] == {"text/plain": ""}  # emptied once the call returned
    finally:
        kernel.run("%config EcShell.progress_after = 1.0\n%terminate extra-0 -y")
