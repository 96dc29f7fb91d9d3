"""The fine-tuning input pipeline against its former per-image form: whole-batch reads of the cache and the uint8
timm transform (normalised on the device) must give exactly the batches and model inputs the per-image dataset
with default_collate and timm's float transform gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import MaybeToTensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from engine.data.cache_read import IMAGES_FILE, OK, STATUS_FILE, ImageCache, create_store, open_array, write_manifest
from engine.data.schema import PATHOLOGIES
from engine.recipes import PAPER_RANDAUGMENT
from engine.train.batches import BatchPreparer, normalisation_table, normalise_rgb
from engine.train.data import (
    EPOCH_STRIDE,
    CachedImages,
    EpochSampler,
    make_loader,
    sample_seed,
    seeded,
    timm_train_transform,
)
from engine.train.split_table import SplitTable

SIZE, INPUT = 40, 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PerImage(Dataset):
    """The former CachedImages: one memmap read per image, collated by default_collate (the reference)."""

    def __init__(self, cache: ImageCache, table: SplitTable, transform=None, seed: int = 0):
        self.cache, self.transform, self.seed = cache, transform, seed
        self.rows = cache.rows_of(table.image_ids)
        self.targets = torch.from_numpy(table.targets)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), EPOCH_STRIDE)
        pixels = np.asarray(self.cache.array[self.rows[index]])
        if self.transform is None:
            image = torch.from_numpy(pixels.copy())
        else:
            with seeded(sample_seed(self.seed, epoch, index)):
                image = self.transform(Image.fromarray(pixels, mode="L").convert("RGB"))
        return image, self.targets[index], index


@pytest.fixture(params=[(rank, world, shuffle, drop_last) for rank, world in [(0, 1), (0, 2), (1, 2)]
                        for shuffle in (True, False) for drop_last in (True, False)],
                ids=lambda p: "rank{}-world{}-shuffle{}-droplast{}".format(*p))
def sampling(request) -> dict:
    """Batch options of every rank / world / shuffle / drop_last combination (batch 4, seed 7)."""
    rank, world, shuffle, drop_last = request.param
    return {"batch_size": 4, "rank": rank, "world": world, "shuffle": shuffle, "seed": 7, "drop_last": drop_last}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[ImageCache, SplitTable]:
    """A 40 px cache of 30 noise images and a 23-image table whose rows are out of cache order, NaN targets too."""
    root = tmp_path_factory.mktemp("input-pipeline")
    rng = np.random.default_rng(0)
    ids = [f"img{i:03d}.jpg" for i in range(30)]
    manifest = create_store(root / "cache", ids, SIZE, root, {"rule": "test noise", "decoder": "none"})
    array = open_array(root / "cache", IMAGES_FILE, (len(ids), SIZE, SIZE), "r+")
    array[:] = rng.integers(0, 256, array.shape, dtype=np.uint8)
    array.flush()
    status = open_array(root / "cache", STATUS_FILE, (len(ids),), "r+")
    status[:] = OK
    status.flush()
    write_manifest(root / "cache", manifest, {"ok": len(ids), "bad": 0, "todo": 0}, "test")
    chosen = [ids[i] for i in rng.permutation(len(ids))[:23]]
    targets = rng.choice([0.0, 1.0, np.nan], (len(chosen), len(PATHOLOGIES))).astype(np.float32)
    return ImageCache.open(root / "cache"), SplitTable("train", chosen, targets)


def reference_loader(dataset: Dataset, *, batch_size: int, rank: int, world: int, shuffle: bool, seed: int,
                     drop_last: bool) -> DataLoader:
    sampler = EpochSampler(len(dataset), rank=rank, world=world, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)


def epochs_of(loader: DataLoader, epochs=(0, 1)) -> list:
    batches = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        batches += list(loader)
    return batches


def assert_same_batches(got: list, want: list) -> None:
    assert len(got) == len(want) > 0
    for got_batch, want_batch in zip(got, want, strict=True):
        assert len(got_batch) == len(want_batch) == 3
        for a, b in zip(got_batch, want_batch, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # dtype and shape too


def test_whole_batch_reads_give_the_per_image_batches(images, sampling):
    cache, table = images
    loader = make_loader(CachedImages(cache, table), workers=0, pin_memory=False, **sampling)
    reference = reference_loader(PerImage(cache, table), **sampling)
    assert len(loader) == len(reference)
    assert_same_batches(epochs_of(loader), epochs_of(reference))


def test_worker_batches_come_through_shared_memory_unchanged(images):
    cache, table = images
    options = {"batch_size": 5, "rank": 1, "world": 2, "shuffle": True, "seed": 3, "drop_last": False}
    loader = make_loader(CachedImages(cache, table), workers=2, pin_memory=False, **options)
    assert_same_batches(epochs_of(loader), epochs_of(reference_loader(PerImage(cache, table), **options)))


def test_getitems_handles_repeated_and_unsorted_keys(images):
    """DistributedSampler pads with repeated indices; the sorted read must still return batch order."""
    cache, table = images
    keys = [EPOCH_STRIDE * 2 + i for i in (5, 0, 5, 22, 1, 0)]
    got = CachedImages(cache, table).__getitems__(keys)
    reference = PerImage(cache, table)
    want = torch.utils.data.default_collate([reference[k] for k in keys])
    assert_same_batches([got], [want])
    image, target, index = CachedImages(cache, table)[keys[3]]
    assert torch.equal(image, want[0][3]) and index == 22 and isinstance(index, int)


def test_normalisation_table_is_torchvision_arithmetic():
    """Every uint8 value of every channel: ToTensor + Normalize (what timm's float transform ends with)."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    pil = Image.fromarray(np.stack([values, values.T, values[::-1]], axis=-1), mode="RGB")
    want = transforms.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD))(MaybeToTensor()(pil))
    uint8 = torch.from_numpy(np.array(pil)).permute(2, 0, 1).unsqueeze(0)
    assert torch.equal(normalise_rgb(uint8, normalisation_table(MEAN, STD))[0], want)


