"""The user guide and the maintainer documents stay short, and their links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))

#: Line budgets: the README is a user guide, the starter's page a summary (lab notes stay in git).
MAX_LINES = {"README.md": 300, "docs/starter_model.md": 150}

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _prose(markdown: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_SPAN.sub(lambda m: m.group(0)[1:-1], heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)
    return {_anchor(h) for h in headings}


@pytest.mark.parametrize("name, limit", sorted(MAX_LINES.items()))
def test_documents_stay_within_their_line_budget(name, limit):
    lines = (PROJECT_ROOT / name).read_text(encoding="utf-8").splitlines()
    assert len(lines) <= limit, f"{name} has {len(lines)} lines; keep it at most {limit}"


def test_readme_starts_with_the_two_commands():
    """Users and CI rely on `make run` and `make test` being the first thing the README shows."""
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:15])
    assert "make run" in head and "make test" in head


@pytest.mark.parametrize("document", [README, *DOCS],
                         ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(document):
    broken = []
    for target in LINK.findall(_prose(document.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{document.relative_to(PROJECT_ROOT)}: broken links: {broken}"


def test_the_docs_folder_holds_the_starter_page_and_the_reliability_notes():
    assert {p.name for p in DOCS} >= {"starter_model.md", "reliability.md"}
    assert not (PROJECT_ROOT / "RELIABILITY.md").exists(), "reliability notes: docs/reliability.md"
