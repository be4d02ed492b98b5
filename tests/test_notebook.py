"""ecshell in a real Jupyter kernel: completion, progress and the HTML result, as a notebook sees them.

One kernel (ipykernel, started through jupyter_client) serves the module,
with eight local machines (web-0 ... web-7) and one (db-0); the fixture
terminates them by pid when the module ends, passed or failed.
"""

import re

import pytest

from ecshell import LocalFabric
from notebook_support import Kernel, errors, kernel_env, result_data


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
