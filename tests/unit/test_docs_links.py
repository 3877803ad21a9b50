"""The documentation's links and commands point at files that exist.

Findings move between README.md and ``experiments/<zoo>/findings.md``: a link or a ``python
experiments/...`` command left pointing at an old place would send a reader nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "experiments").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # [text](target) and [text](target#anchor)
SCRIPT = re.compile(r"python (experiments/[\w/.-]+\.py)")


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # skip http:, mailto:


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    missing = [t for t in _relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)}: links to missing files {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_experiment_command_names_a_script(doc):
    missing = sorted({s for s in SCRIPT.findall(doc.read_text()) if not (ROOT / s).is_file()})
    assert not missing, f"{doc.relative_to(ROOT)}: commands run missing scripts {missing}"


def test_the_checks_catch_a_dead_link(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("[ok](x.md) [gone](nowhere.md) [web](https://example.org/a.md)")
    assert [t for t in _relative_links(doc.read_text()) if not (doc.parent / t).exists()] == ["nowhere.md"]
    assert SCRIPT.findall("run `python experiments/zoo40/gone.py --out x`") == ["experiments/zoo40/gone.py"]
