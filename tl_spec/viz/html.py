"""Safe HTML building blocks: escaped text, JSON for ``<script>`` tags, the offline CircuitsVis bundle.

Every page tl_spec writes works with no network: the CircuitsVis bundle comes from the installed
wheel (``circuitsvis/dist/cdn/iife.js``, ~1.3 MB) and is inlined as a classic script that defines
``window.CircuitsVis`` only if it is not defined yet (a second copy would register its custom
kernels again and log hundreds of "already registered" warnings). The page's
Content-Security-Policy forbids any request, so a stray URL cannot load anything either. Data goes
into ``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped, and never contains
NaN or Infinity.

How often the bundle is sent:

- a page (:func:`page`: reports, saved grids) carries it once, and not at all when nothing on it
  draws attention patterns;
- in a notebook, the first head grid with patterns shown in a kernel carries it
  (:func:`notebook_runtime`); later grids carry only the small grid script, which waits for
  ``window.CircuitsVis``. A saved notebook re-opened later renders its outputs in order, so the
  first grid output loads the bundle before the others need it. Re-running the cell that carried
  it sends it again (its old output is replaced); after clearing that output, call
  :func:`reset_notebook_bundle` and re-run a grid cell. In Google Colab every output is its own
  frame, so each grid there carries the bundle.

>>> script_json({"token": "</script>", "x": float("nan")})
'{"token":"\\\\u003c/script\\\\u003e","x":null}'
>>> esc('<a href="x">&</a>')
'&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;'
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.records import jsonable
from tl_spec.viz.assets import CSS, GRID_JS

__all__ = [
    "CSP",
    "bundle_path",
    "circuitsvis_bundle",
    "content_key",
    "data_script",
    "esc",
    "notebook_runtime",
    "page",
    "reset_notebook_bundle",
    "runtime_tags",
    "script_json",
]

# No request may leave the page: scripts and styles only inline, images only data:/blob: URLs.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; "
       "form-action 'none'")

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                 "\u2029": "\\u2029"}


def esc(text: Any) -> str:
    """``text`` as HTML text or a quoted attribute value (``&``, ``<``, ``>`` and quotes escaped)."""
    return html.escape(str(text), quote=True)


def script_json(data: Any) -> str:
    """Compact, key-sorted JSON that is safe inside ``<script type="application/json">``.

    NaN and infinities become ``null``; ``<``, ``>``, ``&``, U+2028 and U+2029 are escaped.
    """
    text = json.dumps(jsonable(data), allow_nan=False, ensure_ascii=False, sort_keys=True,
                      separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_ESCAPES[m.group(0)], text)


def data_script(data: Any, cls: str, **attrs: str) -> str:
    """A ``<script type="application/json">`` element holding ``data`` (see :func:`script_json`)."""
    extra = "".join(f' data-{k}="{esc(v)}"' for k, v in sorted(attrs.items()))
    return f'<script type="application/json" class="{esc(cls)}"{extra}>{script_json(data)}</script>'


def content_key(*parts: Any) -> str:
    """A short, deterministic id from content (SHA-256 of the parts' JSON), valid in CSS selectors.

    >>> content_key("a", 1) == content_key("a", 1), content_key("a", 1)[:2]
    (True, 'k-')
    """
    text = json.dumps(jsonable(list(parts)), sort_keys=True, default=str)
    return "k-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def bundle_path() -> Path:
    """Where the installed circuitsvis wheel keeps its browser bundle."""
    import circuitsvis

    return Path(circuitsvis.__file__).resolve().parent / "dist" / "cdn" / "iife.js"


@cache
def circuitsvis_bundle() -> str:
    """The CircuitsVis browser bundle, ready to inline: ``</script`` escaped, no source-map URL,
    run only where ``window.CircuitsVis`` is not defined yet (see the module notes)."""
    path = bundle_path()
    if not path.is_file():
        raise TLSpecError(
            f"the CircuitsVis browser bundle is missing ({path}); reinstall circuitsvis "
            "(pip install --force-reinstall 'circuitsvis>=1.43')"
        )
    js = path.read_text(encoding="utf-8")
    js = re.sub(r"//# sourceMappingURL=\S*", "", js)
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    if "<!--" in js:
        raise TLSpecError(f"{path} contains '<!--', which cannot be inlined in a page safely; "
                          "use a circuitsvis release known to work (1.43.x)")
    # The wheel's IIFE declares `var CircuitsVis`; inside a function that is local, and the
    # guard skips a second copy (a re-run notebook cell) before it registers anything again.
    return ("if (!window.CircuitsVis) (function () {\n" + js
            + "\nwindow.CircuitsVis = CircuitsVis;\n})();")


def runtime_tags(*, bundle: bool = True) -> str:
    """The stylesheet, the CircuitsVis bundle (optional) and the grid script, as HTML tags."""
    parts = [f"<style>{CSS}</style>"]
    if bundle:
        parts.append(f"<script>{circuitsvis_bundle()}</script>")
    parts.append(f"<script>{GRID_JS}</script>")
    return "\n".join(parts)


# Which output of this kernel carried the bundle: (cell id, execute-request id), or None.
_CARRIER: list[tuple[str | None, str | None]] = []


def _execution() -> tuple[str | None, str | None]:
    """(cell id, message id) of the notebook request being executed, where the kernel says."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return None, None
    getter = getattr(shell, "get_parent", None)
    parent = getter() if callable(getter) else getattr(shell, "parent_header", None)
    if not isinstance(parent, dict):
        return None, None
    cell = (parent.get("metadata") or {}).get("cellId")
    return (str(cell) if cell else None), (parent.get("header") or {}).get("msg_id")


def notebook_runtime(*, needs_bundle: bool) -> str:
    """Runtime tags for one notebook output: the CircuitsVis bundle only in the first output of
    the kernel that needs it (again when that cell is re-run, and always in Google Colab).

    >>> reset_notebook_bundle()
    >>> [notebook_runtime(needs_bundle=True).count("var CircuitsVis=") for _ in range(2)]
    [1, 0]
    >>> notebook_runtime(needs_bundle=False).count("var CircuitsVis=")
    0
    """
    if not needs_bundle:
        return runtime_tags(bundle=False)
    cell, msg = _execution()
    rerun = bool(_CARRIER) and cell is not None and _CARRIER[0][0] == cell and _CARRIER[0][1] != msg
    send = not _CARRIER or rerun or "google.colab" in sys.modules
    if send:
        _CARRIER[:] = [(cell, msg)]
    return runtime_tags(bundle=send)


def reset_notebook_bundle() -> None:
    """Send the CircuitsVis bundle again with the next grid shown in this kernel (after the
    output that carried it was cleared)."""
    _CARRIER.clear()


def page(title: str, body: str, *, extra_css: str = "", bundle: bool = True) -> str:
    """A complete, offline HTML document: CSP, stylesheet, bundle once (if ``bundle``), ``body``.

    >>> doc = page("t", "<p>hi</p>")
    >>> doc.count("var CircuitsVis="), doc.count("<script src=")
    (1, 0)
    >>> page("t", "<p>grid only</p>", bundle=False).count("var CircuitsVis=")
    0
    """
    script = ("<script>/* CircuitsVis (MIT), from the installed wheel */\n"
              f"{circuitsvis_bundle()}</script>\n") if bundle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="tl_spec">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}{extra_css}</style>\n"
        f"{script}</head>\n<body class=\"tlspec\">\n"
        f"{body}\n<script>{GRID_JS}</script>\n</body>\n</html>\n"
    )
