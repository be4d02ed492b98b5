"""The pieces that need no machine: host sets, output buffers, decoding, display."""

import os

import pytest
from IPython.lib.pretty import pretty

from ecshell.shell.display import render_resultset
from ecshell.shell.htmlview import render_resultset_html
from ecshell.ssh.endpoint import parse_target
from ecshell.errors import SelectionError
from ecshell.hostset import expand, fold, match
from ecshell.output import OutputBuffer, StreamDecoder, printable
from ecshell.results import ErrorKind, Result, ResultSet


class FakeMachine:
    """Only a name: results and display need nothing else (no SSH involved here)."""

    def __init__(self, name):
        self.name = name


def result(name, data=b"", **kwargs):
    buf = OutputBuffer()
    buf.write(data)
    return Result(FakeMachine(name), "cmd", buf, **kwargs)


def test_fold_and_match():
    assert fold(["web-0", "web-1", "web-2", "web-5", "web-10"]) == "web-[0-2,5,10]"
    assert fold([]) == ""
    names = ["web-0", "web-1", "web-2", "web-10", "db-0"]
    assert match(names, "web-[0-1]") == ["web-0", "web-1"]
    assert match(names, "web-1*") == ["web-1", "web-10"]
    assert match(names, "web-[0-20]") == ["web-0", "web-1", "web-2", "web-10"]
    assert match(names, "db-0,web-2") == ["web-2", "db-0"]
    assert expand("a[1-2]*") == ["a1*", "a2*"]
    with pytest.raises(SelectionError, match="bad range in target 'web-\\[3-'"):
        match(names, "web-[3-")
    with pytest.raises(SelectionError, match="no machine named 'web-7'"):
        match(names, "web-7")
    with pytest.raises(SelectionError, match="selects no machine"):
        match(names, "app-*")
    # '@' is a plain character, never a ClusterShell group lookup
    assert match(["a@b-1"], "a@b-[1]") == ["a@b-1"]


def test_output_buffer_spills_without_losing_a_byte(tmp_path):
    buf = OutputBuffer(memory_limit=10, spill_dir=str(tmp_path))
    chunks = [os.urandom(7) for _ in range(50)]
    for c in chunks:
        buf.write(c)
    assert buf.spilled and buf.memory_size == 0
    assert buf.getvalue() == b"".join(chunks)
    assert buf.head(5) == chunks[0][:5]
    assert len(buf) == 350
    path = buf.path
    assert os.path.getsize(path) == 350
    buf.discard()
    assert not os.path.exists(path)


def test_stream_decoder_handles_split_characters():
    text = "héllo ✓ wörld"
    data = text.encode() + b"\xff"
    decoder = StreamDecoder()
    out = "".join(decoder.feed(data[i:i + 1]) for i in range(len(data))) + decoder.flush()
    assert out == text + "\ufffd"


def test_printable_escapes_terminal_control_sequences():
    assert printable("red \x1b[31mX\x1b[0m\n") == "red ^[[31mX^[[0m\n"
    assert printable("a\r\nb\rc\x07\x00\x7f\x9b\t") == "a\nb^Mc^G^@^?\\x9b\t"


def test_result_and_resultset_contract():
    rs = ResultSet([
        result("web-0", b"same\n", exit_code=0),
        result("web-1", b"same\n", exit_code=0),
        result("web-2", b"other\n", exit_code=3, error="exit"),
        result("web-3", error="timeout", message="no exit after 5s"),
        result("web-4", error="unreachable", message="connection refused"),
    ], command="cmd")
    assert rs["web-0"].ok and rs["web-2"].error == "exit" and rs["web-2"].error is ErrorKind.EXIT
    assert rs["web-3"].error == "timeout" and not rs["web-3"]
    assert list(rs.ok) == ["web-0", "web-1"]
    assert list(rs.failed) == ["web-2", "web-3", "web-4"]
    assert rs.ok is rs.ok  # computed once
    groups = rs.groups()
    assert groups[0][0] == "same\n" and groups[0][1].names == ["web-0", "web-1"]
    assert {str(k) for k in rs.by_error()} == {"exit", "timeout", "unreachable"}
    assert repr(rs) == "<ResultSet web-[0-4] ok=2 failed=3>"
    assert "web-2 exit 3" in repr(rs["web-2"])
    with pytest.raises(KeyError, match="no result for 'web-9'"):
        rs["web-9"]


def test_folded_display_groups_outputs_and_lists_failures_by_kind():
    rs = ResultSet([
        result("web-0", b"same\n", exit_code=0),
        result("web-1", b"same\n", exit_code=0),
        result("web-2", b"\x1b[2Jevil\n", exit_code=3, error="exit"),
        result("web-3", error="timeout", message="no exit after 5s"),
        result("web-4", error="timeout", message="no exit after 5s"),
    ], command="cmd")
    text = pretty(rs)
    assert "web-[0-1] (2) ok\nsame" in text
    assert "web-2 (1) exit 3\n^[[2Jevil" in text
    assert "\x1b" not in text
    assert "timeout web-[3-4] (2): no exit after 5s" in text
    assert text.endswith("2 ok, 3 failed -- cmd")
    coloured = render_resultset(rs, color=True)
    assert "\x1b[32mok\x1b[0m" in coloured
    page = render_resultset_html(rs)
    assert '">evil</pre>' in page and "[2J" not in page  # a screen-clearing sequence is dropped in HTML
    evil = ResultSet([result("h", b"<script>alert(1)</script>", exit_code=0)])
    assert "<script>" not in render_resultset_html(evil)


def test_display_cuts_long_output_but_the_result_keeps_it():
    data = b"x" * 200_000
    rs = ResultSet([result("big", data, exit_code=0)])
    text = pretty(rs)
    assert "more bytes not shown" in text
    assert rs["big"].output_bytes == data


def test_parse_target():
    assert parse_target("ops@10.0.0.5:2222") == ("ops", "10.0.0.5", 2222)
    assert parse_target("h0") == (None, "h0", None)
    assert parse_target("root@[::1]:22") == ("root", "::1", 22)
