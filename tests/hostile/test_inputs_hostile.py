"""Hostile inputs to the labels CLI and the image reader, and killed parents of worker pools.

Every bad input must end in one line naming what is wrong (exit 2 from a CLI) and leave nothing
written; images must decode to the right 8-bit values within a bounded size; workers must not
outlive a parent killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.datamodules_support import FAST_BASELINES, TINY_TASKS, tiny_zoo

from spider.datamodules.label_cache import resolve_label_config
from spider.pipeline.labelling import build_label_cache
from spider.errors import ConfigError
from spider.labels import main as labels_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo(tmp_path_factory.mktemp("zoo"))


def _build_args(zoo, out: Path, *extra: str) -> list[str]:
    return ["build", "--store", str(zoo.store_root), "--out", str(out), "--num-tasks", "4", "--shard-size", "2",
            "--baselines", *FAST_BASELINES, "--datasets-per-task", "2", "3", "--classes-per-task", "2", "8",
            "--samples-per-class", "2", "6", "--no-progress", *extra]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def _all_datasets(zoo) -> list[str]:
    return sorted(zoo.pool_datasets + zoo.target_datasets)


# ------------------------------------------------------------------------- labels: unknown names


def test_typo_in_targets_is_an_error_listing_the_store_datasets(zoo, tmp_path, capsys):
    # the probe: `--targets target0 targt1` used to put target1 into the training pool
    out = tmp_path / "labels"
    assert labels_main(_build_args(zoo, out, "--targets", zoo.target_datasets[0], "targt1")) == 2
    err = _one_error_line(capsys)
    assert "'targt1'" in err and all(d in err for d in _all_datasets(zoo))
    assert not out.exists()


def test_typo_in_pool_is_an_error(zoo, tmp_path, capsys):
    out = tmp_path / "labels"
    args = _build_args(zoo, out, "--targets", *zoo.target_datasets, "--pool", zoo.pool_datasets[0], "pool_9")
    assert labels_main(args) == 2
    err = _one_error_line(capsys)
    assert err.startswith("error: pool_datasets:") and "'pool_9'" in err
    assert all(d in err for d in _all_datasets(zoo)) and not out.exists()


def test_typo_in_models_is_an_error_listing_the_store_models(zoo, tmp_path, capsys):
    out = tmp_path / "labels"
    args = _build_args(zoo, out, "--targets", *zoo.target_datasets, "--models", zoo.models[0], "ptm_typo")
    assert labels_main(args) == 2
    err = _one_error_line(capsys)
    assert err.startswith("error: models:") and "'ptm_typo'" in err and all(m in err for m in zoo.models)
    assert not out.exists()


def test_typo_in_general_encoder_is_an_error(zoo, tmp_path, capsys):
    out = tmp_path / "labels"
    assert labels_main(_build_args(zoo, out, "--targets", *zoo.target_datasets, "--general", "genral")) == 2
    err = _one_error_line(capsys)
    assert "'genral'" in err and "general" in err.replace("'genral'", "") and not out.exists()


def test_resolve_label_config_rejects_unknown_targets_for_every_caller(zoo):
    with pytest.raises(ConfigError, match=r"targets: unknown dataset 'targt1' \(datasets in the store at .*pool0"):
        resolve_label_config(zoo.store_root, targets=[zoo.target_datasets[0], "targt1"])
    with pytest.raises(ConfigError, match="unknown datasets 'a', 'b'"):
        resolve_label_config(zoo.store_root, pool=["a", "b"], targets=zoo.target_datasets)
    with pytest.raises(ConfigError, match="duplicate"):
        resolve_label_config(zoo.store_root, pool=["pool0", "pool0"], targets=zoo.target_datasets)
    # known names still resolve, with the same default pool as before
    config = resolve_label_config(zoo.store_root, targets=zoo.target_datasets)
    assert config.pool == tuple(zoo.pool_datasets)


# ---------------------------------------------------------------------------- labels: --out, info


def test_build_out_an_existing_file_is_one_line_and_writes_nothing(zoo, tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("precious\n")
    assert labels_main(_build_args(zoo, out, "--targets", *zoo.target_datasets)) == 2
    err = _one_error_line(capsys)
    assert str(out) in err and "not a folder" in err
    assert out.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_build_out_below_a_file_is_one_line(zoo, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert labels_main(_build_args(zoo, tmp_path / "file" / "labels", "--targets", *zoo.target_datasets)) == 2
    assert "is not a folder" in _one_error_line(capsys)
    assert (tmp_path / "file").read_text() == "x"


def test_build_out_a_foreign_folder_is_refused_but_an_empty_one_is_used(zoo, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    assert labels_main(_build_args(zoo, foreign, "--targets", *zoo.target_datasets)) == 2
    assert "not a label cache and not empty" in _one_error_line(capsys)
    assert [p.name for p in foreign.iterdir()] == ["notes.md"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert labels_main(_build_args(zoo, empty, "--targets", *zoo.target_datasets)) == 0
    assert (empty / "labels.json").is_file()


@pytest.fixture(scope="module")
def built_cache(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "labels"
    config = resolve_label_config(zoo.store_root, targets=zoo.target_datasets, task=TINY_TASKS,
                                  baselines=FAST_BASELINES, shard_size=2)
    build_label_cache(config, out, 4, progress=False)
    return out


def _copy_cache(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_info_on_a_missing_cache_is_one_line(tmp_path, capsys):
    assert labels_main(["info", str(tmp_path / "nothing")]) == 2
    assert "no label cache here" in _one_error_line(capsys)


@pytest.mark.parametrize("content", [b"not json {", b"\xff\xfe\x00garbage", b"[1, 2]",
                                     b'{"format": "spider-label-cache"}', b""],
                         ids=["text", "binary", "list", "no-fields", "empty"])
def test_info_on_a_corrupt_manifest_is_one_line(built_cache, tmp_path, capsys, content):
    cache = _copy_cache(built_cache, tmp_path / "c")
    (cache / "labels.json").write_bytes(content)
    assert labels_main(["info", str(cache)]) == 2
    assert "labels.json: not a readable label-cache manifest" in _one_error_line(capsys)


def test_info_on_a_manifest_with_a_wrong_typed_field_is_one_line(built_cache, tmp_path, capsys):
    import json

    cache = _copy_cache(built_cache, tmp_path / "c")
    manifest = json.loads((cache / "labels.json").read_text())
    manifest["shard_size"] = "two"
    (cache / "labels.json").write_text(json.dumps(manifest))
    assert labels_main(["info", str(cache)]) == 2
    assert "bad 'shard_size'" in _one_error_line(capsys)


def test_info_on_a_truncated_shard_is_one_line_naming_it(built_cache, tmp_path, capsys):
    cache = _copy_cache(built_cache, tmp_path / "c")
    assert labels_main(["info", str(cache)]) == 0
    capsys.readouterr()
    shard = cache / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    assert labels_main(["info", str(cache)]) == 2
    err = _one_error_line(capsys)
    assert "shard-00001.npz: unreadable label shard" in err


# ----------------------------------------------------------------------------------------- images


def _open(path: Path) -> np.ndarray:
    from spider.pipeline.extract import _open_image

    return _open_image(path)


def test_16bit_png_gradient_spans_the_full_8bit_range(tmp_path):
    from PIL import Image

    path = tmp_path / "g16.png"
    Image.fromarray(np.arange(65536, dtype=np.uint16).reshape(256, 256)).save(path)
    assert Image.open(path).mode == "I;16"
    out = _open(path)
    assert out.dtype == np.uint8 and out.shape == (256, 256)
    assert out.min() == 0 and out.max() == 255
    assert (out == 255).mean() < 0.01  # convert("L") saturated 99.6 % of the pixels
    assert np.all(np.diff(out.reshape(-1).astype(int)) >= 0)  # order kept
    assert np.bincount(out.reshape(-1), minlength=256).min() > 0  # every level used


def test_16bit_pgm_opens_as_mode_I_and_is_scaled_exactly(tmp_path):
    from PIL import Image

    values = np.array([[0, 1, 128, 257], [32767, 32768, 65279, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.pgm"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I"
    expected = (values.astype(np.int64) * 255 + 32767) // 65535
    np.testing.assert_array_equal(_open(path), expected.astype(np.uint8))


def test_large_16bit_png_is_downscaled_on_decode_and_keeps_its_range(tmp_path):
    from PIL import Image

    from spider.pipeline.extract import DECODE_MAX_SIDE

    ramp = np.linspace(0, 65535, 6000).round().astype(np.uint16)
    path = tmp_path / "big16.png"
    Image.fromarray(np.broadcast_to(ramp, (6000, 6000)).copy()).save(path, compress_level=1)
    out = _open(path)
    assert out.dtype == np.uint8 and out.shape == (DECODE_MAX_SIDE, DECODE_MAX_SIDE)  # 1 MB, not 72 MB
    assert out[:, 0].max() <= 1 and out[:, -1].min() >= 254
    assert np.all(np.diff(out[0].astype(int)) >= 0)


def test_large_jpeg_is_reduced_per_side_on_decode(tmp_path):
    from PIL import Image

    from spider.pipeline.extract import DECODE_MAX_SIDE

    path = tmp_path / "wide.jpg"
    ramp = np.linspace(0, 255, 6000).round().astype(np.uint8)
    Image.fromarray(np.broadcast_to(ramp, (500, 6000)).copy()).convert("RGB").save(path, quality=90)
    out = _open(path)
    # the long side is capped, the short side keeps its pixels (preprocess resizes without crop)
    assert out.shape == (500, DECODE_MAX_SIDE, 3) and out.dtype == np.uint8
    assert out[:, :10].mean() < 5 and out[:, -10:].mean() > 250  # the ramp survived
    assert np.abs(out[250, :, 0].astype(int) - np.linspace(0, 255, DECODE_MAX_SIDE)).max() < 8


def test_huge_jpeg_decodes_without_holding_the_full_image(tmp_path):
    from PIL import Image

    path = tmp_path / "huge.jpg"
    Image.linear_gradient("L").resize((8000, 8000)).save(path, quality=80)  # 64 MB decoded
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from spider.pipeline.extract import _open_image

        def peak_kb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1])

        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current size
        before = peak_kb()
        image = _open_image(Path(sys.argv[1]))
        print(image.shape[0], image.shape[1], peak_kb() - before)
    """)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    if run.returncode != 0 and "clear_refs" in run.stderr:
        pytest.skip(f"cannot reset the peak memory here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    height, width, grown_kb = map(int, run.stdout.split())
    assert (height, width) == (1024, 1024)
    assert grown_kb < 32 * 1024  # a full decode alone holds 64 MB


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (nothing behind it is ever decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _image_folder(root: Path, images: dict[str, list[tuple[str, Path | None]]]) -> Path:
    from PIL import Image

    for cls, files in images.items():
        (root / cls).mkdir(parents=True)
        for name, source in files:
            if source is None:
                Image.new("L", (8, 8), 100).save(root / cls / name)
            else:
                (root / cls / name).write_bytes(source.read_bytes())
    return root


@pytest.mark.parametrize("size", [(10000, 9000), (20000, 20000)], ids=["over-our-limit", "pil-bomb"])
def test_over_limit_image_is_refused_with_one_line_naming_it(tmp_path, size):
    from spider.pipeline.extract import MAX_IMAGE_PIXELS, ExtractError, ImageFolderSource

    assert size[0] * size[1] > MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, *size)
    folder = _image_folder(tmp_path / "imgs", {"a": [("ok.png", None), ("bomb.png", bomb)], "b": [("x.png", None)]})
    source = ImageFolderSource(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not leak either
        for action in (source.check, lambda: source.read(0, 2)):
            with pytest.raises(ExtractError) as err:
                action()
            text = str(err.value)
            assert "\n" not in text and str(folder / "a" / "bomb.png") in text and "too large" in text
            assert f"{MAX_IMAGE_PIXELS:,}" in text


def test_empty_class_folder_is_warned_and_left_out(tmp_path):
    from spider.pipeline.extract import EmptyClassFolderWarning, ImageFolderSource

    folder = _image_folder(tmp_path / "imgs", {"cat": [("1.png", None)], "dog": [], "eel": [("2.png", None)]})
    (folder / "fox").mkdir()
    (folder / "fox" / "readme.txt").write_text("not an image")
    with pytest.warns(EmptyClassFolderWarning) as caught:
        source = ImageFolderSource(folder)
    (message,) = [str(w.message) for w in caught]
    assert f"image folder {folder}: class folders 'dog', 'fox' hold no image" in message
    assert source.class_names == ("cat", "eel") and source.labels.tolist() == [0, 1]


def test_folder_with_only_empty_classes_is_one_error_without_warnings(tmp_path):
    from spider.pipeline.extract import ExtractError, ImageFolderSource

    folder = _image_folder(tmp_path / "imgs", {"dog": [], "fox": []})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExtractError, match="no images found in"):
            ImageFolderSource(folder)


# ------------------------------------------------------------------------ killed parent, no orphans


def _process_table() -> dict[int, tuple[int, str]]:
    """{pid: (ppid, state)} of every process (psutil if installed, else Linux /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    table = {}
    if psutil is not None:
        for p in psutil.process_iter(["ppid", "status"]):
            table[p.pid] = (p.info["ppid"], "Z" if p.info["status"] == psutil.STATUS_ZOMBIE else "R")
        return table
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            table[int(name)] = (int(ppid), state)
    return table


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _) in table.items() if pp == parent]
        found.update(kids)
        frontier += kids
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _kill_parent_and_collect_survivors(proc: subprocess.Popen, workers: set[int]) -> set[int]:
    everything = workers | _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60  # a liveness bound, not a speed requirement
    while _alive(everything) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = _alive(everything)
    for pid in survivors:  # never leave our own orphans behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    return survivors


def _wait_for_workers(proc: subprocess.Popen, count: int, ready=lambda: True) -> set[int]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        workers = {p for p in _descendants(proc.pid) if b"spawn_main" in _cmdline(p)}
        if len(workers) >= count and ready():
            return workers
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the workers never started (exit {proc.poll()}): {proc.stderr.read()[-2000:]!r}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


@pytest.mark.slow
@needs_proc
def test_killing_a_labels_build_ends_its_workers(zoo, tmp_path):
    out = tmp_path / "labels"
    cmd = [sys.executable, "-m", "spider.labels", *_build_args(zoo, out, "--targets", *zoo.target_datasets,
                                                                 "--workers", "2")]
    cmd[cmd.index("--num-tasks") + 1] = "3000"
    cmd[cmd.index("--baselines") + 1:cmd.index("--baselines") + 1 + len(FAST_BASELINES)] = ["logme", "hscore"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers = _wait_for_workers(proc, 2, ready=lambda: (out / "shard-00000.npz").exists())
    assert proc.poll() is None, "the build finished before it could be killed"
    assert not _kill_parent_and_collect_survivors(proc, workers)
    assert proc.returncode == -signal.SIGKILL


_POOL_SCRIPTS = {
    # the zoo build's pools (pretraining, extraction) and the ground-truth fine-tuning pool
    "zoo-build": "from spider.pipeline.build import _pool\npool = _pool(2, 2)",
    "ground-truth": ("import multiprocessing\nfrom spider.pipeline.finetune import _worker_init\n"
                     "pool = multiprocessing.get_context('spawn').Pool(2, initializer=_worker_init, "
                     "initargs=([], None, '', None))"),
}


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("kind", sorted(_POOL_SCRIPTS))
def test_killing_a_zoo_build_ends_its_pool_workers(kind):
    script = _POOL_SCRIPTS[kind] + "\nimport time\npool.map_async(time.sleep, [600, 600], chunksize=1)\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    workers = _wait_for_workers(proc, 2)
    time.sleep(3)  # let the workers start their 600 s tasks (killing earlier must work too)
    assert proc.poll() is None
    assert not _kill_parent_and_collect_survivors(proc, workers)
