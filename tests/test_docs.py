"""README and docs/ link only to files that exist; the README needs nothing beside the repo."""

import glob
import os
import re

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO_ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(REPO_ROOT, "docs", "*.md"))
)
# [text](target) and ![alt](target), without web links and in-page anchors.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page):
    with open(page, encoding="utf-8") as f:
        targets = LINK.findall(f.read())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://|#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_links_point_to_files_in_the_repository(page):
    missing = [
        target
        for target in _relative_links(page)
        if not os.path.exists(os.path.join(os.path.dirname(page), target))
    ]
    assert not missing, f"{os.path.relpath(page, REPO_ROOT)} links to missing files: {missing}"


def test_readme_needs_nothing_beside_the_repository():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "../" not in readme
    assert "shared/data" not in readme
