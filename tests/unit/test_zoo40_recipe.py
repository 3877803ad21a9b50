"""The bigger zoo's recipe (pure data: no shared data needed) and ``spider zoo info``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spider.errors import SpiderError
from spider.pipeline.pretrain import PretrainSpec, source_splits
from spider.pipeline.recipes import get_recipe, list_recipes
from spider.zoo import get_zoo_model_info, list_zoo_models
from spider.zoo.__main__ import main
from spider.zoo.domains import source_domain
from helpers.zoo_run_support import fake_data_dir


def _class_sets(recipe):
    """``{(source, stage_or_pool_id): set(classes)}`` for every view of the recipe."""
    views = [(p.source, "pool:" + p.id, p.classes) for p in recipe.pool]
    views += [(t.source, "val:" + t.id, t.classes) for t in recipe.val_targets]
    views += [(t.source, "test:" + t.id, t.classes) for t in recipe.targets]
    return views


def test_zoo40_meets_the_issue():
    recipe = get_recipe("zoo40")
    info = json.loads(_run(["info", "zoo40", "--json"]))
    assert info["ptms"] == len(recipe.ptm_ids()) >= 40
    assert info["source_domains"] >= 8 and info["pool"] >= 9
    assert info["test_targets"] >= 10 and info["val_targets"] >= 3
    assert len(recipe.real_ptms) >= 21
    families = {s.arch for s in recipe.pretrained}
    assert len(families) >= 6 and recipe.general.arch not in families
    # specialists (one source) and generalists (unions of several domains)
    domains = recipe.ptm_domains()
    assert any(len(domains[s.id]) >= 2 for s in recipe.pretrained)
    assert sum(len(s.sources) == 1 for s in recipe.pretrained) >= 10


@pytest.mark.parametrize("name", ["minizoo", "zoo40"])
def test_no_class_is_shared_between_pool_validation_and_test(name):
    recipe = get_recipe(name)
    views = _class_sets(recipe)
    for i, (source, name, classes) in enumerate(views):
        for other_source, other, other_classes in views[i + 1:]:
            if source == other_source:
                assert classes is not None and other_classes is not None, (name, other)
                assert not set(classes) & set(other_classes), (name, other)


@pytest.mark.parametrize("name", ["minizoo", "zoo40"])
def test_no_ptm_is_pretrained_on_a_target_class(name):
    recipe = get_recipe(name)
    target_classes: dict[str, set[int]] = {}
    for target in recipe.all_targets:
        target_classes.setdefault(target.source, set()).update(target.classes or ())
    for spec in (*recipe.pretrained, recipe.general):
        kept = dict(spec.source_classes)
        for source in set(spec.sources) & set(target_classes):
            assert source in kept and not set(kept[source]) & target_classes[source], (spec.id, source)


def test_zoo_info_lists_every_recipe_and_fails_in_one_line(capsys):
    infos = json.loads(_run(["info", "--json"]))
    assert [i["recipe"] for i in infos] == list_recipes() == ["minizoo", "tiny", "zoo40"]
    mini = next(i for i in infos if i["recipe"] == "minizoo")
    assert (mini["ptms"], mini["pool"], mini["val_targets"], mini["test_targets"]) == (20, 3, 8, 6)
    assert set(mini["names"]["ptms"]) == set(get_recipe("minizoo").ptm_ids())
    text = _run(["info", "minizoo"])
    assert "source domains (5)" in text and "test targets (6)" in text
    assert main(["info", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope" in err and "zoo40" in err


def test_every_zoo_model_has_a_source_domain():
    for name in list_zoo_models():
        assert source_domain(get_zoo_model_info(name).source)
    with pytest.raises(SpiderError, match="no domain"):
        source_domain("martian_postcards")


def test_source_classes_keep_and_relabel_only_those_classes(tmp_path):
    data = fake_data_dir(tmp_path / "data")
    grey = dict(in_chans=1, input_size=32, mean=(0.5,), std=(0.5,), epochs=1)
    whole = PretrainSpec("a", "test_vit", ("mnist",), **grey)
    some = PretrainSpec("b", "test_vit", ("mnist",), source_classes=(("mnist", (7, 2)),), **grey)
    train, held, classes = source_splits(some, data)
    assert classes == 2
    everything, _, _ = source_splits(whole, data)
    expected = np.isin(everything.labels[0], (7, 2)).sum()
    assert len(train.labels[0]) == expected and set(train.labels[0]) == {0, 1}
    assert set(held.labels[0]) <= {0, 1}
    # Unused, the field leaves the spec's identity (and its checkpoints) as it was.
    assert "source_classes" not in whole.to_dict() and "source_classes" in some.to_dict()
    assert whole.hash != some.hash
    with pytest.raises(SpiderError, match="not among its sources"):
        PretrainSpec("c", "test_vit", ("mnist",), source_classes=(("usps", (1,)),), **grey)
    bad = PretrainSpec("d", "test_vit", ("mnist",), source_classes=(("mnist", (3, 3)),), **grey)
    with pytest.raises(SpiderError, match="distinct class"):
        source_splits(bad, data)


def _run(argv):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()
