"""The repository stands alone: README.md and docs/*.md link only to files that
exist inside it (a clone has no ../shared/ beside it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and <a href="target">; images too.
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|href=\"([^\"]+)\"")


def local_targets(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code is not a link
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same file
        yield target.split("#", 1)[0]


def test_docs_link_only_to_files_inside_the_repository():
    problems = []
    for doc in DOCS:
        for target in local_targets(doc):
            resolved = (doc.parent / target).resolve()
            name = f"{doc.relative_to(ROOT)} -> {target}"
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{name}: outside the repository")
            elif not resolved.exists():
                problems.append(f"{name}: missing")
    assert not problems, "\n".join(problems)


def test_no_doc_names_a_path_outside_the_repository():
    """Not only links: a `../shared/CONTRACT.md` in backquotes sends a reader
    to a file a clone does not have just as well."""
    mentions = [
        f"{doc.relative_to(ROOT)}: {m.group(0)}"
        for doc in DOCS
        for m in re.finditer(r"\.\./[\w./-]+", doc.read_text())
        if not (doc.parent / m.group(0)).resolve().is_relative_to(ROOT)
    ]
    assert not mentions, "\n".join(mentions)
