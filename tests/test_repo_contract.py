"""The repository carries its own contract: no tracked file points outside the repository, every
Markdown file it names is in it, and every ``SPEC §N`` citation names a section of docs/spec.md.

A user who clones the repository has nothing else: a path of a development machine, or a
citation of a section that was renumbered, is a dead end for them.
"""
from __future__ import annotations

import posixpath
import re
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = "docs/spec.md"

# Written in two pieces so that this file does not match its own rules.
MACHINE_ROOT = "/wo" "rk/"  # where development checkouts and their shared files live
OUTSIDE_FOLDER = "sha" "red"  # the development machine's folder next to the checkouts
UP = "../"

# A path-like word: what sits between spaces, quotes, brackets and separators of a line.
_WORD = re.compile(r"[^\s'\"`()<>\[\]{},;=|]+")
_PATH_CHAR = re.compile(r"[\w.~-]")
_MARKDOWN_FILE = re.compile(r"(?:^|/)([\w.-]+\.md)$")
# "SPEC §2", "SPEC §2.4", "SPEC §2, §4 and §6", "docs/spec.md §3", "[spec.md](spec.md) §3"
_CITATION = re.compile(r"(?:\bSPEC|spec\.md\)?)(?:'s)?\s*(§\s*\d+(?:\.\d+)*(?:\s*(?:,|and|or|&|/)\s*§\s*\d+(?:\.\d+)*)*)")
_SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


@lru_cache(maxsize=1)
def tracked_texts() -> dict[str, str]:
    """Every text file git tracks or would track (not ignored), path relative to the root
    (POSIX), and its content: a new file is checked before it is committed."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, check=True, capture_output=True)
    texts = {}
    for name in listing.stdout.decode("utf-8").split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def _inside(base: str, relative: str) -> bool:
    """Whether ``relative``, read from directory ``base`` of the repository, stays in it."""
    joined = posixpath.normpath(posixpath.join(base, relative))
    return joined != ".." and not joined.startswith("../")


def outside_references(name: str, line: str) -> list[str]:
    """The words of one line of file ``name`` that point outside the repository.

    - an absolute path under the machine root (a URL whose path starts the same way is fine);
    - a relative path whose ``..`` steps leave the repository from the file's directory;
    - a path through a folder named like the development machine's shared folder that the
      repository does not have (read from the root or from the file's directory).
    """
    base = posixpath.dirname(name)
    found = []
    for match in _WORD.finditer(line):
        word = match.group().lstrip("*").rstrip(".,:;!?*")
        if word.startswith("file://"):
            word = word[len("file://"):]
        elif "://" in word:
            continue
        at = word.find(MACHINE_ROOT)
        while at >= 0:
            if at == 0 or not _PATH_CHAR.match(word[at - 1]):
                found.append(word)
                break
            at = word.find(MACHINE_ROOT, at + 1)
        if word.startswith("../") and not _inside(base, word):
            found.append(word)
        parts = word.split("/")
        for index, part in enumerate(parts[:-1]):
            if part != OUTSIDE_FOLDER:
                continue
            folder = "/".join(parts[:index + 1])
            if word.startswith("/") or not any(
                    _inside(anchor, folder) and (ROOT / posixpath.join(anchor, folder)).is_dir()
                    for anchor in ("", base)):
                found.append(word)
                break
    return sorted(set(found))


def test_no_tracked_file_refers_to_a_path_outside_the_repository() -> None:
    problems = [f"{name}:{number}: {word}"
                for name, text in tracked_texts().items()
                for number, line in enumerate(text.splitlines(), 1)
                for word in outside_references(name, line)]
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


def test_the_outside_path_rule_flags_what_it_must_and_spares_in_repo_words() -> None:
    flagged = [f"{MACHINE_ROOT}{OUTSIDE_FOLDER}/notes.txt", f"({MACHINE_ROOT}main/.venv)",
               f"--data-dir={MACHINE_ROOT}x", f"file://{MACHINE_ROOT}x",
               f"{UP * 3}{OUTSIDE_FOLDER}/data/x.csv", f"{OUTSIDE_FOLDER}/data/README.md",
               f"/opt/{OUTSIDE_FOLDER}/x", UP * 3 + "elsewhere/x"]
    for word in flagged:
        assert outside_references("ingest/nodejs/README.md", f"see {word} here"), word
    spared = [f"https://example.com{MACHINE_ROOT}x", f"teamwork{MACHINE_ROOT[:-1]}", UP * 2 + "pipelines/sample",
              f"{OUTSIDE_FOLDER} state", f"a {OUTSIDE_FOLDER} wire format", f"tests/{OUTSIDE_FOLDER}"]
    for word in spared:
        assert not outside_references("ingest/nodejs/README.md", f"see {word} here"), word
    assert not outside_references("ingest/nodejs/test/x.test.js", f"new URL('{UP * 3}', import.meta.url)")


def test_every_markdown_file_named_in_the_repository_is_in_it() -> None:
    texts = tracked_texts()
    present = {posixpath.basename(name) for name in texts} | {p.name for p in ROOT.glob("**/*.md")
                                                              if ".venv" not in p.parts
                                                              and "node_modules" not in p.parts}
    missing = []
    for name, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            for match in _WORD.finditer(line):
                word = match.group().split("#")[0].rstrip(".,:;!?*")
                markdown = _MARKDOWN_FILE.search(word)
                if markdown and "://" not in word and markdown.group(1) not in present:
                    missing.append(f"{name}:{number}: {word}")
    assert not missing, "Markdown files named but not in the repository:\n" + "\n".join(missing)


def spec_sections() -> set[str]:
    """The numbers of docs/spec.md's headings: "2", "2.4", ..."""
    return set(_HEADING.findall(tracked_texts()[SPEC_PATH]))


def spec_citations() -> list[tuple[str, int, str]]:
    """(file, line, section) of every ``SPEC §N`` citation, and of every ``§N`` in the spec."""
    citations = []
    for name, text in tracked_texts().items():
        for number, line in enumerate(text.splitlines(), 1):
            chains = [line] if name == SPEC_PATH else [m.group(1) for m in _CITATION.finditer(line)]
            citations += [(name, number, section) for chain in chains
                          for section in _SECTION.findall(chain)]
    return citations


def test_every_spec_citation_names_a_section_of_the_spec() -> None:
    sections = spec_sections()
    assert {"1", "2", "3", "4", "5", "6", "7"} <= sections
    citations = spec_citations()
    cited_from = {name for name, _, _ in citations}
    assert {"ingest/message.py", "transforms/features.py", "transforms/schemas.py"} <= cited_from
    dangling = [f"{name}:{number}: §{section}" for name, number, section in citations
                if section not in sections]
    assert not dangling, f"citations of sections {SPEC_PATH} does not have:\n" + "\n".join(dangling)


def test_a_citation_chain_is_read_whole() -> None:
    chains = [m.group(1) for m in _CITATION.finditer("(SPEC §2, §4 and §6.5) and SPEC's §3.2; spec.md §7. [spec.md](spec.md) §7.1")]
    assert [_SECTION.findall(chain) for chain in chains] == [["2", "4", "6.5"], ["3.2"], ["7"], ["7.1"]]
