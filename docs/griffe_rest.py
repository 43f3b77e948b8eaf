"""Griffe extension for the docs site: renders anl's docstring dialect as Markdown.

anl's docstrings are Google style (``Args:``, ``Returns:``, ``Example:``) with
reStructuredText inside (roles such as ``:func:`pgd```, ``.. math::`` blocks, simple
``====`` tables, ``::`` literal blocks). mkdocstrings renders docstrings as Markdown, where
the roles would show verbatim, the doctest lines of an ``Example:`` admonition would become
nested block quotes, and the tables would collapse into paragraphs. This extension rewrites
each docstring's text as griffe loads it (the sources are not touched):

- ``Example:`` becomes ``Examples:``, the section griffe renders as code;
- ``:role:`target``` becomes a code span (``~a.b.c`` shows ``c``; ``title <target>`` shows
  the title);
- a ``.. math::`` block becomes a fenced ``tex`` block (no JavaScript, no network);
- a reST simple table becomes a Markdown table;
- a doctest outside an ``Examples:`` section becomes a fenced ``pycon`` block;
- a paragraph ending in ``::`` ends in ``:`` and its literal block becomes a fenced block;
- a Google-style entry that documents several parameters at once (``mean, std: ...``) is
  split into one entry per parameter, so each matches the signature.

mkdocs.yml loads it through mkdocstrings' ``extensions`` option.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?P<role>[a-z]+):`(?P<body>[^`]+)`")
_TITLED = re.compile(r"(?P<title>.*?)\s*<(?P<target>[^>]+)>")
_BORDER = re.compile(r"^ *=+( +=+)+ *$")
_MATH = re.compile(r"^(?P<indent> *)\.\. math::(?P<rest>.*)$")
_PARAM_SECTIONS = re.compile(
    r"^(?P<indent> *)(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments"
    r"|Other Args|Other Arguments|Other Params|Other Parameters):\s*$"
)
_MULTI_PARAM = re.compile(r"^(?P<indent> *)(?P<names>\w+(?: *, *\w+)+)(?P<rest>( *\([^)]*\))?:.*)$")
_LIST_ITEM = re.compile(r"^(?P<indent> *)(?:[-*+]|\d+\.) ")
_EXAMPLES = re.compile(r"^(?P<indent> *)Examples?:\s*$")
_PROMPT = re.compile(r"^(?P<indent> *)>>>( |$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _role(match: re.Match[str]) -> str:
    role, body = match["role"], match["body"]
    if role != "math":
        titled = _TITLED.fullmatch(body)
        if titled and titled["title"]:
            body = titled["title"]
        elif body.startswith("~"):
            body = body[1:].rsplit(".", 1)[-1]
    return f"`{body}`"


def _block(lines: list[str], start: int, parent_indent: int) -> int:
    """The end (exclusive) of the indented block that starts at or after ``start``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > parent_indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _fence(body: list[str], indent: int, language: str = "") -> list[str]:
    strip = min((_indent(line) for line in body if line.strip()), default=0)
    pad = " " * indent
    return [
        f"{pad}```{language}",
        *[pad + line[strip:] if line.strip() else "" for line in body],
        f"{pad}```",
    ]


def _table(lines: list[str]) -> list[str]:
    """A reST simple table (its lines, borders included) as a Markdown table."""
    border = lines[0]
    indent = _indent(border)
    starts = [m.start() for m in re.finditer(r"=+", border)]
    borders = [i for i, line in enumerate(lines) if _BORDER.match(line)]
    header_end = borders[1] if len(borders) > 2 else None
    rows: list[list[str]] = []
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if i in borders or not line.strip():
            continue
        cells = [
            line[a : (starts[k + 1] if k + 1 < len(starts) else len(line))].strip()
            for k, a in enumerate(starts)
        ]
        cells = [cell.replace("|", "\\|") for cell in cells]
        if header_end is not None and i < header_end:
            header = cells
        elif rows and not cells[0]:  # a continuation line of the previous row
            rows[-1] = [" ".join(filter(None, pair)) for pair in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    pad = " " * indent
    header = header or [" "] * len(starts)
    out = [pad + "| " + " | ".join(header) + " |", pad + "|" + "---|" * len(starts)]
    out += [pad + "| " + " | ".join(row) + " |" for row in rows]
    return out


def _paragraph_indent(lines: list[str], i: int) -> int:
    """Where the content of the paragraph holding line ``i`` starts (list items: +4)."""
    j = i
    while j > 0 and lines[j - 1].strip() and not _LIST_ITEM.match(lines[j]):
        j -= 1
    item = _LIST_ITEM.match(lines[j])
    return _indent(lines[j]) + 4 if item else _indent(lines[j])


def rewrite(text: str) -> str:
    """The docstring ``text`` with its reStructuredText turned into Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    params_indent: int | None = None  # inside an Args-like section: its header's indent
    examples_indent: int | None = None  # inside an Examples section: its header's indent
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() and params_indent is not None and _indent(line) <= params_indent:
            params_indent = None
        if line.strip() and examples_indent is not None and _indent(line) <= examples_indent:
            examples_indent = None
        if examples := _EXAMPLES.match(line):
            examples_indent = len(examples["indent"])
        if examples_indent is None and (prompt := _PROMPT.match(line)):
            # A doctest outside an Examples section: fence it (up to the next blank line).
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += _fence(lines[i:end], len(prompt["indent"]), "pycon")
            i = end
            continue
        if section := _PARAM_SECTIONS.match(line):
            params_indent = len(section["indent"])
            out.append(line)
            i += 1
            continue
        if examples and line.strip() == "Example:":
            out.append(line.replace("Example:", "Examples:"))
            i += 1
            continue
        if math := _MATH.match(line):
            indent = len(math["indent"])
            end = _block(lines, i + 1, indent)
            block = [b for b in lines[i + 1 : end] if b.strip()]
            strip = min((_indent(b) for b in block), default=0)
            first = [" " * strip + math["rest"].strip()] if math["rest"].strip() else []
            out += _fence(first + block, indent, "tex")
            i = end
            continue
        if _BORDER.match(line):
            end = i + 1
            while end < len(lines) and not (
                _BORDER.match(lines[end]) and (end + 1 == len(lines) or not lines[end + 1].strip())
            ):
                end += 1
            if end < len(lines):
                out += _table(lines[i : end + 1])
                i = end + 1
                continue
        if params_indent is not None and (multi := _MULTI_PARAM.match(line)):
            end = _block(lines, i + 1, len(multi["indent"]))
            for name in re.split(r" *, *", multi["names"]):
                out.append(f"{multi['indent']}{name}{multi['rest']}")
                out += lines[i + 1 : end]
            i = end
            continue
        if line.rstrip().endswith("::"):
            indent = _paragraph_indent(lines, i)
            stripped = line.rstrip()[:-2].rstrip()
            if stripped.strip():
                out.append(stripped + ":")
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            item = _LIST_ITEM.match(line)  # the block is indented past the item's text
            end = _block(lines, start, len(item[0]) if item else _indent(line))
            if end > start:
                out += ["", *_fence(lines[start:end], indent)]
                i = end
                continue
            i += 1
            continue
        out.append(line)
        i += 1
    return _ROLE.sub(_role, "\n".join(out))


class RestToMarkdown(Extension):
    """Rewrites every docstring with :func:`rewrite` when griffe loads its object."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
