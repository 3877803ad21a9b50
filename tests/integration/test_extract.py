"""Feature extraction into the store: tiny random timm models on generated image folders."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from spider.errors import StoreError
from spider.pipeline.extract import (
    ArraySource,
    ExtractError,
    ImageFolderSource,
    extract_to_store,
    load_model,
    preprocess,
)
from spider.extract import main
from spider.store import FeatureStore

ARCH = "test_convnext"  # ~0.2M parameters; classifier under a nested name ("head.fc")
SIZE = 160  # its native input size, so the folder's images need no resizing


def _rgb(seed, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised 3-class model saved as a plain state_dict; returns (path, model)."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=3).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture
def folder(tmp_path):
    """3 classes x 2 RGB PNGs at the model's input size."""
    root = tmp_path / "images"
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_rgb(10 * c + i)).save(root / name / f"{i}.png")
    return root


def _direct_forward(model, images):
    """Independent reference: numpy normalisation + the model's own timm forward."""
    cfg = timm.data.resolve_model_data_config(model)
    x = (np.stack(images).astype(np.float32) / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    x = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy(), model(x).numpy()


def test_folder_extraction_matches_a_direct_forward(tmp_path, folder, checkpoint):
    path, reference = checkpoint
    model = load_model(ARCH, checkpoint=path)  # num_classes inferred from "head.fc.weight"
    assert model.input_size == (SIZE, SIZE) and model.in_chans == 3
    store = FeatureStore(tmp_path / "store")
    entry, skipped = extract_to_store(store, model, ImageFolderSource(folder), dataset="pets",
                                      model_id="tiny", batch_size=4, progress=False, device="cpu")
    assert not skipped
    assert entry.num_samples == 6 and entry.dim == reference.num_features
    assert entry.logits().shape == (6, 3)
    assert entry.labels().tolist() == [0, 0, 1, 1, 2, 2]
    assert entry.class_names == ["cat", "dog", "emu"]
    assert entry.sample_ids().tolist() == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png",
                                           "emu/0.png", "emu/1.png"]
    features, logits = _direct_forward(reference, [_rgb(s) for s in (0, 1, 10, 11, 20, 21)])
    np.testing.assert_allclose(entry.features(), features, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(entry.logits(), logits, atol=1e-5, rtol=1e-5)
    assert entry.manifest["created"]["info"]["model"] == ARCH


def test_resume_skips_existing_entries(tmp_path, folder, checkpoint, capsys):
    args = ["--store", str(tmp_path / "store"), "--model", ARCH, "--checkpoint", str(checkpoint[0]),
            "--images", str(folder), "--dataset", "pets", "--model-id", "tiny", "--no-progress"]
    assert main(args) == 0
    manifest = tmp_path / "store" / "tiny" / "pets" / "train" / "manifest.json"
    written = manifest.read_bytes()
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 0
    assert "skip tiny/pets/train" in capsys.readouterr().out
    assert manifest.read_bytes() == written
    store = FeatureStore(tmp_path / "store")
    model = load_model(ARCH, checkpoint=checkpoint[0])
    entry, skipped = extract_to_store(store, model, ImageFolderSource(folder), dataset="pets",
                                      model_id="tiny", progress=False)
    assert skipped and entry.num_samples == 6
    assert main(args + ["--split", "test"]) == 0  # another split is a new entry
    assert FeatureStore(tmp_path / "store").splits("tiny", "pets") == ["test", "train"]


def test_arrays_grey_images_are_resized_and_replicated(tmp_path, checkpoint):
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (5, 12, 12), dtype=np.uint8), np.array([0, 1, 1, 0, 1])
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    store = tmp_path / "store"
    assert main(["--store", str(store), "--model", ARCH, "--checkpoint", str(checkpoint[0]),
                 "--arrays", str(tmp_path / "grey.npz"), "--dataset", "grey", "--batch-size", "2",
                 "--no-progress"]) == 0
    entry = FeatureStore(store).entry(ARCH, "grey")
    assert entry.num_samples == 5 and entry.labels().tolist() == y.tolist()
    assert entry.sample_ids().tolist() == list(range(5))
    # Same images given as RGB with three equal channels give the same features.
    rgb = ArraySource(np.repeat(x[..., None], 3, axis=-1), y)
    direct = load_model(ARCH, checkpoint=checkpoint[0])
    with torch.inference_mode():
        features, _ = direct.run(preprocess(rgb.read(0, 5), direct))
    np.testing.assert_allclose(entry.features(), features.numpy(), atol=1e-5)


