"""``experiments/zoo40/scorer_settings.py``: every setting is one valid change of the shipped scorer."""

from __future__ import annotations

import sys

import pytest

from spider import paths
from spider.config import compose

sys.path.insert(0, str(paths.REPO_ROOT / "experiments" / "zoo40"))

import scorer_settings  # noqa: E402

CHANGED = [s for s in scorer_settings.SETTINGS if s[1]]


def test_the_shipped_setting_comes_first_and_the_others_are_distinct():
    assert scorer_settings.SETTINGS[0][1] == {}
    assert len({repr(sorted(o.items())) for _, o in scorer_settings.SETTINGS}) == len(scorer_settings.SETTINGS)


@pytest.mark.parametrize("name,overrides", CHANGED, ids=[n for n, _ in CHANGED])
def test_each_setting_changes_one_existing_field_of_the_shipped_config(name, overrides):
    shipped = compose(["data=minizoo"])
    changed = compose(["data=minizoo", *(f"{k}={v}" for k, v in overrides.items())])  # unknown keys raise
    assert len(overrides) == 1
    (key, value), = overrides.items()
    section, field = key.split(".")
    assert shipped[section][field] != value, f"{name} is the shipped value"
    assert changed[section][field] == value
