"""Every citation of the design documents resolves: `docs/design.md §N` names a section heading of docs/design.md,
`docs/seed-conventions.md §N` or `§N.M` a section, a sub-section or a numbered item of a section of
docs/seed-conventions.md; and nothing cites a design document the repository does not hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = {
    "docs/design.md": ROOT / "docs" / "design.md",
    "docs/seed-conventions.md": ROOT / "docs" / "seed-conventions.md",
}
CITATION = re.compile(r"(docs/design\.md|docs/seed-conventions\.md) (§[0-9.]+(?:, §[0-9.]+)*)")
DANGLING = re.compile(r"\bDESIGN §|(?<!docs/)seed-conventions(?:\.md)? §")
"""Citations of documents outside the repository (the form the code used before the documents moved in)."""


def anchors(text: str) -> set[str]:
    """The section numbers a document offers: `## N.` and `### N.M` headings, and the numbered items of a section."""
    found, section = set(), None
    for line in text.splitlines():
        if heading := re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line):
            section = heading.group(1).split(".")[0]
            found.add(heading.group(1))
        elif (item := re.match(r"(\d+)\. ", line)) and section is not None:
            found.add(f"{section}.{item.group(1)}")
    return found


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    paths = [ROOT / name for name in listed.splitlines() if not name.startswith("zoo/")]
    return [p for p in paths if p.suffix in {".py", ".md", ".toml", ".json", ".txt", ".sh", ".cfg", ""} and p.is_file()]


@pytest.fixture(scope="module")
def citations() -> list[tuple[Path, str, str]]:
    found = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for match in CITATION.finditer(text):
            found += [(path, match.group(1), number.strip("§.")) for number in match.group(2).split(", ")]
    return found


def test_the_documents_are_in_the_repository_and_cited():
    assert all(path.is_file() for path in DOCS.values())


def test_every_citation_names_a_section_that_exists(citations):
    assert len(citations) > 40  # the package, the tests, the case files and the published expectations cite them
    offered = {name: anchors(path.read_text()) for name, path in DOCS.items()}
    missing = [
        f"{path.relative_to(ROOT)}: {doc} §{number}" for path, doc, number in citations if number not in offered[doc]
    ]
    assert not missing, missing


def test_no_citation_points_outside_the_repository():
    dangling = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if path.parent != ROOT / "docs" and DANGLING.search(path.read_text(errors="replace"))
    ]
    assert not dangling, dangling


def test_anchors_reads_headings_and_numbered_items():
    text = "## 2. Bugs\n1. one\n9. nine\n## 4. Stored\n### 4.4 T's scores\n- 5. not an item\n"
    assert anchors(text) == {"2", "2.1", "2.9", "4", "4.4"}


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
"""A Markdown link's target, without its fragment."""
CODE_SPAN = re.compile(r"`[^`\n]*`")
DOCS_NAMED = re.compile(r"\bdocs/[\w-]+\.md\b")
"""A mention of one of the documents in docs/, by path."""


def test_the_readme_and_docs_link_only_to_files_that_exist():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(CODE_SPAN.sub("", page.read_text())):  # `x[y](z)` in code is no link
            if not target.startswith(("http://", "https://")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, broken


def test_every_document_a_file_names_is_in_docs():
    named = {
        (str(path.relative_to(ROOT)), name)
        for path in tracked_text_files()
        for name in DOCS_NAMED.findall(path.read_text(errors="replace"))
    }
    missing = sorted(f"{where}: {name}" for where, name in named if not (ROOT / name).is_file())
    assert not missing, missing


def test_the_readme_maps_every_document():
    readme = (ROOT / "README.md").read_text()
    assert all(f"(docs/{page.name})" in readme for page in (ROOT / "docs").glob("*.md"))