def test_preprocess_converts_channels_and_size(checkpoint):
    model = load_model(ARCH, checkpoint=checkpoint[0], input_size=(20, 24), mean=[0.5], std=[0.25])
    rgb = np.zeros((2, 7, 9, 3), np.uint8)
    rgb[..., 0] = 255
    x = preprocess(rgb, model)
    assert x.shape == (2, 3, 20, 24)
    torch.testing.assert_close(x[:, 0], torch.full((2, 20, 24), 2.0))  # (1 - 0.5) / 0.25
    model.in_chans, model.mean, model.std = 1, (0.0,), (1.0,)
    grey = preprocess([rgb[0], rgb[1][:5]], model)  # a list of differently sized images
    assert grey.shape == (2, 1, 20, 24)
    torch.testing.assert_close(grey, torch.full_like(grey, 0.299))  # ITU-R 601 luma of red


def test_other_models_entries_must_list_the_same_samples(tmp_path, folder, checkpoint):
    store = FeatureStore(tmp_path / "store")
    model = load_model(ARCH, checkpoint=checkpoint[0])
    extract_to_store(store, model, ImageFolderSource(folder), dataset="pets", model_id="a",
                     progress=False)
    (folder / "emu" / "1.png").unlink()
    with pytest.raises(StoreError, match="lists different samples"):
        extract_to_store(store, model, ImageFolderSource(folder), dataset="pets", model_id="b",
                         progress=False)


def _run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, folder, checkpoint, capsys):
    store = str(tmp_path / "store")
    ckpt = str(checkpoint[0])
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    (broken / "a" / "x.png").write_bytes(b"not a png")
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 8, 8), np.uint8))
    cases = [
        (["--images", str(empty)], "no images found"),
        (["--images", str(broken)], "unreadable image"),
        (["--arrays", str(tmp_path / "nolabels.npz")], "missing array 'y'"),
        (["--arrays", str(tmp_path / "absent.npz")], "does not exist"),
    ]
    for data_args, message in cases:
        code, err = _run_cli(capsys, "--store", store, "--model", ARCH, "--checkpoint", ckpt,
                             "--dataset", "d", "--no-progress", *data_args)
        assert code == 2 and message in err and "\n" not in err, (data_args, err)
    code, err = _run_cli(capsys, "--store", store, "--model", "no_such_net", "--images", str(folder),
                         "--dataset", "d")
    assert code == 2 and "unknown model 'no_such_net'" in err
    code, err = _run_cli(capsys, "--store", store, "--model", ARCH, "--images", str(folder),
                         "--dataset", "d")
    assert code == 2 and "--checkpoint is required" in err
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=3).state_dict(), wrong)
    code, err = _run_cli(capsys, "--store", store, "--model", ARCH, "--checkpoint", str(wrong),
                         "--images", str(folder), "--dataset", "d", "--no-progress")
    assert code == 2 and "does not fit" in err and "\n" not in err
    assert not (tmp_path / "store").exists() or not FeatureStore(store).models()


def test_array_source_rejects_bad_shapes():
    with pytest.raises(ExtractError, match="x must be"):
        ArraySource(np.zeros((2, 8, 8, 5), np.uint8), np.zeros(2, int))
    with pytest.raises(ExtractError, match="y must be"):
        ArraySource(np.zeros((2, 8, 8), np.uint8), np.zeros(3, int))


@pytest.mark.shared_data
def test_zoo_model_extraction_keeps_source_accuracy(tmp_path, data_dir):
    """usps_cnn through the whole pipeline reproduces its USPS test accuracy from the logits."""
    model = load_model("usps_cnn", data_dir=data_dir)
    source = ArraySource.from_zoo_dataset("usps", "test", data_dir=data_dir)
    entry, _ = extract_to_store(FeatureStore(tmp_path), model, source, dataset="usps",
                                split="test", progress=False)
    assert entry.dim == 128 and entry.logits().shape == (2007, 10)
    accuracy = (entry.logits().argmax(1) == entry.labels()).mean() * 100
    assert accuracy == pytest.approx(95.2, abs=0.3)
