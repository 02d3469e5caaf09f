"""Every relative link in the README, docs/ and the studies' pages resolves: to a file or folder that
exists, and where it names an anchor (`page.md#heading`), to a heading of that page as GitHub slugs it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*```")
DATED = re.compile(r"^\d{4}-\d{2}-\d{2}-[a-z0-9-]+\.md$")  # docs/journal/<date>-<subject>.md
ISSUE = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
MODULE = re.compile(r"python -m ((?:spikelab|study|studies|stages|benchmarks|team|tools)(?:\.\w+)*)")


def pages() -> list[Path]:
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").rglob("*.md")),
        *sorted((REPO / "studies").glob("*.md")),
        *sorted((REPO / "studies").glob("*/*.md")),
    ]


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks (a link-like string in code is not a link)."""
    lines, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            found.add(base if count == 0 else f"{base}-{count}")
            seen[base] = count + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in prose_lines(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:: not checked offline
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    return broken


def test_slugs_follow_githubs_rule():
    assert slug("Can a spike be seen coming? Two predictors from the optimizer's state, checked") == (
        "can-a-spike-be-seen-coming-two-predictors-from-the-optimizers-state-checked"
    )
    assert slug("`loss.form`: the seed's **question**") == "lossform-the-seeds-question"


def test_a_broken_link_is_found(tmp_path):
    page = REPO / "docs" / "_link_check_probe.md"
    page.write_text("# Here\n[ok](#here) [bad](#there) [gone](no_such_page.md)\n```\n[code](not_a_link.md)\n```\n")
    try:
        assert broken_links(page) == [
            "docs/_link_check_probe.md: #there (no such heading)",
            "docs/_link_check_probe.md: no_such_page.md (no such file)",
        ]
    finally:
        page.unlink()


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_every_link_resolves(page):
    assert broken_links(page) == []


def guides() -> list[Path]:
    """The pages that say how things are now; docs/journal/ records how they were, dated, and a
    pre-registration stays as it was committed."""
    return [
        page for page in pages() if "journal" not in page.relative_to(REPO).parts and page.name != "PREREGISTRATION.md"
    ]


def test_journal_entries_carry_their_date():
    undated = [page.name for page in (REPO / "docs" / "journal").glob("*.md") if not DATED.match(page.name)]
    assert undated == []


def test_guides_name_no_issue_of_this_project():
    """An issue number is a commit's or the journal's provenance; a guide says what is, not which
    issue asked for it. Another project's issue (treeverse/dvc-task issue 73) is a reference."""

    def ours(line: str, start: int) -> bool:
        before = line[:start].split()
        return not (before and "/" in before[-1])  # "owner/repo issue N" is another project's

    found = [
        f"{page.relative_to(REPO)}: {line.strip()[:80]}"
        for page in guides()
        for line in prose_lines(page.read_text())
        for match in ISSUE.finditer(line)
        if ours(line, match.start())
    ]
    assert found == []


def test_every_command_a_guide_gives_names_a_module_that_exists():
    """`python -m study.doctor_check` in a guide after the module moved is a command that fails."""
    missing = [
        f"{page.relative_to(REPO)}: python -m {module}"
        for page in guides()
        for module in MODULE.findall(page.read_text())
        if not any((REPO / (module.replace(".", "/") + suffix)).is_file() for suffix in (".py", "/__init__.py"))
    ]
    assert missing == []


def test_make_alone_lists_every_target_with_a_line_of_help():
    import subprocess

    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    undocumented = {target for target in targets if not re.search(rf"^{target}:.*## \S", makefile, re.MULTILINE)}
    assert undocumented == set()
    listed = subprocess.run(["make", "-s", "-C", str(REPO)], capture_output=True, text=True, check=True).stdout
    listed_targets, _, listed_studies = listed.partition("\n\n")
    assert {line.split()[0] for line in listed_targets.splitlines() if line.strip()} == targets
    # then every study folder, with its README.md's title (`# <name>: <its question>`, the name dropped)
    folders = {
        path.parent.name for name in ("README.md", "sweep.yaml") for path in (REPO / "studies").glob(f"*/{name}")
    }
    rows = [line.split(maxsplit=1) for line in listed_studies.splitlines()[1:] if line.strip()]
    assert {row[0] for row in rows} == folders
    for name, title in rows:
        readme = REPO / "studies" / name / "README.md"
        if readme.exists():
            first = readme.read_text().splitlines()[0]
            assert first in (f"# {name}: {title}", f"# {title}"), (name, first)
