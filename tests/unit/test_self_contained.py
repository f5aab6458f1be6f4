"""The repository is self-contained: no tracked file reads or names anything outside it.

The wire contract is ``docs/protocol.md``, the fixtures are under ``tests/fixtures``, the
benchmark baseline is ``bench/floor_relay.py``.  A path into a sibling checkout or an
absolute path of the machine the project was written on would make a test, a benchmark
or a doc depend on files a user of the repository does not have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()

#: Text that points outside the repository.
# (assembled from parts, so this file does not itself name the paths it looks for)
_SH, _WK = "sha" + "red", "wo" + "rk"
OUTSIDE = (f"../{_SH}", f"/{_WK}/", f"{_SH}/docs/", f"{_SH}/fixtures/", f"{_SH}/bench/")
#: A Markdown document named in a file: ``protocol.md``, ``docs/internals.md`` …
_MD_NAME = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    return [name for name in out.decode("utf-8").split("\0") if name]


def tracked_texts() -> list[tuple[str, str]]:
    """(path, text) of every tracked text file, this one left out (it names the patterns)."""
    texts = []
    for name in tracked_files():
        path = REPO / name
        if name == SELF or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary (the UI screenshot)
            continue
        texts.append((name, data.decode("utf-8", "replace")))
    return texts


def outside_references(texts: list[tuple[str, str]]) -> list[str]:
    found = []
    for name, text in texts:
        for number, line in enumerate(text.splitlines(), 1):
            for pattern in OUTSIDE:
                if pattern in line:
                    found.append(f"{name}:{number}: {pattern!r} in {line.strip()[:100]!r}")
    return found


def missing_documents(texts: list[tuple[str, str]], files: list[str]) -> list[str]:
    present = {Path(f).name for f in files if f.endswith(".md")}
    found = []
    for name, text in texts:
        for number, line in enumerate(text.splitlines(), 1):
            for doc in _MD_NAME.findall(line):
                if Path(doc).name not in present:
                    found.append(f"{name}:{number}: {doc} is not in the repository")
    return found


def test_no_tracked_file_points_outside_the_repository():
    assert outside_references(tracked_texts()) == []


def test_every_document_named_is_in_the_repository():
    files = tracked_files()
    assert missing_documents(tracked_texts(), files) == []


def test_the_checks_find_what_they_look_for():
    texts = [("a.py", f"FLOOR = '/{_WK}/{_SH}/bench/floor_relay.py'\n"),
             ("b.md", f"The wire contract is `../{_SH}/docs/protocol.md`; see design.md §6.\n")]
    assert [r.split(":")[0:2] for r in outside_references(texts)] == [
        ["a.py", "1"], ["a.py", "1"], ["b.md", "1"], ["b.md", "1"]]
    assert missing_documents(texts, ["docs/protocol.md"]) == [
        "b.md:1: design.md is not in the repository"]
