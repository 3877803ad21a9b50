"""Test support for ``spider.fit`` on a zoo recipe and ``spider.rank --images``.

* :func:`fake_data_dir` / :func:`fake_recipe`: a shared-data folder of generated digit-like
  images and a recipe of three small timm models on it (no real weights), so the whole path
  (build -> fit -> rank a folder of images) runs anywhere in seconds.
* :func:`recipes_with`: the recipe registry with extra recipes, for ``monkeypatch`` (registering
  globally would change ``list_recipes()`` for every other test).
* :func:`trained_on_zoo`: build a zoo and fit a re-ranker on it once per pytest session (the
  folders live under the session's base temp dir, so a second caller just finds them).
* :func:`write_image_folder`: images as ``root/<class>/<i>.png``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from spider.config import compose
from spider.fit import fit
from spider.registry import Registry
from spider.pipeline.finetune import FinetuneConfig
from spider.pipeline.recipe import RECIPES, PoolSpec, TargetSpec, ZooRecipe
from spider.pipeline import recipes
from spider.pipeline.recipes import get_recipe
from spider.pipeline.pretrain import PretrainSpec

FAKE_RECIPE = "test_fake_digits"
LOW, HIGH = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def _digits(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, size, size] noise images where digit d lights row d (scaled); labels int64 [n]."""
    labels = np.arange(n) % 10
    images = rng.integers(0, 50, size=(n, size, size)).astype(np.uint8)
    images[np.arange(n), (labels * size) // 10] = 230
    return images, labels.astype(np.int64)


def fake_data_dir(root: Path) -> Path:
    """``root`` as a shared-data folder: ``datasets/{mnist,usps}.npz`` and a ``MANIFEST.md``."""
    if (root / "MANIFEST.md").is_file():
        return root
    rng = np.random.default_rng(0)
    (root / "datasets").mkdir(parents=True)
    for name, size in (("mnist", 28), ("usps", 16)):
        x_train, y_train = _digits(rng, 200, size)
        x_test, y_test = _digits(rng, 100, size)
        np.savez_compressed(root / "datasets" / f"{name}.npz", x_train=x_train, y_train=y_train,
                            x_test=x_test, y_test=y_test)
    lines = [f"{hashlib.sha256((root / 'datasets' / f).read_bytes()).hexdigest()} datasets/{f}"
             for f in ("mnist.npz", "usps.npz")]
    (root / "MANIFEST.md").write_text("# generated for tests\n\n```\n" + "\n".join(lines) + "\n```\n")
    return root


def fake_recipe() -> ZooRecipe:
    """Two timm PTMs and a general encoder on the fake digits; label settings of ``tiny``, so
    ``data=minizoo_tiny`` reuses the build's label cache."""
    grey = dict(in_chans=1, input_size=32, mean=(0.5,), std=(0.5,), epochs=1, batch_size=16)
    return ZooRecipe(
        name=FAKE_RECIPE,
        real_ptms=(),
        pretrained=(PretrainSpec("test_vit.mnist", "test_vit", ("mnist",), **grey),
                    PretrainSpec("test_resnet.mnist", "test_resnet", ("mnist",), **grey)),
        general=PretrainSpec("general", "test_convnext", ("mnist",), **grey),
        pool=(PoolSpec("mnist", "mnist", classes=LOW, per_class=8),),
        targets=(TargetSpec("usps", "usps", 6, 2, 6, test_split="test", classes=HIGH),),
        # Enough fine-tuning that the two PTMs' accuracies differ (a tie makes weighted tau NaN).
        finetune=FinetuneConfig(epochs=4, batch_size=8),
        labels=get_recipe("tiny").labels,
        extract_batch_size=32,
        max_workers=1,
    )


def recipes_with(**extra) -> Registry:
    """A copy of the zoo-recipe registry plus ``name=factory`` items."""
    registry: Registry = Registry("zoo recipe")
    for name in RECIPES:
        registry.add(name, RECIPES.get(name))
    for name, factory in extra.items():
        registry.add(name, factory)
    return registry


def fit_overrides(zoo: str, zoo_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A one-epoch re-ranker fit on zoo ``zoo`` (``data=minizoo_tiny`` task settings), on CPU."""
    return ["data=minizoo_tiny", f"data.zoo={zoo}", f"data.zoo_dir={zoo_dir}", f"run_dir={run_dir}",
            "logger=none", "model=reranker", "data.specific_models=2", "model.rerank_topk=2",
            "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "trainer.threads=1", *extra]


def trained_on_zoo(tmp_path_factory, monkeypatch, zoo: str, data_dir: Path) -> tuple[Path, Path, dict]:
    """(zoo dir, checkpoint, fit result or {}) of a re-ranker trained on zoo ``zoo``; built and
    trained on the first call of the session, found on later ones."""
    root = tmp_path_factory.getbasetemp() / f"zoo-run-{zoo}"
    zoo_dir, run_dir = root / "zoo", root / "run"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        return zoo_dir, checkpoint, {}
    monkeypatch.setenv("SPIDER_DATA_DIR", str(data_dir))
    if zoo == FAKE_RECIPE:
        monkeypatch.setattr(recipes, "RECIPES", recipes_with(**{FAKE_RECIPE: fake_recipe}))
    result = fit(compose(fit_overrides(zoo, zoo_dir, run_dir)))
    return zoo_dir, checkpoint, result


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray,
                       class_names: list[str] | None = None) -> Path:
    """``root/<class name>/<i>.png`` for uint8 images [N, H, W(, 3)] with labels int [N]."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / (class_names[int(label)] if class_names else f"class{int(label)}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root
