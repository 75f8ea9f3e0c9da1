"""The README stays a page a user reads (what it is, two commands, own scene, pipelines, results),
and everything it and the docs site link to exists."""

import re

from tests.conftest import REPO


def test_the_readme_is_short_and_links_only_to_what_exists():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for needed in ("make run", "make test", "## Running on your own scene", "## Pipelines", "## Results"):
        assert needed in text
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)", text)
    assert targets and all((REPO / t).is_file() for t in targets), [t for t in targets if not (REPO / t).is_file()]


def test_every_docs_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages and [p for p in pages if p not in nav] == []
