"""The documentation: README size and links (always), and the MkDocs site (when mkdocs is installed).

The site tests build it once, offline and strict (a warning fails the build), into a temporary
directory, or read an already-built site from ``TL_SPEC_DOCS_SITE`` (``.ci/run`` builds it once
and points the test at it). Install the tools with ``pip install -e ".[docs]"``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import tl_spec

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250
_LINK = re.compile(r"\]\(([^)\s]+)\)")  # inline Markdown links: [text](target)


def _local_links(text: str) -> list[str]:
    """Relative link targets of a Markdown text (no URLs, no pure anchors), anchors dropped."""
    targets = [m.group(1) for m in _LINK.finditer(text)]
    return [t.split("#", 1)[0] for t in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


# --- README: always checked (no extra packages needed) -----------------------------------------

def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it <= {MAX_README_LINES}"


def test_readme_links_exist_and_reach_the_docs():
    links = _local_links(README.read_text(encoding="utf-8"))
    missing = [t for t in links if not (REPO / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
    into_docs = {t for t in links if t.startswith("docs/") and t.endswith(".md")}
    # the first hour reaches getting started, every concept page, the how-tos, reproduction,
    # the reference: at least these pages
    for page in ("docs/getting-started/index.md", "docs/concepts/si.md", "docs/concepts/delta.md",
                 "docs/concepts/noise.md", "docs/concepts/stability.md",
                 "docs/reproduction/index.md", "docs/reference/index.md"):
        assert page in into_docs, f"README does not link {page}"


def test_readme_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert ("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt torch==2.13.0 -e . "
            "&& .venv/bin/tl-spec demo --out tl_spec_demo") in text
    assert "bash .ci/run" in text


def test_docs_name_no_files_users_do_not_have():
    texts = [README, REPO / "CITATION.cff", REPO / "mkdocs.yml", *DOCS.rglob("*.md")]
    for path in texts:
        body = path.read_text(encoding="utf-8")
        for bad in ("GUIDE.md", "../shared", "/work/"):
            assert bad not in body, f"{path.relative_to(REPO)} mentions {bad!r}"


def test_docs_pages_link_only_to_existing_pages():
    broken = []
    for page in DOCS.rglob("*.md"):
        for t in _local_links(page.read_text(encoding="utf-8")):
            if t and not (page.parent / t).exists():
                broken.append(f"{page.relative_to(REPO)} -> {t}")
    assert not broken, "broken links: " + "; ".join(broken)


# --- the built site: needs the docs extra --------------------------------------------------------

_HAVE_DOCS_TOOLS = all(importlib.util.find_spec(m) is not None
                       for m in ("mkdocs", "material", "mkdocstrings", "mkdocs_jupyter"))
needs_mkdocs = pytest.mark.skipif(not _HAVE_DOCS_TOOLS,
                                  reason='mkdocs not installed (pip install -e ".[docs]")')


class _Ids(HTMLParser):
    """Collects every id attribute, and the URLs of scripts and stylesheets."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        if tag == "link" and a.get("href") and "stylesheet" in (a.get("rel") or ""):
            self.assets.append(a["href"])
        if tag == "img" and a.get("src"):
            self.assets.append(a["src"])


def _parse(path: Path) -> _Ids:
    p = _Ids()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("TL_SPEC_DOCS_SITE")
    if prebuilt:
        out = Path(prebuilt)
        assert (out / "index.html").is_file(), f"TL_SPEC_DOCS_SITE={prebuilt} holds no built site"
        return out
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@needs_mkdocs
def test_every_public_name_has_an_api_reference_entry(site: Path):
    ids: set[str] = set()
    for page in (site / "reference").glob("*.html"):
        ids |= _parse(page).ids
    missing = [n for n in tl_spec.__all__ if f"tl_spec.{n}" not in ids]
    assert not missing, f"no API reference entry (anchor id 'tl_spec.NAME') for: {missing}"
    # the entries are documentation, not empty headings: a docstring sentence is rendered
    experiments = (site / "reference" / "experiments.html").read_text(encoding="utf-8")
    assert "Args" in experiments or "Parameters" in experiments


@needs_mkdocs
def test_readme_docs_links_are_built_pages(site: Path):
    pages = {t for t in _local_links(README.read_text(encoding="utf-8"))
             if t.startswith("docs/") and t.endswith(".md")}
    assert pages
    for t in pages:
        built = site / Path(t).relative_to("docs").with_suffix(".html")
        assert built.is_file(), f"README links {t}, but the site has no {built.name}"


@needs_mkdocs
def test_notebooks_are_in_the_site(site: Path):
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        page = site / "notebooks" / f"{nb.stem}.html"
        assert page.is_file(), f"{nb.name} is not rendered in the site"
        assert "tl_spec" in page.read_text(encoding="utf-8")
    if os.environ.get("TL_SPEC_DOCS_EXECUTED") == "1":  # .ci/run: built from executed copies
        quickstart = (site / "notebooks" / "01_quickstart.html").read_text(encoding="utf-8")
        assert "715065bab181f46bf12ed471951141e2" in quickstart  # an output, not the source


@needs_mkdocs
def test_site_loads_no_remote_assets(site: Path):
    remote = []
    for page in site.rglob("*.html"):
        remote += [f"{page.relative_to(site)}: {u}" for u in _parse(page).assets
                   if re.match(r"^(https?:)?//", u)]
    for css in site.rglob("*.css"):
        body = css.read_text(encoding="utf-8", errors="replace")
        remote += [f"{css.relative_to(site)}: {u}"
                   for u in re.findall(r"@import\s+url\(['\"]?((?:https?:)?//[^)'\"]+)", body)]
    assert not remote, "the site fetches remote assets: " + "; ".join(remote[:10])


@needs_mkdocs
def test_docstring_extension_fences_doctests_and_roles():
    spec = importlib.util.spec_from_file_location(
        "griffe_docstrings", DOCS / "_ext" / "griffe_docstrings.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "Intro.\n\n    >>> xs[0][:2]  # doctest: +SKIP\n    [1, 2]\n\nAfter."
    assert mod.fence_doctests(text) == (
        "Intro.\n\n    ```pycon\n    >>> xs[0][:2]\n    [1, 2]\n    ```\n\nAfter.")
    assert mod._ROLE.sub(r"`\1`", "see :class:`~tl_spec.SIResult` and :func:`f`") == \
        "see `tl_spec.SIResult` and `f`"


def test_public_functions_document_their_arguments_and_show_an_example():
    """Every public function: a runnable example; Args (and Returns) past two parameters."""
    import inspect

    import tl_spec

    missing = []
    for name in tl_spec.__all__:
        obj = getattr(tl_spec, name)
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        params = [p for p in inspect.signature(obj).parameters.values()
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if ">>>" not in doc:
            missing.append(f"{name}: no example")
        if len(params) > 2 and not ("Args:" in doc and "Returns:" in doc):
            missing.append(f"{name}: {len(params)} parameters but no Args/Returns")
    assert not missing, missing
