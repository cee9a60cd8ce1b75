"""The top-level README is a README: short, its results table generated from the committed reports, its links and
those of docs/ alive, and the test command it names the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ablations.report.build import README_END, README_START, readme_results

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_results_block_is_what_the_committed_reports_give():
    text = README.read_text()
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    block = text.split(README_START, 1)[1].split(README_END, 1)[0]
    assert block == "\n" + readme_results(ROOT / "reports", "reports") + "\n"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files {broken}"


def test_docs_are_linked_from_the_readme():
    text = README.read_text()
    unlinked = [p.name for p in PAGES[1:] if f"(docs/{p.name}" not in text]
    assert not unlinked


def test_readme_names_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("make ")]
    assert commands == ["make test"]
    assert re.search(r"^make test\b", README.read_text(), flags=re.M)
