"""``spider.benchmark``: the library parts of the benchmark report, on hand-made inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spider.benchmark import charts, costs, forward, goals, markdown as md
from spider.benchmark.inputs import JsonCache, ReportError, Zoo
from spider.benchmark.methods import (FIRM_SHARE, MethodResult, ablation_entries, method_result, pick_winner, summary,
                                      win_shares)
from spider.benchmark.training import FitSpec, data_config_name

TRUTH = np.array([[90.0, 80.0, 70.0, 60.0],   # val0
                  [60.0, 70.0, 80.0, 90.0],   # test0
                  [90.0, 70.0, 80.0, 60.0]])  # test1


def fake_zoo(tmp_path, manifest=None) -> Zoo:
    return Zoo(tmp_path, manifest or {"recipe": "fake", "data": {}}, None, None, ["a", "b", "c", "d"],
               ["val0"], ["test0", "test1"], "general", TRUTH, None)


def row(zoo, name, preds, kind="spider", seconds=1.0, passes=0):
    return method_result(name, kind, zoo, preds, seconds=seconds, extract_seconds=seconds / 2,
                         score_seconds=seconds / 2, ptm_passes=passes, general_passes=1)


def test_json_cache_resumes_and_drops_values_of_another_identity(tmp_path):
    path = tmp_path / "cache.json"
    cache = JsonCache(path, {"models": ["a"]})
    cache.put("a|t", {"seconds": 1.5})
    assert JsonCache(path, {"models": ["a"]}).get("a|t") == {"seconds": 1.5}
    assert JsonCache(path, {"models": ["a", "b"]}).get("a|t") is None
    path.write_text("not json")
    assert JsonCache(path, {"models": ["a"]}).values == {}


def test_method_result_means_over_seeds_per_target_and_stage(tmp_path):
    zoo = fake_zoo(tmp_path)
    perfect, reverse = TRUTH.copy(), -TRUTH
    result = row(zoo, "m", [perfect, reverse], seconds=np.array([1.0, 2.0, 3.0]))
    assert result.per_target["wtau_paper"]["val0"] == pytest.approx(0.0)  # mean of +1 and -1
    assert result.spread["test"]["wtau_paper"] == pytest.approx(1.0)
    assert result.mean_seconds(zoo.test_targets) == pytest.approx(2.5)
    # A static prior: one [M] array scores every target the same way.
    prior = row(zoo, "p", [np.array([4.0, 3.0, 2.0, 1.0])], kind="prior")
    assert prior.per_target["wtau_paper"]["val0"] == pytest.approx(1.0)
    assert prior.per_target["wtau_paper"]["test0"] == pytest.approx(-1.0)
    assert prior.per_target["top1_regret"]["test0"] == pytest.approx(30.0)
    table = summary([result, prior], zoo.test_targets)
    assert set(table["p"]) == {"wtau_paper", "wtau_symmetric", "top1_regret", "seconds_per_target"}
    assert table["p"]["top1_regret"] == pytest.approx(15.0)


def test_the_winner_is_chosen_on_validation_targets_only(tmp_path):
    zoo = fake_zoo(tmp_path)
    good_on_val = row(zoo, "val-best", [np.stack([TRUTH[0], -TRUTH[1], -TRUTH[2]])])
    good_on_test = row(zoo, "test-best", [np.stack([-TRUTH[0], TRUTH[1], TRUTH[2]])])
    assert pick_winner({"test-best": good_on_test, "val-best": good_on_val}, zoo) == "val-best"
    no_val = Zoo(tmp_path, {}, None, None, zoo.models, [], zoo.test_targets, "general", TRUTH[1:], None)
    first = row(no_val, "paper", [-TRUTH[1:]])
    assert pick_winner({"paper": first, "other": row(no_val, "other", [TRUTH[1:]])}, no_val) == "paper"


def test_the_shipped_setting_stays_unless_validation_beats_it_firmly(tmp_path):
    val = ["v0", "v1", "v2", "v3"]
    zoo = Zoo(tmp_path, {}, None, None, ["a", "b"], val, ["t0"], "general", np.zeros((5, 2)), None)

    def scored(name, per_val):
        values = dict(zip(val, per_val)) | {"t0": 0.0}
        return MethodResult(name, "spider", {"wtau_paper": values}, {}, {}, {}, 0, 1)

    shipped = scored("shipped", [0.5, 0.5, 0.5, 0.5])
    lucky = scored("lucky", [0.9, 0.4, 0.4, 0.45])  # a better mean carried by one target
    firm = scored("firm", [0.6, 0.55, 0.6, 0.55])  # better on every target
    assert win_shares(np.array([lucky.values("wtau_paper", val), shipped.values("wtau_paper", val)]))[0] < FIRM_SHARE
    assert pick_winner({"shipped": shipped, "lucky": lucky}, zoo) == "lucky"  # the means alone
    assert pick_winner({"shipped": shipped, "lucky": lucky}, zoo, shipped="shipped") == "shipped"
    assert pick_winner({"shipped": shipped, "lucky": lucky, "firm": firm}, zoo, shipped="shipped") == "firm"
    assert pick_winner({"lucky": lucky, "firm": firm}, zoo, shipped="firm") == "firm"  # the shipped one is best


@pytest.mark.parametrize("recipe", ["minizoo", "zoo40"])
def test_shipped_settings_are_what_a_user_composes(tmp_path, recipe):
    from spider.benchmark.training import shipped_settings
    from spider.config import compose

    cfg = compose([f"data={data_config_name(recipe)}"])
    shipped = shipped_settings(fake_zoo(tmp_path, {"recipe": recipe, "data": {}}))
    assert shipped.setting == FitSpec("token", cfg.data.label_source, cfg.model.prior).setting
    assert (shipped.rank_prior, shipped.rank_prior_weight) == (cfg.data.rank_prior, cfg.data.rank_prior_weight)
    assert shipped.ensemble_rank_prior_weight == cfg.data.ensemble_rank_prior_weight
    assert shipped.history_tokens == cfg.data.history_tokens
    assert shipped.val_targets_as_tasks == cfg.data.val_targets_as_tasks
    assert shipped.token_start == ("at random" if recipe == "minizoo" else
                                   "from the fine-tuning history, std 0.2 (`data.history_tokens`)")


def test_goal_check_states_each_goal_plainly(tmp_path):
    zoo = fake_zoo(tmp_path)
    noisy = np.stack([TRUTH[0], TRUTH[1][[1, 0, 2, 3]], TRUTH[2][[1, 0, 2, 3]]])
    rows = {"ms": row(zoo, "ms", [TRUTH], seconds=0.001), "ms3": row(zoo, "ms3", [TRUTH], seconds=0.002, passes=3),
            "logme": row(zoo, "logme", [noisy], kind="baseline", seconds=10.0, passes=4),
            "prior": row(zoo, "prior", [np.array([1.0, 2.0, 3.0, 4.0])], kind="prior", seconds=0.0)}
    win = goals.goal_check(rows, "ms", "ms3", ["logme"], ["prior"], zoo.test_targets)
    assert win["all_met"] and win["best_forward"] == "logme" and win["best_prior"] == "prior"
    assert all("**met**" in line for line in win["text"])
    rows["logme"] = row(zoo, "logme", [TRUTH], kind="baseline", seconds=0.05, passes=4)
    lose = goals.goal_check(rows, "ms", "ms3", ["logme"], ["prior"], zoo.test_targets)
    assert not lose["goals"]["general_vs_forward"] and not lose["goals"]["time_fraction"]
    assert lose["goals"]["lowest_regret"]  # a tie with the lowest counts
    assert "**not met**" in lose["text"][0] and "**not met**" in lose["text"][3]
    # Goal 2 says what re-ranking adds to the general-token ranking, and when validation kept it unchanged.
    assert "+0.000 over the general-token ranking alone:" in lose["text"][1]
    kept = goals.goal_check(rows, "ms", "ms3", ["logme"], ["prior"], zoo.test_targets, rerank3_kept=True)
    assert "+0.000 over the general-token ranking alone (validation chose to keep that ranking)" in kept["text"][1]
    rows["ms3"] = row(zoo, "ms3", [noisy], seconds=0.002, passes=3)
    assert "-0.680 over the general-token ranking alone:" in goals.goal_check(
        rows, "ms", "ms3", ["logme"], ["prior"], zoo.test_targets)["text"][1]


def test_markdown_tables(tmp_path):
    zoo = fake_zoo(tmp_path)
    rows = [row(zoo, "m", [TRUTH, -TRUTH]), row(zoo, "copeland", [TRUTH], kind="aggregate", seconds=4.0, passes=4)]
    text = md.metric_table(rows, zoo.test_targets, "wtau_paper", "test")
    assert text.splitlines()[0] == "| method | test0 | test1 | **mean** |"
    assert "| m | +0.000 | +0.000 | **+0.000 ± 1.000** |" in text
    cost = md.cost_table(rows, zoo.test_targets, rows[1])
    assert "| copeland | 4 | 1 | 2.00 s | 2.00 s | 4.00 s | 100.00% |" in cost
    entries = [{"setting": "copeland", "winner": False, "seeds": 3, "val": {"wtau_paper": 0.1, "wtau_symmetric": 0.2,
                "top1_regret": 3.0}, "val_std": {}, "test": None},
               {"setting": "finetune", "winner": True, "seeds": 3, "val": {"wtau_paper": 0.3, "wtau_symmetric": 0.2,
                "top1_regret": 1.0}, "val_std": {"wtau_paper": 0.01}, "val_win_share": 0.625,
                "test": {"wtau_paper": 0.25}}]
    ablation = md.ablation_table(entries)
    assert "| copeland | +0.100 | +0.200 | 3.00 |  | (not looked at) | 3 |" in ablation
    assert "| finetune **(chosen)** | +0.300 ± 0.010 | +0.200 | 1.00 | 62 % | +0.250 | 3 |" in ablation
    assert md.fmt(math.nan) == "n/a" and md.fmt_seconds(0.0123) == "12.3 ms"


def test_win_shares_measure_how_firmly_the_targets_decide():
    firm = win_shares(np.array([[0.9, 0.8, 0.7, 0.9], [0.1, 0.2, 0.3, 0.1]]))
    np.testing.assert_allclose(firm, [1.0, 0.0])
    tied = win_shares(np.array([[0.5, 0.6], [0.5, 0.6]]))
    np.testing.assert_allclose(tied, [0.5, 0.5])
    # one target in four carries the better mean: most resamples still pick it, far from all
    scores = np.array([[0.9, 0.5, 0.5, 0.5], [0.6, 0.55, 0.55, 0.55]])
    shares = win_shares(scores)
    assert math.isclose(shares.sum(), 1.0) and 0.5 < shares[0] < 0.9
    np.testing.assert_array_equal(shares, win_shares(scores))  # seeded: the report does not move
    with pytest.raises(ValueError, match="finite"):
        win_shares(np.array([[0.1, math.nan]]))


def test_ablation_entries_show_test_of_the_winner_only(tmp_path):
    zoo = fake_zoo(tmp_path)
    rows = [row(zoo, "good", [TRUTH]), row(zoo, "bad", [-TRUTH])]
    entries = ablation_entries(rows, pick_winner({r.name: r for r in rows}, zoo), zoo, 1)
    assert [(e["setting"], e["winner"], e["val_win_share"]) for e in entries] == [("good", True, 1.0),
                                                                                   ("bad", False, 0.0)]
    assert entries[0]["test"] is not None and entries[1]["test"] is None


def test_git_commit_names_uncommitted_changes_to_code_and_shipped_configs(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for folder in ("spider", "configs", "notes"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.txt").write_text("x")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "empty")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "files")
    head = md.git_commit(tmp_path)
    assert len(head) == 40 and "uncommitted" not in head
    (tmp_path / "notes" / "a.txt").write_text("y")  # outside what the numbers depend on
    assert md.git_commit(tmp_path) == head
    (tmp_path / "configs" / "a.txt").write_text("y")  # a shipped config changes the numbers
    assert md.git_commit(tmp_path) == f"{head} plus uncommitted changes to configs/a.txt"


def test_build_costs_and_bank_runs(tmp_path):
    runs = tmp_path / "bank" / "runs"
    for task, model, seconds in (("task0000", "a", 1.0), ("task0000", "b", 3.0), ("task0001", "a", 2.0)):
        (runs / task / model).mkdir(parents=True, exist_ok=True)
        (runs / task / model / "lr0.003_seed0.json").write_text(json.dumps({"seconds": seconds, "test_accuracy": 50.0}))
    (runs / "task0001" / "a" / "broken.json").write_text("{")
    stages = [{"name": "bank", "computed": 3, "reused": 0, "wall_seconds": 6.5, "cpu_seconds": 6.0, "note": ""}]
    zoo = fake_zoo(tmp_path, {"recipe": "fake", "data": {"finetune_bank": str(tmp_path / "bank")},
                              "last_build": stages})
    assert costs.build_stages(zoo) == stages
    bank = costs.bank_runs(zoo)
    assert (bank["runs"], bank["tasks"], bank["seconds"], bank["seconds_per_run"]) == (3, 2, 6.0, 2.0)
    text = md.build_cost_table(stages, bank)
    assert "| bank | 3 | 0 | 6.50 s | 6.00 s |  |" in text and "| bank runs (their JSON files) | 3 | 2 tasks |" in text
    assert costs.bank_runs(fake_zoo(tmp_path))["runs"] == 0


def test_seed_agreement_compares_two_seeds_at_each_selected_lr(tmp_path):
    runs, details = tmp_path / "runs", tmp_path / "details.csv"
    rows = ["dataset,model,accuracy,accuracy_std,best_lr,val_accuracy,runs,in_domain"]

    def run(target, model, lr, seed, accuracy):
        (runs / target / model).mkdir(parents=True, exist_ok=True)
        (runs / target / model / f"lr{lr:g}_seed{seed}.json").write_text(json.dumps({"test_accuracy": accuracy}))

    # t0: seed 1 ranks like seed 0 at the selected lr; t1: seed 1 reverses it; t2: a run is missing
    for target, model, lr, seed0, seed1 in (("t0", "a", 3e-3, 90, 91), ("t0", "b", 1e-3, 80, 85), ("t0", "c", 3e-3, 70, 60),
                                            ("t1", "a", 3e-3, 90, 60), ("t1", "b", 3e-3, 80, 70), ("t1", "c", 3e-3, 70, 80),
                                            ("t2", "a", 3e-3, 90, 60), ("t2", "b", 3e-3, 80, None)):
        rows.append(f"{target},{model},0,0,{lr:g},0,4,0")
        run(target, model, lr, 0, seed0)
        if seed1 is not None:
            run(target, model, lr, 1, seed1)
        run(target, model, 0.5, 1, 100 - seed0)  # a learning rate that was not selected: ignored
    details.write_text("\n".join(rows) + "\n")
    out = costs.seed_agreement(runs, details, (0, 1))
    assert set(out) == {"t0", "t1", "mean"}
    assert out["t0"] == pytest.approx(1.0) and out["t1"] < 0
    assert out["mean"] == pytest.approx((out["t0"] + out["t1"]) / 2)
    assert costs.seed_agreement(runs, details, (0,)) == {}
    assert costs.seed_agreement(runs, tmp_path / "absent.csv", (0, 1)) == {}


def test_forward_helpers():
    names = forward.applicable_baselines()
    assert {"logme", "leep", "nce", "hscore", "gbc", "transrate", "sfda", "lfc", "nleep", "pactran_dir"} <= set(names)
    scores = {"x": np.array([[3.0, 1.0, 2.0]]), "y": np.array([[2.0, 1.0, 3.0]])}
    agg, seconds = forward.copeland_scores(scores, ["x", "y"])
    assert agg.shape == (1, 3) and seconds.shape == (1,)
    assert int(np.argmin(agg[0])) == 1  # last in both members' rankings


def test_rerank_ceiling_orders_the_top_k_by_the_truth_and_leaves_the_rest(tmp_path):
    """The ceiling of top-k re-ranking: the main ranking's top k take their true order, the others
    keep their places, so k = every PTM is the truth itself and a smaller k can only help."""
    zoo = fake_zoo(tmp_path)
    reverse = -TRUTH  # the worst possible ranking of every target
    main = row(zoo, "ms", [reverse, reverse + 0.0])
    ceiling = forward.rerank_ceiling(zoo, main)
    assert [c["k"] for c in ceiling] == [0, *forward.CEILING_KS]
    assert ceiling[0]["val"]["wtau_paper"] == pytest.approx(main.mean("wtau_paper", zoo.val_targets))
    # 4 PTMs: a k >= 4 re-orders all of them into the truth; k = 3 leaves the true best last
    assert all(c["val"]["wtau_paper"] == pytest.approx(1.0) and c["test"]["top1_regret"] == 0.0
               for c in ceiling if c["k"] >= 4)
    three = next(c for c in ceiling if c["k"] == 3)
    assert three["val"]["top1_regret"] == 10.0 and ceiling[0]["val"]["wtau_paper"] < three["val"]["wtau_paper"] < 1
    # top 2 of [d, c, b, a] on val0 (truth a > b > c > d): c, d swap; a, b stay last
    ranks, ran = forward.fused_ranking(reverse, TRUTH, 2, 1.0)
    assert ran[0].tolist() == [False, False, True, True]
    assert np.argsort(-ranks[0]).tolist() == [2, 3, 1, 0]
    lines = forward.rerank_section([], "ms3", ceiling)
    assert "## Ceiling of top-k re-ranking" in lines and any(line.startswith("| main ranking |") for line in "\n".join(lines).splitlines())
    text = goals.goal_check({"ms": main, "ms3": main, "logme": row(zoo, "logme", [TRUTH], kind="baseline"),
                             "prior": row(zoo, "prior", [TRUTH], kind="prior")},
                            "ms", "ms3", ["logme"], ["prior"], zoo.test_targets, ceiling3=0.5)["text"][1]
    assert "Ceiling: ordering the main ranking's top 3 by their true fine-tuned accuracy gives +0.500 (-0.500 over logme)" in text


def test_group_axes_merges_dataset_families():
    values = np.array([[0.0, 1.0, 0.5, np.nan]])
    axes, merged = charts.group_axes(["mnist", "omniglot_eval0", "omniglot_eval1", "usps"], values)
    assert axes == ["mnist", "omniglot_eval", "usps"]
    assert merged[0, 1] == pytest.approx(0.75) and math.isnan(merged[0, 2])


def test_group_axes_by_source_domain_keeps_pool_axes_apart():
    from types import SimpleNamespace

    from spider.pipeline.recipes import get_recipe

    zoo = SimpleNamespace(recipe=get_recipe("zoo40"))
    datasets = ["mnist", "cmaterdb", "usps", "cmaterdb_telugu", "gtsrb", "gtsrb_signs"]
    domains = charts.domain_axes(zoo, datasets)
    assert domains == {"mnist": "handwritten digits*", "cmaterdb": "handwritten digits*",
                       "usps": "handwritten digits", "cmaterdb_telugu": "handwritten digits",
                       "gtsrb": "traffic signs*", "gtsrb_signs": "traffic signs"}
    values = np.array([[0.0, 0.5, 1.0, 0.0, 0.25, np.nan]])
    axes, merged = charts.group_axes(datasets, values, domains)
    assert axes == ["handwritten digits*", "handwritten digits", "traffic signs*", "traffic signs"]
    assert merged[0].tolist()[:3] == [0.25, 0.5, 0.25] and math.isnan(merged[0, 3])


def test_fit_specs_use_the_recipes_shipped_data_config():
    assert data_config_name("tiny") == "minizoo_tiny" and data_config_name("minizoo") == "minizoo"
    with pytest.raises(ReportError, match="no configs/data"):
        data_config_name("no-such-recipe")
    spec = FitSpec("token", "mixed", "finetune_mean", seed=2)
    assert spec.setting == "mixed + prior finetune_mean" and spec.name.endswith("seed2")


def test_lgc_cells_are_reused_across_zoos_until_the_weights_change(tmp_path, monkeypatch):
    """An LGC cell depends on one PTM's weights and one target's images: another zoo (other
    model list) reuses it, new weights recompute it."""
    from types import SimpleNamespace

    import spider.model_score
    from spider.benchmark import lgc_rows
    from spider.benchmark.inputs import JsonCache

    labels = np.array([0, 1, 0, 1])
    view = SimpleNamespace(images=np.zeros((4, 8, 8, 1), np.uint8), labels=labels)
    target = SimpleNamespace(id="t", load=lambda _: {"train": view})
    store = SimpleNamespace(entry=lambda m, t: SimpleNamespace(labels=lambda: labels))
    weights = {"a": "w1", "b": "w2"}
    monkeypatch.setattr(lgc_rows, "model_refs", lambda zoo: {m: SimpleNamespace(weights=weights[m], load=lambda _, m=m: m)
                                                             for m in zoo.models})
    calls = []
    monkeypatch.setattr(spider.model_score, "score_prepared",
                        lambda name, prepared, images, y, **kw: calls.append(prepared) or float(len(calls)))

    def zoo(models):
        return SimpleNamespace(models=models, targets=["t"], recipe=SimpleNamespace(all_targets=[target]),
                               data_dir=None, store=store, general="g")

    identity = {"threads": 1, "lgc": lgc_rows.LGC_OPTIONS}
    lgc_rows.run_lgc(zoo(["a"]), JsonCache(tmp_path / "lgc.json", identity))
    assert calls == ["a", "a"]  # warm-up + the cell
    scores, _, errors = lgc_rows.run_lgc(zoo(["a", "b"]), JsonCache(tmp_path / "lgc.json", identity))
    assert calls[2:] == ["b", "b"] and scores[0, 0] == 2.0 and not errors  # a's cell reused
    weights["a"] = "w3"
    scores, _, _ = lgc_rows.run_lgc(zoo(["a", "b"]), JsonCache(tmp_path / "lgc.json", identity))
    assert calls[4:] == ["a", "a"] and scores[0, 0] == 6.0 and scores[0, 1] == 4.0


def test_rank_prior_ablation_picks_a_seed_ensembles_own_weight_on_validation(tmp_path, monkeypatch):
    """Ensembles (lists of checkpoints) rank at every weight; the winner is chosen on validation
    targets only, the weight tried first carries its label, no rank prior means no ablation."""
    import spider.modules.scorer_registry as registry
    from spider.benchmark import rank_prior

    zoo = fake_zoo(tmp_path)
    calls = []

    def fake_rank(ckpts, zoo_, ks, extraction, rank_prior_weight=None):
        calls.append((tuple(ckpts), rank_prior_weight))
        # w = 0.25 is right on validation and wrong on test; every other weight the opposite.
        good = rank_prior_weight == 0.25
        pred = np.stack([TRUTH[0] if good else -TRUTH[0], -TRUTH[1] if good else TRUTH[1],
                         -TRUTH[2] if good else TRUTH[2]])
        seconds = np.ones(3)
        return {0: {"pred": pred, "seconds": seconds, "extract_seconds": seconds, "score_seconds": seconds}}

    monkeypatch.setattr(rank_prior, "rank_targets", fake_rank)
    monkeypatch.setattr(registry, "load_scorer", lambda ckpt: type("Scorer", (), {"rank_prior": 1})())
    ensembles = [[tmp_path / "s0", tmp_path / "s1"], [tmp_path / "s2", tmp_path / "s3"]]
    weight, best, entries = rank_prior.rank_prior_ablation(zoo, ensembles, {}, 0.5, "single scorers'")
    assert weight == 0.25 and best.mean("wtau_paper", zoo.val_targets) == pytest.approx(1.0)
    assert [e["setting"] for e in entries][0] == "w = 0.5 (single scorers')"
    assert [e["winner"] for e in entries] == [e["setting"].startswith("w = 0.25") for e in entries]
    assert {c[0] for c in calls} == {tuple(e) for e in ensembles}
    assert math.isclose(sum(e["val_win_share"] for e in entries), 1.0)
    monkeypatch.setattr(registry, "load_scorer", lambda ckpt: object())
    assert rank_prior.rank_prior_ablation(zoo, ensembles, {}, 0.5) == (None, None, [])
    assert rank_prior.rank_prior_ablation(zoo, [tmp_path / "s0"], {}, None) == (None, None, [])


def test_run_baselines_computes_only_the_cells_missing_from_the_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)

    class Entry:
        has_logits = False

        def __init__(self):
            self.x = rng.normal(size=(12, 5))

        def labels(self):
            return np.repeat([3, 7, 9], 4)

        def features(self):
            return self.x

    class Store:
        def entry(self, model, target):
            return Entry()

    zoo = fake_zoo(tmp_path)
    zoo = Zoo(tmp_path, zoo.manifest, None, Store(), zoo.models, zoo.val_targets, zoo.test_targets, "general",
              TRUTH, None)
    cache = JsonCache(tmp_path / "baselines.json", {"models": zoo.models})
    for t in zoo.targets:
        cache.put(f"logme|{t}", {"score": [1.0, 2.0, None, 4.0], "seconds": [0.1] * 4, "error": ["", "", "x", ""]})
    called = []
    real = forward._call
    monkeypatch.setattr(forward, "_call", lambda name, labels, inputs: called.append(name) or real(name, labels, inputs))
    scores, seconds = forward.run_baselines(zoo, ["logme", "knn"], cache)
    assert set(called) == {"knn"}  # logme's cached cells are reused, not recomputed
    assert np.isnan(scores["logme"][:, 2]).all() and scores["logme"][0, 3] == 4.0
    assert scores["knn"].shape == (3, 4) and np.all((scores["knn"] >= 0) & (scores["knn"] <= 1))
    called.clear()
    forward.run_baselines(zoo, ["logme", "knn"], cache)
    assert called == []  # everything cached now


def test_refit_pairs_rank_validation_by_the_deciding_fit_and_test_by_the_shipped_one(tmp_path, monkeypatch):
    """The shipped last step (data.val_targets_as_tasks): a validation target trained on must not be
    judged by that fit, so each target's ranking comes from the fit that is honest for it."""
    from types import SimpleNamespace

    import spider.rank as rank
    import spider.rank_core as rank_core
    from spider.benchmark.training import Refit, rank_targets

    zoo = fake_zoo(tmp_path)
    loaded = []

    def fake_load(ckpt, rerankers, weight, rank_prior_weight=None):
        fits = [str(c) for c in (ckpt if isinstance(ckpt, list) else [ckpt])]
        loaded.append(fits)
        return SimpleNamespace(spider_info={"model_names": zoo.models}, fits=fits)

    def fake_rank(model, store, target, general, rerank_topk):
        ship = all("ship" in f for f in model.fits)
        assert ship or not any("ship" in f for f in model.fits)  # an ensemble is never mixed
        return SimpleNamespace(general_scores={m: (1 if ship else -1) * (i + 1) for i, m in enumerate(zoo.models)},
                               models=zoo.models, tokens=["general"] * 4, timings_ms={"tokens": 1.0, "score": 1.0})

    monkeypatch.setattr(rank_core, "load_ranker", fake_load)
    monkeypatch.setattr(rank, "rank_task", fake_rank)
    extraction = {"general": {t: 0.5 for t in zoo.targets}}
    pairs = [Refit(tmp_path / f"decide{s}", tmp_path / f"ship{s}") for s in (0, 1)]
    for ckpt in (pairs, pairs[0]):  # an ensemble of pairs, or one pair
        pred = rank_targets(ckpt, zoo, (0,), extraction)[0]["pred"]
        np.testing.assert_array_equal(pred, [[-1, -2, -3, -4], [1, 2, 3, 4], [1, 2, 3, 4]])  # val0, test0, test1
    assert loaded[:2] == [[str(p.decide) for p in pairs], [str(p.ship) for p in pairs]]
    with pytest.raises(ReportError, match="mixes Refit pairs and plain checkpoints"):
        rank_targets([pairs[0], tmp_path / "plain"], zoo, (0,), extraction)
    assert FitSpec(seed=1, val_tasks=4).name.endswith("-valtasks4-seed1") and FitSpec(seed=1).name.endswith("none-seed1")


def test_last_step_section_only_where_the_config_takes_it(tmp_path):
    from spider.benchmark import last_step

    assert last_step.section({"val_targets_as_tasks": 0}) == []
    command = last_step.probe_command(tmp_path / "zoo", tmp_path / "out", tmp_path)
    assert command == "python experiments/zoo40/val_targets_as_tasks.py --zoo-dir zoo --out out/val_targets_as_tasks.md"
    entry = {"row": "model_spider ensemble", "wtau_paper_bank_only": 0.5, "wtau_paper_refit": 0.6,
             "top1_regret_bank_only": 2.0, "top1_regret_refit": 1.0}
    text = "\n".join(last_step.section({"val_targets_as_tasks": 4, "refit": [entry], "refit_probe": command}))
    assert "`data.val_targets_as_tasks: 4`" in text and command in text
    assert "| `model_spider ensemble` | +0.500 | +0.600 | 2.00 | 1.00 |" in text
