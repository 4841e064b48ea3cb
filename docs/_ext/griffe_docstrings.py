"""Griffe extension used by the documentation build (mkdocs.yml), not by tl_spec itself.

tl_spec's docstrings are written for ``help()`` and doctest: runnable ``>>>`` examples inline in
the text and Sphinx roles (``:func:`x```). Markdown would read a bare doctest line such as
``>>> xs[0][:2]`` as a reference link, and shows roles verbatim. Before griffe parses a
docstring, this extension fences every run of doctest lines (``>>>`` / ``...`` and the output
that follows, up to a blank line) as a ``pycon`` code block and turns ``:role:`~a.b``` into the
code span ```a.b```; ``# doctest: +SKIP`` flags are dropped from the
rendered examples. The docstrings themselves are unchanged.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc|py:\w+):`~?([^`]+)`")
_FLAGS = re.compile(r"\s*#\s*doctest:.*$")


def fence_doctests(text: str) -> str:
    """Return ``text`` with each run of doctest lines in a ```pycon fence, doctest flags dropped."""
    out: list[str] = []
    in_block = False
    indent = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        if not in_block and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
            in_block = True
        elif in_block and not stripped:
            out.append(f"{indent}```")
            in_block = False
        out.append(_FLAGS.sub("", line) if in_block else line)
    if in_block:
        out.append(f"{indent}```")
    return "\n".join(out)


class DocstringsForMarkdown(griffe.Extension):
    """Fence doctests and flatten Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(_ROLE.sub(r"`\1`", obj.docstring.value))