@pytest.mark.parametrize("workers", [0, 2])
def test_uint8_timm_transform_gives_the_float_path_model_input(images, workers):
    """Same seeds: the model input of the uint8 path (normalised in BatchPreparer) equals, bit for bit, that of
    timm's float transform in the loader."""
    cache, table = images
    kwargs = {"scale": (0.08, 1.0), "hflip": 0.5, "randaugment": PAPER_RANDAUGMENT}
    options = {"batch_size": 4, "rank": 0, "world": 1, "shuffle": True, "seed": 11, "drop_last": True}
    new = make_loader(CachedImages(cache, table, transform=timm_train_transform(INPUT, MEAN, STD, **kwargs), seed=5),
                      workers=workers, pin_memory=False, **options)
    old = reference_loader(PerImage(cache, table, timm_train_transform(INPUT, MEAN, STD, normalise=True, **kwargs),
                                    seed=5), **options)
    prepare = BatchPreparer(torch.device("cpu"), size=INPUT, mean=MEAN, std=STD)
    new_batches, old_batches = epochs_of(new), epochs_of(old)
    assert new_batches[0][0].dtype == torch.uint8 and new_batches[0][0].shape == (4, 3, INPUT, INPUT)
    assert old_batches[0][0].dtype == torch.float32
    assert_same_batches([prepare(b, 0) for b in new_batches], [prepare(b, 0) for b in old_batches])


def test_device_resident_batches_equal_the_loader(images, sampling):
    from engine.train.device_batches import DeviceBatches

    cache, table = images
    resident = DeviceBatches(cache, table, device=torch.device("cpu"), **sampling)
    loader = make_loader(CachedImages(cache, table), workers=0, pin_memory=False, **sampling)
    assert len(resident) == len(loader)
    assert_same_batches(epochs_of(resident), epochs_of(loader))


def test_device_residence_is_never_chosen_on_cpu_and_trains_identically(images, monkeypatch, tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from engine_fixtures import build_tiny_cohort, tiny_config

    import engine.train.setup as setup
    from engine.train.device_batches import fits_on_device
    from engine.train.finetune import finetune

    assert not fits_on_device(1, torch.device("cpu"))
    paths = build_tiny_cohort(tmp_path / "cohort")
    weights = {}
    for resident in (False, True):
        monkeypatch.setattr(setup, "fits_on_device", lambda n, device, r=resident: r)
        config = tiny_config(paths, tmp_path / f"run-{resident}", train={"augmentation": "batched", "epochs": 1,
                                                                        "deterministic": True})
        finetune(config, log=lambda _: None)
        weights[resident] = torch.load(tmp_path / f"run-{resident}" / "tiny" / "last.pt", weights_only=False)["model"]
    for key, value in weights[False].items():
        assert torch.equal(value, weights[True][key]), key
