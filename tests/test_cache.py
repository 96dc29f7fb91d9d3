"""Image cache: geometry against an independent PIL reference, bad files, resume after SIGKILL, reader, exclusion."""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from engine.data.cache import load_square, open_reduced
from engine.data.cache_build import BadImagesError, build_cache, normalise_ids
from engine.data.cache_exclusions import ids_to_cache, mark_excluded
from engine.data.cache_read import LOCK_FILE, OK, PENDING, ImageCache, read_bad_images, read_manifest
from engine.data.errors import DataError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


def reference(path: Path, size: int) -> np.ndarray:
    """Independent reference: full decode, PIL bicubic resize of the short side, then torchvision-style centre crop."""
    img = Image.open(path).convert("L")
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = (size, int(h * scale)) if w <= h else (int(w * scale), size)
    # torchvision computes the long side as int(size * long / short); check the float route agrees here.
    assert (new_w, new_h) == ((size, int(size * h / w)) if w <= h else (int(size * w / h), size))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return np.asarray(img.crop((left, top, left + size, top + size)))


def smooth_noisy(h: int, w: int, seed: int, channels: int = 1) -> np.ndarray:
    """A smooth gradient with noise: compresses like a radiograph, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / (w / 7)) * np.cos(y / (h / 5)) + 30 * np.sin((x + y) / (w / 13))
    shape = (h, w) if channels == 1 else (h, w, channels)
    noise = rng.normal(0, 4, shape)
    return np.clip((base if channels == 1 else base[..., None]) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good images (JPEG/PNG, L/RGB, landscape/portrait, one large JPEG for draft) and bad ones."""
    root = tmp_path_factory.mktemp("images")
    (root / "p1" / "s1").mkdir(parents=True)
    # 131 x 96 -> 87 x 64: crop offset round(11.5) = 12 (torchvision), not floor 11
    Image.fromarray(smooth_noisy(96, 131, 1)).save(root / "p1/s1/land.jpg", quality=95)
    Image.fromarray(smooth_noisy(150, 90, 2)).save(root / "p1/s1/port.png")
    Image.fromarray(smooth_noisy(150, 90, 3, channels=3)).save(root / "p1/s1/rgb.png")
    Image.fromarray(smooth_noisy(90, 120, 4, channels=3)).save(root / "p1/s1/rgb.jpg", quality=95)
    Image.fromarray(smooth_noisy(1500, 1200, 5)).save(root / "p1/s1/large.jpg", quality=95)
    Image.fromarray(smooth_noisy(40, 50, 6)).save(root / "p1/s1/tiny.png")  # upsampled to SIZE
    data = (root / "p1/s1/large.jpg").read_bytes()
    (root / "bad").mkdir()
    (root / "bad/garbage.jpg").write_bytes(b"\x00garbage" * 100)
    (root / "bad/half.jpg").write_bytes(data[: len(data) // 2])
    (root / "bad/no_eoi.jpg").write_bytes(data[:-2])
    png = (root / "p1/s1/port.png").read_bytes()
    (root / "bad/half.png").write_bytes(png[: len(png) // 2])
    Image.fromarray(np.full((80, 80), 4000, dtype=np.uint16)).save(root / "bad/sixteen.png")
    (root / "bad/folder.jpg").mkdir()
    return root


GOOD = ["p1/s1/land.jpg", "p1/s1/port.png", "p1/s1/rgb.png", "p1/s1/rgb.jpg", "p1/s1/large.jpg", "p1/s1/tiny.png"]
BAD_REASONS = {
    "bad/missing.jpg": "missing file",
    "bad/garbage.jpg": "corrupt: not a recognised image format",
    "bad/half.jpg": "truncated",
    "bad/no_eoi.jpg": "truncated",
    "bad/half.png": "corrupt:",
    "bad/sixteen.png": "unsupported image mode I;16",
    "bad/folder.jpg": "unreadable",
}


@pytest.fixture(scope="module")
def built(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One cache over good and bad ids, built in-process with skip_bad."""
    out = tmp_path_factory.mktemp("cache")
    report = build_cache(
        [*GOOD, *BAD_REASONS], image_root=images, out_dir=out, size=SIZE, workers=1, skip_bad=True, progress=False
    )
    return out, report


@pytest.mark.parametrize("image_id", [i for i in GOOD if i != "p1/s1/large.jpg"])
def test_full_decode_path_equals_reference_exactly(images: Path, image_id: str) -> None:
    assert open_reduced(images / image_id, SIZE)[2] is None  # too small for draft
    np.testing.assert_array_equal(load_square(images / image_id, SIZE), reference(images / image_id, SIZE))


@pytest.mark.parametrize("size", [256, 448])
def test_draft_decodes_reduced_but_close_to_reference(images: Path, size: int) -> None:
    path = images / "p1/s1/large.jpg"  # 1200 x 1500
    img, target, box = open_reduced(path, size)
    img.close()
    assert target == (size, int(size * 1500 / 1200))
    expected_scale = 4 if size == 256 else 2  # largest of 8/4/2 with 1200 / scale >= size
    assert img.size == (1200 // expected_scale, 1500 // expected_scale) and box is not None
    assert img.size[0] >= target[0] and img.size[1] >= target[1]
    diff = np.abs(load_square(path, size).astype(int) - reference(path, size).astype(int))
    assert diff.max() <= 4 and diff.mean() < 1.0


def test_draft_below_target_falls_back_to_full_decode(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = images / "p1/s1/large.jpg"
    real_draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, mode, size: real_draft(self, mode, (8, 8)))
    img, _, box = open_reduced(path, 256)
    assert img.size == (1200, 1500) and box is None
    img.close()
    np.testing.assert_array_equal(load_square(path, 256), reference(path, 256))


def test_build_maps_ids_to_rows_and_pixels(images: Path, built: tuple[Path, object]) -> None:
    out, report = built
    cache = ImageCache.open(out)
    ids = [*GOOD, *BAD_REASONS]
    assert len(cache) == len(ids) and cache.size == SIZE and list(cache.image_ids) == ids
    assert [cache.row_of(i) for i in ids] == list(range(len(ids)))
    assert pl.read_parquet(out / "index.parquet").schema == {"row": pl.Int64, "image_id": pl.String}
    wanted = ["p1/s1/large.jpg", "p1/s1/land.jpg", "p1/s1/port.png"]
    batch = cache.get(pl.Series(wanted))
    assert batch.shape == (3, SIZE, SIZE) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], reference(images / wanted[1], SIZE))
    np.testing.assert_array_equal(batch[2], reference(images / wanted[2], SIZE))
    np.testing.assert_array_equal(batch[0], cache.array[cache.row_of(wanted[0])])
    assert not cache.array.flags.writeable
    with pytest.raises(DataError, match="not in the cache"):
        cache.get(["p1/s1/nope.jpg"])
    again = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(again.get(wanted), batch)


def test_bad_images_reported_with_reasons(built: tuple[Path, object]) -> None:
    out, report = built
    assert (report.n_total, report.n_ok, report.n_bad, report.n_skipped_already_done) == (13, 6, 7, 0)
    reasons = dict(report.bad)
    assert list(reasons) == list(BAD_REASONS)  # row order
    for image_id, needle in BAD_REASONS.items():
        assert needle in reasons[image_id], (image_id, reasons[image_id])
    assert read_bad_images(out) == report.bad
    cache = ImageCache.open(out)
    assert cache.bad_ids == list(BAD_REASONS)
    assert not cache.array[cache.rows_of(list(BAD_REASONS))].any()  # bad rows hold zeros
    with pytest.raises(DataError, match="marked bad"):
        cache.get(["bad/half.jpg"])
    manifest = read_manifest(out)
    assert manifest["counts"] == {"ok": 6, "bad": 7, "todo": 0} and manifest["finished"] is not None
    assert manifest["size"] == SIZE and manifest["shape"] == [13, SIZE, SIZE] and "BICUBIC" in manifest["resample"]


def test_without_skip_bad_raises_after_processing_everything(images: Path, tmp_path: Path) -> None:
    ids = ["p1/s1/land.jpg", "bad/missing.jpg", "bad/no_eoi.jpg", "p1/s1/port.png"]
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as training code often sets it; the cache must still refuse
    try:
        with pytest.raises(BadImagesError) as caught:
            build_cache(ids, image_root=images, out_dir=tmp_path, size=SIZE, workers=1, progress=False)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    err = caught.value
    assert isinstance(err, DataError) and err.n_bad == 2 and "bad/no_eoi.jpg" in str(err)
    assert err.report.n_ok == 2 and [b[0] for b in err.report.bad] == ["bad/missing.jpg", "bad/no_eoi.jpg"]
    cache = ImageCache.open(tmp_path)  # progress kept: every row processed
    np.testing.assert_array_equal(cache.get(["p1/s1/port.png"])[0], reference(images / "p1/s1/port.png", SIZE))


def test_fixed_bad_image_is_retried_on_rerun(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "x").mkdir(parents=True)
    good = images / "p1/s1/land.jpg"
    (root / "x/a.jpg").write_bytes(good.read_bytes())
    ids = ["x/a.jpg", "x/b.jpg"]
    first = build_cache(
        ids, image_root=root, out_dir=tmp_path / "c", size=SIZE, workers=1, skip_bad=True, progress=False
    )
    assert first.bad == [("x/b.jpg", "missing file")] and (tmp_path / "c/bad_images.csv").exists()
    (root / "x/b.jpg").write_bytes(good.read_bytes())
    second = build_cache(ids, image_root=root, out_dir=tmp_path / "c", size=SIZE, workers=1, progress=False)
    assert (second.n_ok, second.n_bad, second.n_skipped_already_done) == (1, 0, 1)
    assert not (tmp_path / "c/bad_images.csv").exists()
    cache = ImageCache.open(tmp_path / "c")
    np.testing.assert_array_equal(cache.get(["x/b.jpg"])[0], reference(good, SIZE))


def test_parallel_build_equals_serial_build(images: Path, built: tuple[Path, object], tmp_path: Path) -> None:
    report = build_cache(
        [*GOOD, *BAD_REASONS], image_root=images, out_dir=tmp_path, size=SIZE, workers=2, skip_bad=True, progress=False
    )
    assert report.bad == built[1].bad
    for name in ("images.u8", "status.u8"):
        assert (tmp_path / name).read_bytes() == (built[0] / name).read_bytes()


def test_resume_after_partial_build_redoes_only_unfinished_rows(images: Path, tmp_path: Path) -> None:
    ids = list(GOOD)
    build_cache(ids, image_root=images, out_dir=tmp_path / "fresh", size=SIZE, workers=1, progress=False)
    out = tmp_path / "part"
    build_cache(ids, image_root=images, out_dir=out, size=SIZE, workers=1, progress=False)
    status = np.memmap(out / "status.u8", dtype=np.uint8, mode="r+")
    pixels = np.memmap(out / "images.u8", dtype=np.uint8, mode="r+", shape=(len(ids), SIZE, SIZE))
    status[[1, 4]] = PENDING  # as if killed after writing garbage pixels but before marking the rows
    pixels[[1, 4]] = 255
    status.flush(), pixels.flush()
    del status, pixels
    with pytest.raises(DataError, match="run cache again to resume"):
        ImageCache.open(out)
    report = build_cache(ids, image_root=images, out_dir=out, size=SIZE, workers=1, progress=False)
    assert (report.n_ok, report.n_skipped_already_done) == (2, 4)
    assert (out / "images.u8").read_bytes() == (tmp_path / "fresh/images.u8").read_bytes()


KILLED_BUILD = """
import sys, time
import engine.data.cache as cache
real = cache.load_square
def slow(path, size):
    time.sleep(0.02)  # slow enough that the parent can kill the build mid-way
    return real(path, size)
cache.load_square = slow
from engine.data.cache_build import build_cache
ids = [line for line in sys.argv[3].split(",")]
build_cache(ids, image_root=sys.argv[1], out_dir=sys.argv[2], size=64, workers=1, progress=False)
"""


def test_resume_after_sigkill_gives_identical_bytes(tmp_path: Path) -> None:
    images = tmp_path / "root"
    images.mkdir()
    ids = [f"r{i:03d}.png" for i in range(80)]
    for i, image_id in enumerate(ids):
        Image.fromarray(smooth_noisy(70 + i % 7, 90, i)).save(images / image_id)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_BUILD), str(images), str(out), ",".join(ids)],
        env=env,
        cwd=PROJECT_ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status_file = out / "status.u8"
        if (out / "manifest.json").exists() and (np.fromfile(status_file, dtype=np.uint8) == OK).sum() >= 20:
            break
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    status = np.fromfile(out / "status.u8", dtype=np.uint8)
    assert 20 <= (status == OK).sum() < len(ids), "build finished before the kill: nothing to resume"
    assert read_manifest(out)["finished"] is None
    with pytest.raises(DataError, match="run cache again to resume"):
        ImageCache.open(out)
    resumed = build_cache(ids, image_root=images, out_dir=out, size=SIZE, workers=1, progress=False)
    assert resumed.n_skipped_already_done == (status == OK).sum()
    assert resumed.n_ok == len(ids) - resumed.n_skipped_already_done
    fresh = build_cache(ids, image_root=images, out_dir=tmp_path / "fresh", size=SIZE, workers=1, progress=False)
    assert fresh.n_ok == len(ids)
    assert (out / "images.u8").read_bytes() == (tmp_path / "fresh/images.u8").read_bytes()
    assert (out / "status.u8").read_bytes() == (tmp_path / "fresh/status.u8").read_bytes()


def test_mismatched_rerun_fails_unless_force(images: Path, tmp_path: Path) -> None:
    ids = ["p1/s1/land.jpg", "p1/s1/port.png"]
    build_cache(ids, image_root=images, out_dir=tmp_path, size=SIZE, workers=1, progress=False)
    with pytest.raises(DataError, match="32 px asked"):
        build_cache(ids, image_root=images, out_dir=tmp_path, size=32, workers=1, progress=False)
    with pytest.raises(DataError, match="image ids differ"):
        build_cache([*ids, "p1/s1/rgb.png"], image_root=images, out_dir=tmp_path, size=SIZE, workers=1, progress=False)
    with pytest.raises(DataError, match="another order"):
        build_cache(ids[::-1], image_root=images, out_dir=tmp_path, size=SIZE, workers=1, progress=False)
    with pytest.raises(DataError, match="image_root"):
        build_cache(ids, image_root=images / "p1", out_dir=tmp_path, size=SIZE, workers=1, progress=False)
    report = build_cache(ids, image_root=images, out_dir=tmp_path, size=32, workers=1, force=True, progress=False)
    assert report.n_ok == 2 and ImageCache.open(tmp_path).size == 32
    assert (tmp_path / "images.u8").stat().st_size == 2 * 32 * 32


def test_invalid_ids_and_concurrent_build_are_refused(images: Path, tmp_path: Path) -> None:
    for bad_ids, needle in (
        ([], "no image ids"),
        (["a.jpg", "a.jpg"], "duplicate"),
        (["../x.jpg"], "relative"),
        (["/etc/x.jpg"], "relative"),
        (["a.jpg", None], "non-empty"),
    ):
        with pytest.raises(DataError, match=needle):
            normalise_ids(bad_ids)
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match="another cache build is running"):
            build_cache(["p1/s1/land.jpg"], image_root=images, out_dir=tmp_path, size=SIZE, progress=False)


def test_mark_excluded_rewrites_cohort(tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    cohort = pl.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "split": ["train", "test", "train", "validate"],
            "age": pl.Series([50, 60, 70, 80], dtype=pl.Int16),
        }
    )
    cohort.write_parquet(path)
    assert mark_excluded(path, [("b", "missing file"), ("d", "corrupt: x; y")]) == 2
    out = pl.read_parquet(path)
    assert out.columns == ["image_id", "split", "age", "excluded_reason"]
    assert out.schema["excluded_reason"] == pl.String and out.schema["age"] == pl.Int16
    assert out["excluded_reason"].to_list() == [None, "cache: missing file", None, "cache: corrupt: x, y"]
    # Another stage's reason is kept; the earlier cache reasons are replaced by this run's.
    out.with_columns(
        pl.when(pl.col("image_id") == "c")
        .then(pl.lit("prepare: no race"))
        .otherwise(pl.col("excluded_reason"))
        .alias("excluded_reason")
    ).write_parquet(path)
    assert mark_excluded(path, [("c", "missing file")]) == 1
    again = pl.read_parquet(path)
    assert again["excluded_reason"].to_list() == [None, None, "prepare: no race; cache: missing file", None]
    assert again.drop("excluded_reason").equals(cohort)
    with pytest.raises(DataError, match="not in this cohort"):
        mark_excluded(path, [("zzz", "missing file")])


def test_cohort_round_trip_keeps_id_list_stable_and_heals(images: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    good = (images / "p1/s1/land.jpg").read_bytes()
    for name in ("a.jpg", "c.jpg"):
        (root / name).write_bytes(good)
    path = tmp_path / "cohort.parquet"
    pl.DataFrame(
        {"image_id": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "excluded_reason": [None, None, None, "prepare: no race"]}
    ).write_parquet(path)
    ids, left_out = ids_to_cache(pl.read_parquet(path))
    assert ids.to_list() == ["a.jpg", "b.jpg", "c.jpg"] and left_out == 1
    kwargs = {"image_root": root, "out_dir": tmp_path / "c", "size": SIZE, "workers": 1, "progress": False}
    report = build_cache(ids, skip_bad=True, **kwargs)
    assert mark_excluded(path, report.bad) == 1
    assert pl.read_parquet(path)["excluded_reason"].to_list()[1] == "cache: missing file"
    # Rerun after marking: same id list (no force needed); the restored file is retried and un-marked.
    (root / "b.jpg").write_bytes(good)
    ids_again, _ = ids_to_cache(pl.read_parquet(path))
    assert ids_again.to_list() == ids.to_list()
    again = build_cache(ids_again, **kwargs)
    assert (again.n_ok, again.n_bad) == (1, 0)
    assert mark_excluded(path, again.bad) == 0
    assert pl.read_parquet(path)["excluded_reason"].to_list() == [None, None, None, "prepare: no race"]


def test_real_nih_pngs_match_reference(realdata: Path, tmp_path: Path) -> None:
    root = realdata / "nih-cxr14"
    ids = ["00000001_000.png", "00027426_000.png"]
    report = build_cache(ids, image_root=root, out_dir=tmp_path, size=256, workers=1, progress=False)
    assert (report.n_ok, report.n_bad) == (2, 0)
    cache = ImageCache.open(tmp_path)
    for image_id, pixels in zip(ids, cache.get(ids), strict=False):
        expected = np.asarray(Image.open(root / image_id).convert("L").resize((256, 256), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(pixels, expected)
        assert 40 < pixels.mean() < 220 and pixels.std() > 20  # a radiograph, not a blank
