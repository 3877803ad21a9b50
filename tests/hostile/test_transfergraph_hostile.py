"""TransferGraph on hostile input: non-finite history, bad tokens, tampered or foreign model files,
bad command lines. Every failure is one line (CLI: exit 2) and leaves no output behind."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spider.errors import SpiderError
from spider.transfergraph import HParams, PTMMeta, fit, load
from spider.transfergraph.cli import main

MODELS = ["a", "b", "c"]
META = {m: PTMMeta("fam", "src", 10 + i) for i, m in enumerate(MODELS)}
FAST = HParams(dim=4, layers=1, topk=2, steps=5)


def _history(tasks: int = 4):
    rng = np.random.default_rng(0)
    bank = SimpleNamespace(models=MODELS, accuracy=rng.uniform(20, 90, size=(tasks, 3)))
    return bank, [torch.as_tensor(rng.normal(size=(3, 6)), dtype=torch.float32) for _ in range(tasks)]


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text
    return text


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    bank, tokens = _history()
    path = tmp_path_factory.mktemp("tg") / "model.pt"
    fit(bank, tokens, META, FAST).save(path)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_bank_accuracy_is_rejected_before_training(bad):
    bank, tokens = _history()
    bank.accuracy[2, 1] = bad
    with pytest.raises(SpiderError, match=r"non-finite accuracy .* \(task 2, PTM b\)") as info:
        fit(bank, tokens, META, FAST)
    _one_line(info.value)


@pytest.mark.parametrize("change, fragment", [
    (lambda bank, tokens: tokens[1].__setitem__((0, 0), float("nan")), "bank task 1 tokens: non-finite"),
    (lambda bank, tokens: tokens.pop(), "one class-centre array per bank task"),
    (lambda bank, tokens: tokens.__setitem__(0, torch.zeros(3, 5)), "differ in dim"),
    (lambda bank, tokens: tokens.__setitem__(0, torch.zeros(6)), r"expected float class centres \[C, D\]"),
    (lambda bank, tokens: setattr(bank, "accuracy", bank.accuracy[:1]), "expected accuracy \\[K >= 2 tasks"),
    (lambda bank, tokens: setattr(bank, "models", ["a", "a", "c"]), "distinct PTM ids"),
])
def test_malformed_history_is_one_line(change, fragment):
    bank, tokens = _history()
    change(bank, tokens)
    with pytest.raises(SpiderError, match=fragment) as info:
        fit(bank, tokens, META, FAST)
    _one_line(info.value)


def test_missing_metadata_and_bad_new_tokens():
    bank, tokens = _history()
    with pytest.raises(SpiderError, match=r"no PTMMeta for \['c'\]"):
        fit(bank, tokens, {m: META[m] for m in ("a", "b")}, FAST)
    with pytest.raises(SpiderError, match="params: expected a positive integer"):
        PTMMeta("fam", "src", 0)
    model = fit(bank, tokens, META, FAST)
    with pytest.raises(SpiderError, match="task 0 tokens: non-finite"):
        model.predict([torch.full((2, 6), float("inf"))])


class Payload:  # an arbitrary class: weights_only loading must refuse to build it
    def __reduce__(self):
        return (print, ("executed",))


def _tampered(saved: Path, tmp_path: Path, edit) -> Path:
    state = torch.load(saved, weights_only=True)
    edit(state)
    path = tmp_path / "tampered.pt"
    torch.save(state, path)
    return path


def _config(state, **hparams):
    config = json.loads(state["config"])
    config["hparams"].update(hparams)
    state["config"] = json.dumps(config)


@pytest.mark.parametrize("make, fragment", [
    (lambda s, t: t / "missing.pt", "no such file"),
    (lambda s, t: (t / "text.pt").write_text("not a model") and t / "text.pt", "cannot load with weights_only=True"),
    (lambda s, t: torch.save(Payload(), t / "code.pt") or t / "code.pt", "cannot load with weights_only=True"),
    (lambda s, t: torch.save({"format": "other"}, t / "other.pt") or t / "other.pt", "not a spider.transfergraph/1"),
    (lambda s, t: _tampered(s, t, lambda st: st["bank_z"].fill_(float("nan"))), "'bank_z' holds non-finite"),
    (lambda s, t: _tampered(s, t, lambda st: st.__setitem__("bank_tokens", st["bank_tokens"][:-1])),
     "tensor shapes disagree"),
    (lambda s, t: _tampered(s, t, lambda st: _config(st, dim="wide")), "invalid config"),
    (lambda s, t: _tampered(s, t, lambda st: _config(st, dim=16)), "weights do not fit its own settings"),
    (lambda s, t: _tampered(s, t, lambda st: next(iter(st["head"].values())).fill_(float("nan"))),
     "non-finite weights"),
])
def test_bad_model_files_are_one_line(saved, tmp_path, capsys, make, fragment):
    path = make(saved, tmp_path)
    with pytest.raises(SpiderError, match=fragment) as info:
        load(path)
    _one_line(info.value)
    assert "executed" not in capsys.readouterr().out


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def _zoo_with_bank(root: Path, accuracy: str) -> Path:
    """A zoo.json and a fine-tuning bank only (the bank is read before any feature)."""
    bank = root / "bank"
    bank.mkdir(parents=True)
    (bank / "accuracy.csv").write_text("dataset,model,accuracy\n" + accuracy)
    spec = {"split": "train", "classes": [["mnist", 0], ["mnist", 1]], "rows": [[0], [1]]}
    (bank / "tasks.jsonl").write_text("".join(json.dumps({"task": f"task000{i}", "spec": json.dumps(spec)}) + "\n"
                                              for i in range(2)))
    manifest = {"recipe": "tiny", "general": {"id": "general", "weights": "w"}, "models": [],
                "data": {"models": ["a", "b"], "general": "general", "store": str(root / "store"),
                         "finetune_bank": str(bank)}}
    (root / "zoo.json").write_text(json.dumps(manifest))
    return root


def test_cli_fit_rejects_a_bank_with_nan_and_writes_nothing(tmp_path, capsys):
    rows = "task0000,a,50\ntask0000,b,nan\ntask0001,a,60\ntask0001,b,70\n"
    zoo = _zoo_with_bank(tmp_path / "zoo", rows)
    out = tmp_path / "model.pt"
    err = _cli_error(capsys, ["fit", "--zoo-dir", str(zoo), "--out", str(out)])
    assert "accuracy.csv:3: accuracy 'nan' is not finite" in err
    assert not out.exists() and not list(tmp_path.glob(".model.pt*"))


def test_cli_fit_rejects_bad_options_and_zoos(tmp_path, capsys):
    zoo = _zoo_with_bank(tmp_path / "zoo", "task0000,a,50\n")
    out = str(tmp_path / "m.pt")
    assert "--zoo-dir: no folder" in _cli_error(capsys, ["fit", "--zoo-dir", str(tmp_path / "none"), "--out", out])
    assert "is a folder" in _cli_error(capsys, ["fit", "--zoo-dir", str(zoo), "--out", str(tmp_path)])
    assert "dim: expected a positive integer" in _cli_error(capsys, ["fit", "--zoo-dir", str(zoo), "--out", out,
                                                                      "--dim", "0"])
    manifest = json.loads((zoo / "zoo.json").read_text())
    manifest["data"]["finetune_bank"] = None
    (zoo / "zoo.json").write_text(json.dumps(manifest))
    assert "has no fine-tuning bank" in _cli_error(capsys, ["fit", "--zoo-dir", str(zoo), "--out", out])
    assert not Path(out).exists()


def test_cli_rank_rejects_bad_models_and_folders(saved, tmp_path, capsys):
    images = tmp_path / "images"
    (images / "x").mkdir(parents=True)
    missing = str(tmp_path / "no.pt")
    assert "--model: no file" in _cli_error(capsys, ["rank", "--model", missing, "--images", str(images)])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"junk")
    two = _two_classes(tmp_path)
    assert "cannot load" in _cli_error(capsys, ["rank", "--model", str(garbage), "--images", str(two)])
    assert "no images found" in _cli_error(capsys, ["rank", "--model", str(saved), "--images", str(images)])
    assert "--top: expected a positive integer" in _cli_error(capsys, ["rank", "--model", str(saved), "--images",
                                                                       str(images), "--top", "0"])
    assert "records no zoo" in _cli_error(capsys, ["rank", "--model", str(saved), "--images", str(two)])


def _two_classes(root: Path) -> Path:
    from PIL import Image

    folder = root / "two"
    for name in ("p", "q"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / name / "0.png")
    return folder
