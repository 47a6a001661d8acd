"""Every node has a help page (web/docs/<node id>.md) whose Inputs table documents each of the node's
inputs and names no input the node does not have."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

DOCS = REPO / "web" / "docs"


def documented_inputs(page: str) -> set[str]:
    """The input names in the first cell of each row of the page's '## Inputs' section."""
    section = re.search(r"^## Inputs\n(.*?)(?=^## |\Z)", page, re.S | re.M)
    assert section, "no '## Inputs' section"
    names: set[str] = set()
    for line in section.group(1).splitlines():
        if line.startswith("|"):
            names |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line.split("|")[1]))
    return names


def test_documented_inputs_parser():
    page = (
        "# X\n\n## Inputs\n\n| name | what |\n|---|---|\n| `a`, `b` | uses `c` |\n\n## Outputs\n| `d` | |\n"
    )
    assert documented_inputs(page) == {"a", "b"}


def test_every_node_input_is_documented_and_no_other(comfy_nodes):
    problems = []
    for cls in comfy_nodes.NODES:
        schema = cls.GET_SCHEMA()
        path = DOCS / f"{schema.node_id}.md"
        if not path.is_file():
            problems.append(f"{schema.node_id}: no help page {path.relative_to(REPO)}")
            continue
        documented = documented_inputs(path.read_text())
        actual = {i.id for i in schema.inputs}
        if missing := sorted(actual - documented):
            problems.append(f"{path.name}: inputs not documented: {missing}")
        if unknown := sorted(documented - actual):
            problems.append(f"{path.name}: documents inputs the node does not have: {unknown}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_help_page_belongs_to_a_node(comfy_nodes, page):
    assert page[:-3] in {cls.GET_SCHEMA().node_id for cls in comfy_nodes.NODES}
