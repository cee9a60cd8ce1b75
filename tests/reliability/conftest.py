"""The fault suite: every test here is marked ``reliability`` and records one row of ``reports/reliability.md``
(``make reliability``): the fault injected, what happened, what was kept, all measured by the test itself. A row
is written only when the test ran; a failed test writes its row as FAILED."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_sweep import postgres  # noqa: F401  (the sweep tests' fixture, shared; workdir is tests/conftest.py's)

ROWS = "ABLATIONS_RELIABILITY_ROWS"  # a JSON-lines file the rows are appended to (make reliability sets it)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report
    return report


_OUTCOME = pytest.StashKey()


class Row:
    def __init__(self, test: str) -> None:
        self.test, self.fault, self.happened, self.kept = test, "", "", ""

    def __call__(self, *, fault: str, happened: str, kept: str) -> None:
        self.fault, self.happened, self.kept = fault, happened, kept


@pytest.fixture
def row(request):
    """Fill in with ``row(fault=…, happened=…, kept=…)`` from what the test measured."""
    entry = Row(request.node.nodeid.split("::", 1)[-1])
    yield entry
    path = os.environ.get(ROWS)
    report = request.node.stash.get(_OUTCOME, None)
    if not path or report is None:
        return
    outcome = "passed" if report.passed else "FAILED"
    record = {"test": entry.test, "fault": entry.fault, "happened": entry.happened, "kept": entry.kept}
    base = request.node.funcargs.get("tmp_path")
    if base is not None:  # the page names folders relative to the test's own, so it is the same on every run
        record = {k: v.replace(f"{base}/", "").replace(str(base), ".") for k, v in record.items()}
    record["outcome"] = outcome
    if not report.passed:
        record["happened"] = (entry.happened + " — " if entry.happened else "") + report.longreprtext.splitlines()[-1]
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")
