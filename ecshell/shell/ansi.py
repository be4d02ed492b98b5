"""Remote ANSI colours as HTML: ``grep --color=always`` reads in a notebook as in a terminal.

>>> to_html("\\x1b[01;31mroot\\x1b[0m:x:0:0 <b>")
'<span style="font-weight:bold;color:#cd3131">root</span>:x:0:0 &lt;b&gt;'

Only SGR sequences (colours, bold) are drawn, and only through styles this
module builds from the numbers: nothing from the remote text reaches an
attribute. Every other escape sequence (cursor moves, titles, OSC links) is
dropped whole; a stray control character is shown as ``cat -v`` would.
"""

import html
import re

from ..output import printable

#: CSI (``ESC [ params final``) and OSC (``ESC ] ... BEL`` or ``ESC ] ... ESC \\``) sequences.
_SEQUENCE = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")

#: The 16 basic colours (VS Code's terminal palette: readable on light and dark backgrounds).
_BASIC = ["#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
          "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#e5e5e5"]
_CUBE = [0, 95, 135, 175, 215, 255]


def _palette(n):
    if n < 16:
        return _BASIC[n]
    if n < 232:
        n -= 16
        return "#%02x%02x%02x" % (_CUBE[n // 36], _CUBE[n // 6 % 6], _CUBE[n % 6])
    level = 8 + 10 * (n - 232)
    return "#%02x%02x%02x" % (level, level, level)


class _Style:
    def __init__(self):
        self.reset()

    def reset(self):
        self.bold = self.italic = self.underline = False
        self.fg = self.bg = None

    def apply(self, params):
        codes = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                self.reset()
            elif code == 1:
                self.bold = True
            elif code == 3:
                self.italic = True
            elif code == 4:
                self.underline = True
            elif code == 22:
                self.bold = False
            elif code == 23:
                self.italic = False
            elif code == 24:
                self.underline = False
            elif 30 <= code <= 37 or 90 <= code <= 97:
                self.fg = _BASIC[code - 30 if code < 90 else code - 82]
            elif 40 <= code <= 47 or 100 <= code <= 107:
                self.bg = _BASIC[code - 40 if code < 100 else code - 92]
            elif code == 39:
                self.fg = None
            elif code == 49:
                self.bg = None
            elif code in (38, 48) and i + 1 < len(codes):
                colour, used = None, 1
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    colour, used = _palette(codes[i + 2] % 256), 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    colour, used = "#%02x%02x%02x" % tuple(min(c, 255) for c in codes[i + 2:i + 5]), 4
                if code == 38:
                    self.fg = colour
                else:
                    self.bg = colour
                i += used
            i += 1

    def css(self):
        parts = []
        if self.bold:
            parts.append("font-weight:bold")
        if self.italic:
            parts.append("font-style:italic")
        if self.underline:
            parts.append("text-decoration:underline")
        if self.fg:
            parts.append(f"color:{self.fg}")
        if self.bg:
            parts.append(f"background-color:{self.bg}")
        return ";".join(parts)


def _text(segment, style):
    escaped = html.escape(printable(segment))
    css = style.css()
    return f'<span style="{css}">{escaped}</span>' if css and escaped else escaped


def to_html(text):
    """``text`` as HTML: escaped, its SGR colours as styled spans, other escape sequences dropped."""
    style = _Style()
    pieces, at = [], 0
    for found in _SEQUENCE.finditer(text):
        pieces.append(_text(text[at:found.start()], style))
        if found.group(2) == "m":
            style.apply(found.group(1))
        at = found.end()
    pieces.append(_text(text[at:], style))
    return "".join(pieces)


def strip(text):
    """``text`` without its escape sequences (what a person reads of a coloured line)."""
    return _SEQUENCE.sub("", text)
