"""The zoo's training corpus: real English shipped with Python itself (PSF license).

Two sources inside every CPython installation, extracted deterministically: the language
reference topics of ``pydoc_data.topics`` (the text ``help()`` shows) and the docstrings of the
standard library's modules, classes and functions (parsed with ``ast``, never imported; tests,
IDLE, tkinter, lib2to3 and ensurepip skipped; docstrings of at least 200 characters). A copy
extracted from CPython 3.11 ships with tl_spec (``data/corpus.jsonl.xz``, with source, size,
license and SHA-256 in ``data/corpus.json``), so the zoo is reproducible on any Python; the
held-out split is every document whose id hashes to 0 mod 20.

>>> corpus = load_corpus()
>>> len(corpus.train) > 10 * len(corpus.heldout) > 0
True
"""

from __future__ import annotations

import ast
import hashlib
import json
import lzma
import platform
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tl_spec.errors import TLSpecError

__all__ = ["Corpus", "Document", "extract_corpus", "heldout_texts", "load_corpus", "write_corpus"]

_SKIP = ("test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__",
         "ensurepip", "tkinter")
LICENSE = "PSF-2.0 (Python Software Foundation License), text extracted from CPython"
HELDOUT_MOD = 20


@dataclass(frozen=True)
class Document:
    """One text: ``id`` (``topic:NAME`` or ``doc:module.qualname``), a short ``title``, the text."""

    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents with their provenance; ``train`` / ``heldout`` split by a hash of the id."""

    documents: tuple[Document, ...]
    meta: dict

    @staticmethod
    def is_heldout(doc_id: str) -> bool:
        """The held-out rule: blake2b(id) mod 20 == 0 (5 % of documents)."""
        digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % HELDOUT_MOD == 0

    @property
    def train(self) -> list[Document]:
        return [d for d in self.documents if not self.is_heldout(d.id)]

    @property
    def heldout(self) -> list[Document]:
        return [d for d in self.documents if self.is_heldout(d.id)]


def _docstrings(stdlib: Path) -> list[Document]:
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _SKIP for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        for qualname, node in _walk(tree, ""):
            text = ast.get_docstring(node, clean=True)
            if text and len(text) >= 200:
                name = f"{module}.{qualname}" if qualname else module
                docs.append(Document(f"doc:{name}", name, text.strip()))
    return docs


def _walk(node: ast.AST, prefix: str):
    if isinstance(node, ast.Module):
        yield "", node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}.{child.name}" if prefix else child.name
            yield name, child
            yield from (item for item in _walk(child, name) if item[0])


def extract_corpus() -> Corpus:
    """Extract the corpus from the running Python installation (deterministic for a version)."""
    from pydoc_data import topics

    docs = [Document(f"topic:{k}", k, topics.topics[k].strip()) for k in sorted(topics.topics)]
    docs += _docstrings(Path(sysconfig.get_paths()["stdlib"]))
    text = "\n\n".join(d.text for d in docs)
    meta = {
        "source": "pydoc_data.topics + standard-library docstrings (ast, not imported)",
        "python": platform.python_version(),
        "license": LICENSE,
        "n_documents": len(docs),
        "n_characters": len(text),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "heldout_rule": f"blake2b-64(id) mod {HELDOUT_MOD} == 0",
    }
    return Corpus(tuple(docs), meta)


def write_corpus(corpus: Corpus, directory: str | Path) -> Path:
    """Write ``corpus.jsonl.xz`` and ``corpus.json`` (the files tl_spec ships) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(d.__dict__, ensure_ascii=False) + "\n" for d in corpus.documents)
    (out / "corpus.jsonl.xz").write_bytes(lzma.compress(lines.encode(), preset=9))
    (out / "corpus.json").write_text(json.dumps(corpus.meta, indent=1) + "\n")
    return out


def load_corpus() -> Corpus:
    """The corpus shipped with tl_spec, verified against its recorded SHA-256."""
    base = resources.files("tl_spec").joinpath("zoo/data")
    meta = json.loads(base.joinpath("corpus.json").read_text())
    raw = lzma.decompress(base.joinpath("corpus.jsonl.xz").read_bytes()).decode()
    docs = tuple(Document(**json.loads(line)) for line in raw.splitlines())
    digest = hashlib.sha256("\n\n".join(d.text for d in docs).encode()).hexdigest()
    if digest != meta["sha256"] or len(docs) != meta["n_documents"]:
        raise TLSpecError(
            "the shipped zoo corpus does not match its recorded SHA-256: the installation is "
            "damaged; reinstall tl_spec"
        )
    return Corpus(docs, meta)


def heldout_texts(n: int, *, offset: int = 0, max_chars: int = 300) -> list[str]:
    """``n`` held-out documents of at least ``max_chars`` characters, cut to ``max_chars``.

    Natural English none of the zoo models trained on: default prompts for stability, texts for
    importance and reference texts for the static attention variant.

    >>> len(heldout_texts(3)), max(len(t) for t in heldout_texts(3))
    (3, 300)
    """
    from tl_spec.errors import TLSpecError

    docs = [d.text[:max_chars] for d in load_corpus().heldout if len(d.text) >= max_chars]
    if len(docs) < offset + n:
        raise TLSpecError(f"the zoo corpus has {len(docs)} held-out documents of {max_chars}+ "
                          f"characters; ask for at most {len(docs) - offset}")
    return docs[offset: offset + n]
