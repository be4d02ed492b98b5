"""The notebook HTML of a ResultSet, as a person sees it: rendered by headless Chromium.

Chromium is Debian's package (bootstrap.sh installs it for the tests) and is
driven by its own ``--headless --dump-dom``. The page wraps the HTML in the
rules JupyterLab's rendermime CSS applies to every output table (cells
right-aligned, rows zebra-striped: copied from JupyterLab, since no
JupyterLab runs here), then a probe script of ours reads the computed styles
after load and writes what it found into the DOM that Chromium dumps.

Remote output carries a script, an ``onerror`` image and an ``onload`` SVG.
The same bytes, inserted unescaped into a control section of the page, must
run (so the probe can tell); escaped in ecshell's table they must not.
"""

import html
import json
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="needs chromium (bootstrap.sh installs it for the tests)")

#: What JupyterLab's rendermime CSS does to tables in an output (packages/rendermime/style/base.css).
JUPYTERLAB_TABLE_CSS = """
.jp-RenderedHTMLCommon table { border-collapse: collapse; border-spacing: 0; border: none; font-size: 12px; }
.jp-RenderedHTMLCommon tr, .jp-RenderedHTMLCommon th, .jp-RenderedHTMLCommon td {
  text-align: right; vertical-align: middle; padding: 0.5em; line-height: normal; white-space: normal;
  max-width: none; border: none; }
.jp-RenderedHTMLCommon th { font-weight: bold; }
.jp-RenderedHTMLCommon tbody tr:nth-child(odd) { background: #ffffff; }
.jp-RenderedHTMLCommon tbody tr:nth-child(even) { background: #f5f5f5; }
"""

PROBE = """
<script>
setTimeout(function () {
  var result = document.querySelector('#ecshell');
  var copied = [];
  Object.defineProperty(navigator, 'clipboard', {value: {writeText: function (t) { copied.push(t); }}});
  result.querySelectorAll('button').forEach(function (b) { b.click(); });
  var rows = Array.from(result.querySelectorAll('tbody tr')).map(function (tr, index) {
    var style = getComputedStyle(tr);
    return {index: index, outcome: tr.dataset.outcome, text: tr.innerText,
            background: style.backgroundColor, edge: style.borderLeftColor,
            status: getComputedStyle(tr.cells[1]).color};
  });
  var pres = Array.from(result.querySelectorAll('pre')).map(function (pre) {
    var style = getComputedStyle(pre);
    var lines = Array.from(pre.childNodes).filter(function (n) { return n.nodeType === 3; });
    return {align: style.textAlign, cellAlign: getComputedStyle(pre.closest('td')).textAlign,
            font: style.fontFamily, text: pre.innerText,
            coloured: Array.from(pre.querySelectorAll('span')).map(function (s) { return s.style.color; })};
  });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({
    rows: rows, pres: pres, pwned: window.__pwned || null, control: window.__control || null,
    elements: result.querySelectorAll('script, img, svg, iframe').length,
    details: Array.from(result.querySelectorAll('details')).map(function (d) {
      return {open: d.open, summary: d.querySelector('summary').innerText}; }),
    copied: copied,
    summary: result.querySelector('p').innerText});
  document.body.appendChild(out);
}, 300);
</script>
"""

#: Remote output: colours (grep --color=always), ragged columns (df -h), and markup that must stay text.
PAYLOAD = (r"printf 'Filesystem Size Used\n/dev/sda1 20G 1.2G\ntmpfs 512M 0\n"
           r"\033[01;31m\033[Kroot\033[m\033[K:x:0:0\n"
           r"<script>window.__pwned=\"script\"</script><img src=x onerror=\"window.__pwned=1\">"
           r"<svg onload=\"window.__pwned=2\"></svg>\n'")


def render(page_html, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(page_html)
    dumped = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dumped, re.DOTALL)
    assert found, f"the probe did not run; chromium dumped:\n{dumped[:2000]}"
    return json.loads(html.unescape(found.group(1)))


