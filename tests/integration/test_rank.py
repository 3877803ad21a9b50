"""``spider.rank``: ranking a task's PTMs from a checkpoint (API and CLI), with re-ranking."""

from __future__ import annotations

import json

import pytest
import torch

from spider.config import compose
from spider.fit import fit
from spider.modules.scorer_registry import load_scorer
from spider.run_inputs import build_datamodule, prepare_store
from spider.rank import main, rank_task


def _config(tmp, run, *extra):
    return compose([
        "data=tiny", "logger=none", f"data.cache_dir={tmp / 'cache'}", f"run_dir={tmp / run}",
        "data.baselines=[leep,nce]", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
        "trainer.max_epochs=1", "results_table=false", "data.val_tasks_per_target=0", *extra,
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A re-ranker trained for one epoch on the tiny zoo; (config, checkpoint, store root)."""
    tmp = tmp_path_factory.mktemp("rank")
    cfg = _config(tmp, "reranker", "model=reranker", "data.specific_models=2", "model.rerank_topk=2")
    fit(cfg)
    return cfg, tmp / "reranker" / "checkpoints" / "last.ckpt", prepare_store(cfg)["store"]


def test_scores_equal_the_validation_path_for_the_whole_target(trained):
    cfg, checkpoint, store = trained
    result = rank_task(checkpoint, store, "target1")
    assert sorted(result.models) == ["ptm00", "ptm01", "ptm02", "ptm03"]
    assert result.scores == sorted(result.scores, reverse=True)
    assert set(result.tokens) == {"general"}
    # The datamodule's evaluation episode of the same target (whole dataset, one task) gives
    # the same task tokens, hence the same scores: rank.py reuses the training token code.
    datamodule = build_datamodule(cfg, prepare_store(cfg), progress=False)
    datamodule.setup("validate")
    item = next(datamodule.eval_dataset[i] for i in range(len(datamodule.eval_dataset))
                if datamodule.target_names[int(datamodule.eval_dataset[i]["target_index"])] == "target1")
    model = load_scorer(checkpoint)
    with torch.no_grad():
        expected = model(item["task_tokens"][None], torch.ones(1, item["task_tokens"].shape[0], dtype=torch.bool))[0]
    names = datamodule.model_names
    for m, name in enumerate(names):
        assert result.general_scores[name] == pytest.approx(float(expected[m]), abs=1e-5)
    assert result.num_classes == item["task_tokens"].shape[0]
    assert {"load", "tokens", "score", "total"} <= set(result.timings_ms)


def test_rerank_rescores_the_general_top_k_and_sorts_by_the_fused_scores(trained):
    _, checkpoint, store = trained
    plain = rank_task(checkpoint, store, "target0")
    reranked = rank_task(checkpoint, store, "target0", rerank_topk=2)
    specific = [m for m, t in zip(reranked.models, reranked.tokens) if t == "specific"]
    assert set(specific) == set(plain.models[:2])  # the general top 2, wherever the fusion puts them
    assert reranked.scores == sorted(reranked.scores, reverse=True)  # one scale: z-scores
    general = [m for m in reranked.models if m not in specific]
    assert general == [m for m in plain.models if m not in specific]  # the others keep their order
    assert "rerank" in reranked.timings_ms


def test_cli_table_and_json(trained, tmp_path, capsys):
    _, checkpoint, store = trained
    out = tmp_path / "ranking.json"
    code = main(["--checkpoint", str(checkpoint), "--store", store, "--dataset", "target0", "--rerank-topk", "1",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rank" in printed and "specific" in printed and "time:" in printed
    data = json.loads(out.read_text())
    assert [row["rank"] for row in data["ranking"]] == [1, 2, 3, 4]
    assert [row["tokens"] for row in data["ranking"]].count("specific") == 1 and data["dataset"] == "target0"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--dataset", "nowhere"], "general/nowhere/train"),
        (["--dataset", "target0", "--general", "ptm00"], "dim"),  # PTM features are not Dg wide
        (["--dataset", "target0", "--rerank-topk", "-1"], "rerank_topk"),
    ],
)
def test_cli_bad_input_exits_2(trained, capsys, extra, fragment):
    _, checkpoint, store = trained
    assert main(["--checkpoint", str(checkpoint), "--store", store, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err


@pytest.fixture(scope="module")
def token(trained, tmp_path_factory):
    """A token scorer (no re-ranking of its own) trained one epoch on the same zoo: its checkpoint."""
    cfg, _, _ = trained
    tmp = tmp_path_factory.mktemp("token")
    fit(_config(tmp, "token", f"data.cache_dir={cfg.data.cache_dir}"))
    return tmp / "token" / "checkpoints" / "last.ckpt"


def test_rerank_needs_a_reranker_checkpoint(trained, token, capsys):
    _, _, store = trained
    checkpoint = token
    assert main(["--checkpoint", str(checkpoint), "--store", store, "--dataset", "target0",
                 "--rerank-topk", "2"]) == 2
    assert "ReRanker" in capsys.readouterr().err


def test_several_checkpoints_rank_as_one_ensemble(trained, tmp_path, capsys):
    from spider.modules.ensemble import ScorerEnsemble

    _, checkpoint, store = trained
    single = rank_task(checkpoint, store, "target0")
    twice = rank_task([checkpoint, checkpoint], store, "target0")  # two equal members: the same order
    assert twice.models == single.models
    ensemble = ScorerEnsemble([load_scorer(checkpoint), load_scorer(checkpoint)])
    assert rank_task(ensemble, store, "target0").models == single.models
    assert main(["--checkpoint", str(checkpoint), str(checkpoint), "--store", store, "--dataset", "target0",
                 "--json", "-"]) == 0
    assert [r["model"] for r in json.loads(capsys.readouterr().out)["ranking"]] == single.models
    assert main(["--checkpoint", str(checkpoint), str(checkpoint), "--store", store, "--dataset", "target0",
                 "--rerank-topk", "1"]) == 2
    assert "re-ranking takes one checkpoint" in capsys.readouterr().err


def test_cli_reranks_an_ensemble_with_rerankers_like_the_python_api(trained, token, capsys):
    from spider.modules import ReRanking
    from spider.modules.ensemble import ScorerEnsemble

    _, reranker, store = trained

    def cli(*extra):
        assert main(["--checkpoint", str(token), str(reranker), "--reranker", str(reranker), "--reranker",
                     str(reranker), "--store", store, "--dataset", "target0", "--rerank-topk", "2",
                     "--json", "-", *extra]) == 0
        return json.loads(capsys.readouterr().out)["ranking"]

    def api(weight):
        model = ReRanking(ScorerEnsemble([load_scorer(token), load_scorer(reranker)]),
                          [load_scorer(reranker), load_scorer(reranker)], weight)
        result = rank_task(model, store, "target0", rerank_topk=2)
        return [{"model": m, "score": pytest.approx(s, abs=1e-6), "tokens": t}
                for m, s, t in zip(result.models, result.scores, result.tokens)]

    for extra, weight in (((), None), (("--rerank-weight", "0.25"), 0.25)):
        ranking = cli(*extra)
        assert [{k: row[k] for k in ("model", "score", "tokens")} for row in ranking] == api(weight)
        assert [row["tokens"] for row in ranking].count("specific") == 2
    # The weight reaches the fusion: 0 keeps the ensemble's z-scores, 1 takes the re-rankers'.
    scores = {w: [row["score"] for row in cli("--rerank-weight", w)] for w in ("0", "1")}
    assert scores["0"] != scores["1"]


def test_rerank_baseline_reorders_the_top_k_by_the_baseline_of_their_features(trained, token, capsys):
    """Forward re-ranking: any checkpoint (a token scorer here); w = 1 puts the top k in the order of
    the baseline's own scores, computed from the stored features like ``spider.baselines``."""
    import numpy as np

    from spider.baselines import score_models
    from spider.store import FeatureStore

    _, _, store = trained
    plain = rank_task(token, store, "target0")
    fused = rank_task(token, store, "target0", rerank_topk=3, rerank_baseline="logme", rerank_weight=1.0)
    top = plain.models[:3]
    assert set(fused.models[:3]) == set(top) and fused.models[3:] == plain.models[3:]
    assert fused.tokens == ["specific"] * 3 + ["general"] * (len(plain.models) - 3)
    entries = {m: FeatureStore(store).entry(m, "target0") for m in top}
    labels = np.unique(entries[top[0]].labels(), return_inverse=True)[1].reshape(-1)
    logme = score_models(labels, {m: {"features": e.features()} for m, e in entries.items()}, ["logme"])[0]
    assert fused.models[:3] == [top[i] for i in np.argsort(-logme, kind="stable")]
    assert "rerank" in fused.timings_ms
    # w = 0 keeps the ranking; the CLI is the same call.
    assert rank_task(token, store, "target0", rerank_topk=3, rerank_baseline="logme", rerank_weight=0.0).models \
        == plain.models
    assert main(["--checkpoint", str(token), "--store", store, "--dataset", "target0", "--rerank-topk", "3",
                 "--rerank-baseline", "logme", "--rerank-weight", "1", "--json", "-"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in printed["ranking"]] == fused.models


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--rerank-baseline", "nope", "--rerank-topk", "2"], "unknown baseline 'nope'"),
        (["--rerank-baseline", "logme"], "--rerank-topk"),
        (["--rerank-baseline", "logme", "--rerank-topk", "2", "--rerank-weight", "2"], "[0, 1]"),
        (["--rerank-baseline", "logme", "--rerank-topk", "2", "--reranker", "x.ckpt"], "one or the other"),
    ],
)
def test_rerank_baseline_bad_options_exit_2(token, trained, capsys, extra, fragment):
    _, _, store = trained
    assert main(["--checkpoint", str(token), "--store", store, "--dataset", "target0", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err


def test_checkpoint_holds_its_training_tasks_and_ranking_reports_familiarity(trained, token, capsys):
    """Training writes the training tasks' class centres into the checkpoint (weights_only safe);
    a ranking reports the task's familiarity to them, exactly as ``spider.familiarity`` computes it."""
    from spider.familiarity import TaskReference
    from spider.rank import task_tokens

    cfg, _, store = trained
    info = torch.load(token, map_location="cpu", weights_only=True)["spider"]
    reference = TaskReference.from_dict(info["reference"])
    dm = build_datamodule(cfg, prepare_store(cfg))
    dm.setup("fit")
    assert reference.num_tasks == len(set(dm.training_labels.spec_texts)) > 1
    result = rank_task(token, store, "target0")
    expected = reference.familiarity(task_tokens(store, info["general"], "target0")[0])
    assert result.familiarity == expected.as_dict() and result.to_dict()["familiarity"] == expected.as_dict()
    # A loaded scorer builds its reference once and reuses it for every task it ranks.
    scorer = load_scorer(token)
    first = rank_task(scorer, store, "target0").familiarity
    kept = scorer._spider_task_reference[1]
    assert rank_task(scorer, store, "target1").familiarity is not None and scorer._spider_task_reference[1] is kept
    assert first == expected.as_dict()
    assert main(["--checkpoint", str(token), "--store", store, "--dataset", "target0"]) == 0
    out = capsys.readouterr()
    assert f"familiarity: similarity {expected.similarity:.3f}" in out.out
    assert ("warning: the task is unlike every training task" in out.err) == expected.novel


def test_a_novel_task_is_ordered_by_the_forward_baseline_alone(trained, token, tmp_path, capsys):
    """A checkpoint whose training tasks are all unlike the task (two 'datasets' of one identical
    task: nothing but that task is familiar): the forward baseline alone orders the top k, whatever
    the weight asked for, and the CLI warns; the general ranking itself is unchanged."""
    from spider.familiarity import TaskReference

    _, _, store = trained
    state = torch.load(token, map_location="cpu", weights_only=True)
    dim = state["spider"]["reference"]["centres"].shape[1]
    centre = torch.zeros(1, dim)
    centre[0, 0] = 1.0
    state["spider"]["reference"] = TaskReference([centre, centre], [["x"], ["y"]]).to_dict()
    novel_ckpt = tmp_path / "novel.ckpt"
    torch.save(state, novel_ckpt)
    plain = rank_task(token, store, "target0")
    novel = rank_task(novel_ckpt, store, "target0")
    assert novel.familiarity["novel"] and novel.models == plain.models
    alone = rank_task(token, store, "target0", rerank_topk=3, rerank_baseline="logme", rerank_weight=1.0)
    gated = rank_task(novel_ckpt, store, "target0", rerank_topk=3, rerank_baseline="logme", rerank_weight=0.0)
    assert gated.models == alone.models != plain.models  # weight 0 would have kept the plain order
    assert main(["--checkpoint", str(novel_ckpt), "--store", store, "--dataset", "target0", "--json", "-"]) == 0
    out = capsys.readouterr()
    assert "warning: the task is unlike every training task of this ranker" in out.err
    assert json.loads(out.out)["familiarity"]["novel"] is True


def test_a_checkpoint_without_training_tasks_still_ranks(trained, token, tmp_path):
    """Checkpoints written before the reference was stored rank as before, without familiarity."""
    _, _, store = trained
    state = torch.load(token, map_location="cpu", weights_only=True)
    del state["spider"]["reference"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    result = rank_task(old, store, "target0")
    assert result.familiarity is None and "familiarity" not in result.to_dict()
    assert result.models == rank_task(token, store, "target0").models


def test_rank_prior_weight_reranks_without_retraining(tmp_path, capsys):
    """``--rank-prior-weight`` ranks like the API with that weight; 0 keeps the scorer's own order."""
    cfg = _config(tmp_path, "shrunk", "data.rank_prior=label_mean", "data.rank_prior_weight=0.0")
    checkpoint = fit(cfg)["checkpoint"]
    store = prepare_store(cfg)["store"]
    capsys.readouterr()  # the fit's own output

    def cli(*extra):
        assert main(["--checkpoint", str(checkpoint), "--store", store, "--dataset", "target0", "--json", "-",
                     *extra]) == 0
        return [row["model"] for row in json.loads(capsys.readouterr().out)["ranking"]]

    own = cli()
    assert cli("--rank-prior-weight", "0") == own == rank_task(checkpoint, store, "target0").models
    shrunk = rank_task(checkpoint, store, "target0", rank_prior_weight=0.9).models
    assert cli("--rank-prior-weight", "0.9") == shrunk
    prior = load_scorer(checkpoint).rank_prior
    assert shrunk != own and shrunk[0] == load_scorer(checkpoint).hparams.model_names[int(prior.argmax())]
