"""The protocol's prompt sets, verified by their published hashes, and loaders for your own.

``STANDARD_10`` (protocol E11-v3) and ``E06_TEXTS`` are read from the package data and checked
against the paper's hashes at import, so a corrupted install cannot silently change results.

>>> len(STANDARD_10), STANDARD_10_SET.md5
(10, '715065bab181f46bf12ed471951141e2')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tl_spec.errors import TLSpecError

__all__ = [
    "E06_SET",
    "E06_TEXTS",
    "STANDARD_10",
    "STANDARD_10_SET",
    "PromptSet",
    "as_prompt_set",
    "load_prompts",
    "prompt_set",
]

STANDARD_10_MD5 = "715065bab181f46bf12ed471951141e2"
STANDARD_10_FILE_SHA256 = "25448fef934af177bb0fd9d933e58a949d40b9b5b2a48854bbcf8e366197b64a"
E06_MD5 = "9ff555afc37041ed0c3e376935744260"

_NUMBERED = re.compile(r"^\s*\d+\.[ \t]+(.*)$")


def _join(prompts: Sequence[str]) -> bytes:
    return "|||".join(prompts).encode("utf-8")


@dataclass(frozen=True)
class PromptSet:
    """A named, hashed tuple of prompts; ``md5``/``sha256`` are of ``'|||'.join(prompts)``.

    >>> ps = prompt_set(["a", "b"], name="ab")
    >>> ps.md5 == hashlib.md5(b"a|||b").hexdigest(), len(ps)
    (True, 2)
    """

    name: str
    prompts: tuple[str, ...]
    source: str | None
    md5: str
    sha256: str
    file_sha256: str | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return iter(self.prompts)

    def hashes(self) -> dict:
        """Provenance record: name, count, source and hashes, ready for a results file.

        >>> sorted(STANDARD_10_SET.hashes())
        ['file_sha256', 'md5', 'n_prompts', 'name', 'sha256', 'source']
        """
        return {"name": self.name, "n_prompts": len(self.prompts), "source": self.source,
                "md5": self.md5, "sha256": self.sha256, "file_sha256": self.file_sha256}


def prompt_set(prompts: Sequence[str], name: str | None = None, *, source: str | None = None,
               file_sha256: str | None = None) -> PromptSet:
    """Build a :class:`PromptSet` from a non-empty list of non-empty strings.

    >>> prompt_set(["Hello there", "The cat sat"], name="mine").hashes()["n_prompts"]
    2
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TLSpecError(f"prompts must be a list of strings, got {type(prompts).__name__}; "
                          "wrap a single prompt in a list: [\"...\"].")
    if len(prompts) == 0:
        raise TLSpecError("prompts is empty: an SI needs at least one prompt; pass a non-empty list.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise TLSpecError(f"prompts[{i}] is {p!r} ({type(p).__name__}); every prompt must be a "
                              "non-empty string: remove or fix that item.")
    tup = tuple(prompts)
    data = _join(tup)
    return PromptSet(name or "custom", tup, source, hashlib.md5(data).hexdigest(),
                     hashlib.sha256(data).hexdigest(), file_sha256)


def as_prompt_set(prompts: Sequence[str] | PromptSet) -> PromptSet:
    """``prompts`` as a :class:`PromptSet`, recognising the shipped protocol sets by content.

    >>> as_prompt_set(list(STANDARD_10)).name
    'standard10_v3'
    """
    if isinstance(prompts, PromptSet):
        return prompts
    tup = tuple(prompts) if not isinstance(prompts, (str, bytes)) else prompts
    for known in (STANDARD_10_SET, E06_SET):
        if tup == known.prompts:
            return known
    return prompt_set(prompts)


