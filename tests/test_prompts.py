"""Prompt sets: the shipped protocol prompts match the paper and its hashes; loaders fail loudly."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from tl_spec import prompts as P
from tl_spec.errors import TLSpecError
from tl_spec.prompts import (
    E06_SET,
    E06_TEXTS,
    STANDARD_10,
    STANDARD_10_SET,
    PromptSet,
    load_prompts,
    prompt_set,
)

# Paper 4, Appendix A, with prompt 6 in full (the notebooks' long two-sentence version).
PAPER_STANDARD_10 = [
    "What is the capital of France and what is its population?",
    "If all roses are flowers and some flowers fade quickly, can we conclude that some roses fade "
    "quickly? Explain step by step.",
    "Calculate 47 multiplied by 23 and show your work.",
    "Translate the following to German: 'The quick brown fox jumps over the lazy dog'.",
    "Write a Python function that checks if a number is prime.",
    "Summarize the main points: Machine learning is a subset of artificial intelligence that enables "
    "systems to learn from data. It uses algorithms to identify patterns and make decisions with "
    "minimal human intervention.",
    "Statement A: 'All birds can fly.' Statement B: 'Penguins are birds that cannot fly.' Are these "
    "statements contradictory? Explain.",
    "What are the safety considerations when using a kitchen knife?",
    "Write a haiku about artificial intelligence.",
    "Complete this sentence in a helpful way: 'The best approach to solving complex problems is'",
]
PAPER_E06 = [
    "The meaning of life is",
    "In the beginning, there was",
    "The most important thing about",
    "Scientists have discovered that",
    "Once upon a time in a",
]
STD_MD5 = "715065bab181f46bf12ed471951141e2"
STD_FILE_SHA256 = "25448fef934af177bb0fd9d933e58a949d40b9b5b2a48854bbcf8e366197b64a"
E06_MD5 = "9ff555afc37041ed0c3e376935744260"


def _shipped_bytes(name: str) -> bytes:
    return resources.files("tl_spec").joinpath("data", name).read_bytes()


# --- the shipped sets -------------------------------------------------------------------------


def test_standard10_equals_paper_list():
    assert isinstance(STANDARD_10, tuple)
    assert list(STANDARD_10) == PAPER_STANDARD_10
    assert STANDARD_10[5].count(". ") == 1 and STANDARD_10[5].endswith("minimal human intervention.")
    assert STANDARD_10_SET.prompts is STANDARD_10


def test_standard10_hashes():
    assert hashlib.md5("|||".join(STANDARD_10).encode()).hexdigest() == STD_MD5
    assert hashlib.sha256(_shipped_bytes("standard10_v3.txt")).hexdigest() == STD_FILE_SHA256
    assert STANDARD_10_SET.md5 == STD_MD5
    assert STANDARD_10_SET.file_sha256 == STD_FILE_SHA256
    assert STANDARD_10_SET.sha256 == hashlib.sha256("|||".join(STANDARD_10).encode()).hexdigest()


def test_e06_texts_and_hash():
    assert list(E06_TEXTS) == PAPER_E06
    assert hashlib.md5("|||".join(E06_TEXTS).encode()).hexdigest() == E06_MD5
    assert E06_SET.md5 == E06_MD5 and E06_SET.prompts is E06_TEXTS
    assert E06_SET.file_sha256 == hashlib.sha256(_shipped_bytes("e06_texts.txt")).hexdigest()


def test_hashes_provenance_record():
    h = STANDARD_10_SET.hashes()
    assert h == {"name": "standard10_v3", "n_prompts": 10, "source": STANDARD_10_SET.source,
                 "md5": STD_MD5, "sha256": STANDARD_10_SET.sha256, "file_sha256": STD_FILE_SHA256}
    assert len(STANDARD_10_SET) == 10 and list(STANDARD_10_SET) == PAPER_STANDARD_10


def test_promptset_is_frozen():
    with pytest.raises(AttributeError):
        STANDARD_10_SET.name = "other"  # type: ignore[misc]


def test_shipped_files_verify_cleanly():
    ps = P._shipped("standard10_v3.txt", "x", md5=STD_MD5, sha256=STD_FILE_SHA256)
    assert ps.prompts == STANDARD_10


# --- corrupted installs are detected ----------------------------------------------------------


def test_corrupted_standard10_bytes_fail_file_hash():
    data = _shipped_bytes("standard10_v3.txt").replace(b"France", b"Spain")
    with pytest.raises(TLSpecError, match="corrupted") as exc:
        P._shipped("standard10_v3.txt", "x", md5=STD_MD5, sha256=STD_FILE_SHA256, data=data)
    assert STD_FILE_SHA256 in str(exc.value) and "reinstall" in str(exc.value)


def test_comment_only_change_passes_md5_but_fails_file_sha256():
    data = _shipped_bytes("standard10_v3.txt").replace(b"# Version: 3.0", b"# Version: 3.1")
    assert P._shipped("standard10_v3.txt", "x", md5=STD_MD5, data=data).prompts == STANDARD_10
    with pytest.raises(TLSpecError, match="SHA-256.*corrupted"):
        P._shipped("standard10_v3.txt", "x", md5=STD_MD5, sha256=STD_FILE_SHA256, data=data)


def test_corrupted_e06_bytes_fail_md5():
    data = _shipped_bytes("e06_texts.txt").replace(b"Once upon", b"Twice upon")
    with pytest.raises(TLSpecError, match="MD5.*corrupted") as exc:
        P._shipped("e06_texts.txt", "x", md5=E06_MD5, data=data)
    assert E06_MD5 in str(exc.value)


def test_truncated_data_file_is_detected():
    with pytest.raises(TLSpecError, match="corrupted"):
        P._shipped("standard10_v3.txt", "x", md5=STD_MD5, data=b"# nothing left\n")


# --- load_prompts -----------------------------------------------------------------------------


def test_load_numbered_format(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# header\n\n1. First prompt.\n2. Second: with 3. inside\n  \n10. Tenth\n")
    ps = load_prompts(f)
    assert ps.prompts == ("First prompt.", "Second: with 3. inside", "Tenth")
    assert ps.name == "mine" and ps.source == str(f)
    assert ps.md5 == hashlib.md5(b"First prompt.|||Second: with 3. inside|||Tenth").hexdigest()
    assert ps.file_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()


def test_load_plain_format_with_crlf(tmp_path):
    f = tmp_path / "plain.txt"
    f.write_bytes(b"# comment\r\nThe cat sat\r\n\r\nOn the mat, 2. times\r\n")
    ps = load_prompts(f, name="cats")
    assert ps.prompts == ("The cat sat", "On the mat, 2. times") and ps.name == "cats"


def test_load_reproduces_shipped_set_with_both_hashes(tmp_path):
    f = tmp_path / "standard10_v3.txt"
    f.write_bytes(_shipped_bytes("standard10_v3.txt"))
    ps = load_prompts(f, md5=STD_MD5, sha256=STD_FILE_SHA256)
    assert ps.prompts == STANDARD_10 and ps.md5 == STD_MD5 and ps.file_sha256 == STD_FILE_SHA256


def test_load_missing_file(tmp_path):
    with pytest.raises(TLSpecError, match="does not exist"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(TLSpecError, match="is a directory"):
        load_prompts(tmp_path)


def test_load_empty_file(tmp_path):
    for text in ("", "\n\n", "# only a comment\n\n# another\n"):
        f = tmp_path / "empty.txt"
        f.write_text(text)
        with pytest.raises(TLSpecError, match="no prompts"):
            load_prompts(f)


def test_load_md5_mismatch(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n")
    actual = hashlib.md5(b"one|||two").hexdigest()
    with pytest.raises(TLSpecError, match="MD5") as exc:
        load_prompts(f, md5=STD_MD5)
    assert STD_MD5 in str(exc.value) and actual in str(exc.value)
    assert load_prompts(f, md5=actual.upper()).md5 == actual


def test_load_sha256_mismatch_checks_file_bytes(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\ntwo\n")
    actual = hashlib.sha256(b"one\ntwo\n").hexdigest()
    with pytest.raises(TLSpecError, match="SHA-256") as exc:
        load_prompts(f, sha256=STD_FILE_SHA256)
    assert STD_FILE_SHA256 in str(exc.value) and actual in str(exc.value)
    # the SHA-256 is of the file bytes, not of the joined prompts
    joined = hashlib.sha256(b"one|||two").hexdigest()
    with pytest.raises(TLSpecError, match="SHA-256"):
        load_prompts(f, sha256=joined)
    assert load_prompts(f, sha256=actual).file_sha256 == actual


def test_load_mixed_numbering_is_an_error(tmp_path):
    f = tmp_path / "mixed.txt"
    f.write_text("1. numbered\nnot numbered\n")
    with pytest.raises(TLSpecError, match="line 2"):
        load_prompts(f)


def test_load_non_utf8(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(TLSpecError, match="UTF-8"):
        load_prompts(f)


# --- prompt_set -------------------------------------------------------------------------------


def test_prompt_set_builds_hashes():
    ps = prompt_set(["a b", "c"], name="tiny")
    assert isinstance(ps, PromptSet)
    assert ps.prompts == ("a b", "c") and ps.name == "tiny" and ps.source is None
    assert ps.md5 == hashlib.md5(b"a b|||c").hexdigest()
    assert ps.sha256 == hashlib.sha256(b"a b|||c").hexdigest()
    assert ps.file_sha256 is None
    assert prompt_set(list(STANDARD_10)).md5 == STD_MD5
    assert prompt_set(("x",)).name == "custom"


@pytest.mark.parametrize(
    "bad, match",
    [
        ([], "empty"),
        ("just a string", "list of strings"),
        (None, "list of strings"),
        (["ok", ""], r"prompts\[1\]"),
        (["ok", "fine", "   "], r"prompts\[2\]"),
        ([3, "ok"], r"prompts\[0\].*int"),
        (["ok", None], r"prompts\[1\]"),
    ],
)
def test_prompt_set_rejects_bad_items(bad, match):
    with pytest.raises(TLSpecError, match=match):
        prompt_set(bad)


def test_public_api():
    assert sorted(P.__all__) == sorted(
        ["E06_SET", "E06_TEXTS", "STANDARD_10", "STANDARD_10_SET", "PromptSet", "as_prompt_set",
         "load_prompts", "prompt_set"]
    )
    for name in P.__all__:
        assert hasattr(P, name)


def test_as_prompt_set_recognises_the_protocol_sets():
    assert P.as_prompt_set(list(P.STANDARD_10)) is P.STANDARD_10_SET
    assert P.as_prompt_set(P.E06_TEXTS) is P.E06_SET
    assert P.as_prompt_set(P.STANDARD_10_SET) is P.STANDARD_10_SET
    own = P.as_prompt_set(["one prompt", "two prompts"])
    assert own.name == "custom" and own.file_sha256 is None
