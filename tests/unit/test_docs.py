"""The repository explains itself: the README's links resolve inside it, nothing points out."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_links_the_architecture_operations_and_domain_guides():
    readme = (ROOT / "README.md").read_text()

    for guide in ("docs/architecture.md", "docs/operations.md", "docs/domains.md"):
        assert f"]({guide})" in readme, guide


def test_every_relative_link_in_the_docs_resolves_inside_the_repository():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if "://" in target:
                continue
            resolved = (doc.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")

    assert broken == []


def test_no_document_points_outside_the_repository():
    outside = [str(doc.relative_to(ROOT)) for doc in DOCS
               if re.search(r"\.\./shared|/work/|DESIGN\.md", doc.read_text())]

    assert outside == []