def _parse(text: str, where: str) -> list[str]:
    """Prompts of a text file: numbered ('N. text') if any line is numbered, else one per line."""
    lines = [(n, ln.rstrip("\r")) for n, ln in enumerate(text.split("\n"), 1)]
    lines = [(n, ln) for n, ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not any(_NUMBERED.match(ln) for _, ln in lines):
        return [ln for _, ln in lines]
    out = []
    for n, ln in lines:
        m = _NUMBERED.match(ln)
        if m is None:
            raise TLSpecError(f"{where}, line {n}: {ln[:60]!r} is not numbered, but other lines are "
                              "('N. text'); number every prompt, or use one plain prompt per line.")
        out.append(m.group(1))
    return out


def _from_bytes(data: bytes, name: str, source: str, *, md5: str | None = None,
                sha256: str | None = None, hint: str = "") -> PromptSet:
    """Parse and verify prompt-file bytes; ``sha256`` checks the bytes, ``md5`` the joined prompts."""
    file_sha = hashlib.sha256(data).hexdigest()
    if sha256 is not None and file_sha != sha256.lower():
        raise TLSpecError(f"{source}: SHA-256 of the file is {file_sha}, expected {sha256}; the file "
                          f"differs from the published one.{hint}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TLSpecError(f"{source} is not UTF-8 text ({exc}); save it as UTF-8.{hint}") from None
    prompts = _parse(text, source)
    if not prompts:
        raise TLSpecError(f"{source} contains no prompts (only blank or '#' lines); put one prompt "
                          f"per line, or 'N. text' lines.{hint}")
    ps = prompt_set(prompts, name, source=source, file_sha256=file_sha)
    if md5 is not None and ps.md5 != md5.lower():
        raise TLSpecError(f"{source}: MD5 of '|||'.join(prompts) is {ps.md5}, expected {md5}; the "
                          f"prompts differ from the published set.{hint}")
    return ps


def load_prompts(path: str | Path, *, md5: str | None = None, sha256: str | None = None,
                 name: str | None = None) -> PromptSet:
    """Read prompts from a text file ('N. text' lines or one per line; '#' comments skipped).

    ``md5`` checks ``'|||'.join(prompts)``; ``sha256`` checks the file bytes (as the paper publishes).

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     f = os.path.join(d, "p.txt"); _ = open(f, "w").write("# mine\\n1. Hi there\\n2. Bye\\n")
    ...     load_prompts(f, md5=hashlib.md5(b"Hi there|||Bye").hexdigest()).prompts
    ('Hi there', 'Bye')
    """
    p = Path(path)
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "does not exist"
        raise TLSpecError(f"prompt file {str(p)!r} {why} (cwd {str(Path.cwd())!r}); pass the path "
                          "of a text file with one prompt per line.")
    hint = (" Use the exact published file, or drop the hash argument for your own prompts."
            if md5 is not None or sha256 is not None else "")
    return _from_bytes(p.read_bytes(), name or p.stem, str(p), md5=md5, sha256=sha256, hint=hint)


def _shipped(filename: str, name: str, *, md5: str, sha256: str | None = None,
             data: bytes | None = None) -> PromptSet:
    """Load and verify a data file shipped with tl_spec (``data`` overrides the bytes, for tests)."""
    if data is None:
        data = resources.files("tl_spec").joinpath("data", filename).read_bytes()
    hint = (" The installed data file is corrupted: reinstall tl_spec "
            "(pip install --force-reinstall --no-deps tl_spec, or from your checkout).")
    return _from_bytes(data, name, f"tl_spec/data/{filename}", md5=md5, sha256=sha256, hint=hint)


STANDARD_10_SET: PromptSet = _shipped("standard10_v3.txt", "standard10_v3", md5=STANDARD_10_MD5,
                                      sha256=STANDARD_10_FILE_SHA256)
STANDARD_10: tuple[str, ...] = STANDARD_10_SET.prompts
E06_SET: PromptSet = _shipped("e06_texts.txt", "e06_texts", md5=E06_MD5)
E06_TEXTS: tuple[str, ...] = E06_SET.prompts