def test_what_a_person_sees(machines, cluster, tmp_path):
    web = machines(4)
    cluster.fabrics["local"].stop([web[3].id])  # behind the cluster's back: unreachable
    rs = web.run(f"if [ $ECSHELL_MACHINE = node-2 ]; then seq 40; exit 3; fi; {PAYLOAD}")
    assert [r.status for r in rs.results()] == ["ok", "ok", "exit 3", "unreachable"]
    control = rs["node-0"].output.replace("__pwned", "__control")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><style>{JUPYTERLAB_TABLE_CSS}</style></head>"
            f"<body><div id='ecshell' class='jp-RenderedHTMLCommon'>{rs._repr_html_()}</div>"
            f"<div id='control'>{control}</div>{PROBE}</body></html>")
    seen = render(page, tmp_path)

    assert seen["control"] is not None  # the payload does run when it is not escaped ...
    assert seen["pwned"] is None and seen["elements"] == 0  # ... and never from ecshell's table
    ok_pre = next(p for p in seen["pres"] if "Filesystem" in p["text"])
    assert "<script>" in ok_pre["text"] and "onerror" in ok_pre["text"]  # shown as text

    # left-aligned monospace, whatever the notebook's table CSS says
    assert {p["align"] for p in seen["pres"]} == {"left"} and {p["cellAlign"] for p in seen["pres"]} == {"left"}
    assert "monospace" in ok_pre["font"]
    # remote colours drawn, no escape codes left in what is read
    assert "rgb(205, 49, 49)" in ok_pre["coloured"] and "root:x:0:0" in ok_pre["text"]
    assert "\x1b" not in ok_pre["text"] and "^[" not in ok_pre["text"]

    outcomes = [row["outcome"] for row in seen["rows"]]
    assert outcomes == ["failed", "failed", "ok"]  # failures first, then node-[0-1] folded into one row
    assert "node-[0-1]" in seen["rows"][2]["text"]
    failed, ok = seen["rows"][0], seen["rows"][2]
    assert failed["background"] != ok["background"] and failed["edge"] != ok["edge"]
    assert failed["status"] != ok["status"]
    assert seen["rows"][0]["background"] == seen["rows"][1]["background"]  # status, not zebra stripes
    assert "2 ok, 2 failed" in seen["summary"] and "printf" in seen["summary"]

    # a long output folds into <details>; each copy button copies its own group's output, exactly
    assert seen["details"] == [{"open": False, "summary": "40 lines: 1 ..."}]
    assert seen["copied"] == ["\n".join(str(i) for i in range(1, 41)), rs["node-0"].output.replace(
        "\x1b[01;31m\x1b[K", "").replace("\x1b[m\x1b[K", "").rstrip("\n")]


def test_machine_and_cost_tables_are_left_aligned(machines, cluster, tmp_path):
    """%cluster and %cost read like the terminal's tables, whatever the notebook's table CSS says."""
    from ecshell.shell.report import cost_table, machine_table

    machines(2)
    probe = ("<script>setTimeout(function () { var out = document.createElement('pre'); out.id = 'probe';"
             " out.textContent = JSON.stringify(Array.from(document.querySelectorAll('#ecshell td, #ecshell th'))"
             ".map(function (c) { return getComputedStyle(c).textAlign; })); document.body.appendChild(out);"
             " }, 100);</script>")
    for table in (machine_table(cluster), cost_table(cluster)):
        page = (f"<!doctype html><html><head><meta charset='utf-8'><style>{JUPYTERLAB_TABLE_CSS}</style></head>"
                f"<body><div id='ecshell' class='jp-RenderedHTMLCommon'>{table._repr_html_()}</div>{probe}"
                "</body></html>")
        aligned = render(page, tmp_path)
        assert aligned and set(aligned) == {"left"}, (table.header, aligned)
