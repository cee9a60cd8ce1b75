"""Contracts of the embedded benchmark (ablations/data/synthetic.py): the sample format of ablations/data/__init__.py,
determinism per (seed, split, index), coverage of classes and size buckets, and texture carrying no class."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ablations.data import IGNORE_INDEX, NUM_CLASSES, SIZE_BUCKETS
from ablations.data.synthetic import CLASS_NAMES, MEDIUM_SIDE, SMALL_SIDE, SyntheticShapes, size_bucket

N = 200


@pytest.fixture(scope="module")
def dataset() -> SyntheticShapes:
    return SyntheticShapes(split="train", num_samples=N, image_size=64, seed=0)


@pytest.fixture(scope="module")
def rendered(dataset):
    return [dataset.render(i) for i in range(N)]


def test_metadata_matches_the_data_package():
    ds = SyntheticShapes(num_samples=1)
    assert ds.num_classes == len(CLASS_NAMES) == len(ds.class_names) == NUM_CLASSES["synthetic"]
    assert ds.class_names[0] == SyntheticShapes.CLASS_NAMES[0] == "background"
    assert ds.ignore_index == IGNORE_INDEX == 255
    assert len(ds) == 1
    assert len(set(ds.class_names)) == ds.num_classes


@pytest.mark.parametrize("image_size", [16, 37, 64])
def test_fields_shapes_dtypes_and_ranges(image_size):
    ds = SyntheticShapes(num_samples=20, image_size=image_size, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        assert set(item) == {"image", "mask", "size"}
        image, mask, size = item["image"], item["mask"], item["size"]
        assert image.shape == (3, image_size, image_size) and image.dtype == torch.float32
        assert mask.shape == size.shape == (image_size, image_size)
        assert mask.dtype == size.dtype == torch.int64
        assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
        assert mask.min() >= 0 and mask.max() < ds.num_classes
        assert set(size.unique().tolist()) <= set(range(len(SIZE_BUCKETS)))
        # Background (including clutter) is bucket 0 and every object pixel has a real bucket.
        assert torch.equal(size == 0, mask == 0)


def test_instance_map_agrees_with_mask_size_and_objects(rendered):
    for sample in rendered[:50]:
        inst = sample.instance
        assert torch.equal(inst == 0, sample.mask == 0)
        for k, obj in enumerate(sample.objects):
            pixels = inst == k + 1
            assert (sample.mask[pixels] == obj.label).all()
            assert (sample.size[pixels] == obj.bucket).all()


def test_same_seed_split_index_gives_identical_items_in_any_order_and_instance():
    a = SyntheticShapes(split="val", num_samples=30, image_size=48, seed=7)
    b = SyntheticShapes(split="val", num_samples=30, image_size=48, seed=7)
    forward = {i: a[i] for i in range(30)}
    backward = {i: b[i] for i in reversed(range(30))}
    again = {i: a[i] for i in (29, 3, 17, 3, 0)}
    for i in range(30):
        for key in ("image", "mask", "size"):
            assert torch.equal(forward[i][key], backward[i][key])
            if i in again:
                assert torch.equal(forward[i][key], again[i][key])


def test_dataloader_workers_see_the_same_items():
    ds = SyntheticShapes(num_samples=8, image_size=32, seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    for b, batch in enumerate(batches):
        for j in range(4):
            item = ds[4 * b + j]
            assert torch.equal(batch["image"][j], item["image"])
            assert torch.equal(batch["mask"][j], item["mask"])


def test_seeds_and_splits_differ():
    base = SyntheticShapes(split="train", num_samples=5, image_size=32, seed=0)
    other_seed = SyntheticShapes(split="train", num_samples=5, image_size=32, seed=1)
    other_split = SyntheticShapes(split="val", num_samples=5, image_size=32, seed=0)
    for i in range(5):
        assert not torch.equal(base[i]["image"], other_seed[i]["image"])
        assert not torch.equal(base[i]["image"], other_split[i]["image"])
    assert not torch.equal(base[0]["image"], base[1]["image"])


def test_every_class_and_size_bucket_appears(rendered):
    classes = torch.zeros(len(CLASS_NAMES), dtype=torch.int64)
    buckets = torch.zeros(len(SIZE_BUCKETS), dtype=torch.int64)
    for sample in rendered:
        classes += torch.bincount(sample.mask.flatten(), minlength=len(CLASS_NAMES))
        buckets += torch.bincount(sample.size.flatten(), minlength=len(SIZE_BUCKETS))
    assert (classes > 0).all(), dict(zip(CLASS_NAMES, classes.tolist(), strict=True))
    assert (buckets > 0).all(), dict(zip(SIZE_BUCKETS, buckets.tolist(), strict=True))
    # Background should be common but not everything: there are objects to segment.
    assert 0.4 < classes[0] / classes.sum() < 0.95


def test_sizes_span_small_to_large_and_buckets_are_balanced(rendered):
    fractions = np.array([obj.area / 64**2 for s in rendered for obj in s.objects])
    buckets = np.array([obj.bucket for s in rendered for obj in s.objects])
    assert fractions.min() < 0.01 and fractions.max() > 0.25
    # Small objects must be visible, not just listed: some object under 1 % of the image shows ≥ 10 pixels.
    visible_small = [
        int((s.instance == k + 1).sum()) for s in rendered for k, obj in enumerate(s.objects) if obj.area / 64**2 < 0.01
    ]
    assert max(visible_small) >= 10
    shares = np.bincount(buckets, minlength=4)[1:] / len(buckets)
    assert (shares > 0.2).all(), shares
    # The documented thresholds.
    assert size_bucket(0.99 * SMALL_SIDE**2, 1.0) == 1 and size_bucket(SMALL_SIDE**2, 1.0) == 2
    assert size_bucket(0.99 * MEDIUM_SIDE**2, 1.0) == 2 and size_bucket(MEDIUM_SIDE**2, 1.0) == 3


def test_size_distribution_does_not_depend_on_class(rendered):
    """Area, not radius, is sampled, so every class has the same size distribution."""
    per_class = {c: [] for c in range(1, len(CLASS_NAMES))}
    for s in rendered:
        for obj in s.objects:
            per_class[obj.label].append(math.log(obj.area))
    medians = [np.median(v) for v in per_class.values()]
    assert max(medians) - min(medians) < 1.0  # log-area spans ≈ 7; a class-specific size would differ by more


def test_texture_id_is_independent_of_class(rendered, dataset):
    """Chi-square test of independence on the (class, texture id) table of every object."""
    table = np.zeros((len(CLASS_NAMES) - 1, dataset.num_textures))
    for s in rendered:
        for obj in s.objects:
            table[obj.label - 1, obj.texture] += 1
    table = table[:, table.sum(0) > 0]  # a texture no object drew has no expected count
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    dof = (table.shape[0] - 1) * (table.shape[1] - 1)
    assert chi2 < dof + 4 * math.sqrt(2 * dof), (chi2, dof)  # dependence on class gives thousands


def test_object_appearance_carries_no_class_information(rendered):
    """Per-class averages of each object's mean grey level and texture contrast (std of grey inside the object)
    agree across classes. Textures alone range from std 0.00 (near-flat) to 0.10 (checkerboards), so a texture or
    colour tied to the class would spread the per-class averages far beyond the tolerances."""
    features: dict[int, list[tuple[float, float]]] = {c: [] for c in range(1, len(CLASS_NAMES))}
    for s in rendered:
        grey = s.image.mean(0)
        for k, obj in enumerate(s.objects):
            pixels = grey[s.instance == k + 1]
            if pixels.numel() >= 64:
                features[obj.label].append((pixels.mean().item(), pixels.std().item()))
    means = np.array([np.mean(f, axis=0) for f in features.values()])
    assert min(len(f) for f in features.values()) >= 30
    assert np.ptp(means[:, 0]) < 0.06, means[:, 0]
    assert np.ptp(means[:, 1]) < 0.03, means[:, 1]  # 0.02 here; three textures per class gives 0.047


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"split": "training"}, ValueError, "split='training'"),
        ({"num_samples": 0}, ValueError, "num_samples=0"),
        ({"image_size": 15}, ValueError, "image_size=15"),
        ({"seed": -1}, ValueError, "seed=-1"),
        ({"max_objects": 0}, ValueError, "max_objects=0"),
        ({"max_distractors": -1}, ValueError, "max_distractors=-1"),
        ({"num_textures": 0}, ValueError, "num_textures=0"),
        ({"image_size": 64.0}, TypeError, "image_size=64.0"),
        ({"background_contrast": 1.5}, ValueError, "background_contrast=1.5"),
        ({"foreground_cue": -0.1}, ValueError, "foreground_cue=-0.1"),
        ({"shapes": ("disk", "hexagon")}, ValueError, "shapes=['disk', 'hexagon']"),
        ({"shapes": ("disk", "disk")}, ValueError, "shapes=['disk', 'disk']"),
        ({"shapes": ()}, ValueError, "shapes=[]"),
    ],
)
def test_bad_arguments_raise(kwargs, error, needle):
    with pytest.raises(error, match=re.escape(needle)):
        SyntheticShapes(**kwargs)


def test_bad_split_message_lists_allowed_splits():
    with pytest.raises(ValueError, match=r"allowed \['test', 'train', 'val'\]"):
        SyntheticShapes(split="eval")


@pytest.mark.parametrize("index", [-1, 3, 100])
def test_index_out_of_range_raises(index):
    ds = SyntheticShapes(num_samples=3, image_size=16)
    with pytest.raises(IndexError, match=rf"index={index}: allowed 0 ≤ index < num_samples=3"):
        ds[index]
    with pytest.raises(IndexError):
        ds.render(index)


def test_numpy_integer_index_is_accepted():
    ds = SyntheticShapes(num_samples=3, image_size=16)
    assert torch.equal(ds[np.int64(2)]["image"], ds[2]["image"])
    with pytest.raises(TypeError, match=r"index=1\.5"):
        ds[1.5]


def test_shape_subset_relabels_without_changing_geometry():
    """shapes=("cross", "disk") gives labels 1 = cross, 2 = disk; the drawn geometry follows the name, which the
    exact area / R² of each object shows (disk π, cross 8β − 4β² ∈ [0.90, 2.04])."""
    ds = SyntheticShapes(num_samples=40, image_size=48, shapes=("cross", "disk"))
    assert ds.num_classes == 3 and ds.class_names == ("background", "cross", "disk")
    seen = set()
    for i in range(len(ds)):
        sample = ds.render(i)
        assert set(sample.mask.unique().tolist()) <= {0, 1, 2}
        for k, obj in enumerate(sample.objects):
            ratio = obj.area / obj.radius**2
            if obj.label == 2:
                assert ratio == pytest.approx(math.pi)
            else:
                assert obj.label == 1 and 0.89 < ratio < 2.05
            assert (sample.mask[sample.instance == k + 1] == obj.label).all()
            seen.add(obj.label)
    assert seen == {1, 2}


def test_background_contrast_only_changes_the_background():
    flat = SyntheticShapes(num_samples=10, image_size=32, max_distractors=0, background_contrast=0.0)
    full = SyntheticShapes(num_samples=10, image_size=32, max_distractors=0)
    changed = 0
    for i in range(len(flat)):
        a, b = flat.render(i), full.render(i)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.size, b.size)
        objects = a.instance > 0
        assert torch.equal(a.image[:, objects], b.image[:, objects])
        # Without clutter the background is one or two regions, each a single colour at zero contrast.
        background = a.image[:, ~objects].T
        assert len(torch.unique(background, dim=0)) <= 2
        changed += not torch.equal(a.image, b.image)
    assert changed > 0


def test_foreground_cue_separates_brightness_and_changes_nothing_else():
    plain = SyntheticShapes(num_samples=12, image_size=32)
    cued = SyntheticShapes(num_samples=12, image_size=32, foreground_cue=1.0)
    for i in range(len(plain)):
        a, b = plain.render(i), cued.render(i)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.size, b.size) and torch.equal(a.instance, b.instance)
        assert a.objects == b.objects
        objects = b.instance > 0
        # At cue 1 every object pixel is in [0.6, 1] and no object pixel is darker than the brightest background.
        assert b.image[:, objects].min() >= 0.6 - 1e-6
    background_only = [cued.render(i) for i in range(len(cued))]
    fragments = sum(int(((s.mask == 0) & (s.image.min(0).values >= 0.6)).sum()) for s in background_only)
    assert fragments > 0  # clutter is bright too (labelled background), so brightness alone cannot reject it


def test_class_by_size_labels_each_object_with_its_size_bucket_on_the_same_images():
    kwargs = {"num_samples": 6, "image_size": 96, "seed": 3}
    by_shape, by_size = SyntheticShapes(**kwargs), SyntheticShapes(**kwargs, class_by="size")
    assert by_size.class_names == ("background", "small", "medium", "large") and by_size.num_classes == 4
    for i in range(6):
        a, b = by_shape[i], by_size[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["size"], b["size"])
        assert torch.equal(b["mask"], b["size"])  # the label is the bucket, pixel for pixel
        assert torch.equal(a["mask"] > 0, b["mask"] > 0)
    with pytest.raises(ValueError, match="class_by='colour'"):
        SyntheticShapes(**kwargs, class_by="colour")


def test_class_by_is_a_validated_config_field():
    from ablations.config import ConfigError, load_config

    assert load_config(overrides=["data.class_by=size"]).data.class_by == "size"
    with pytest.raises(ConfigError, match=r"data\.class_by"):
        load_config(overrides=["data.class_by=colour"])


def test_an_item_is_its_scene_rasterised_and_every_scene_fits_the_fixed_sizes():
    """__getitem__ = scene draw + NumPy rasteriser; the scene's arrays have the sizes a default collate stacks,
    also with many clutter fragments (strokes take up to 3 primitives each)."""
    ds = SyntheticShapes(num_samples=40, image_size=48, seed=9, max_distractors=10, max_objects=3)
    for i in range(40):
        scene = ds.scene(i)
        assert scene.kind.shape == (ds.max_primitives,) and scene.params.shape[0] == ds.max_primitives
        assert scene.label.shape == (ds.max_layers,) and scene.colour.shape == (ds.max_layers, 2, 3)
        layers = ds.rasterise(scene)
        item = ds[i]
        assert torch.equal(item["mask"], torch.from_numpy(scene.label[layers]))
        assert torch.equal(item["size"], torch.from_numpy(scene.bucket[layers]))
        assert int(layers.max()) < ds.max_layers


def test_the_item_cache_returns_what_rendering_gives_and_keys_on_every_parameter(monkeypatch):
    from ablations.data.synthetic import ITEMS

    ITEMS.clear()
    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", "0")
    fresh = SyntheticShapes(num_samples=4, image_size=32, shapes=("disk",))[3]
    assert len(ITEMS) == 0  # off
    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", "64")
    first = SyntheticShapes(num_samples=4, image_size=32, shapes=("disk",))[3]
    again = SyntheticShapes(num_samples=4, image_size=32, shapes=("disk",))[3]  # another dataset, same parameters
    assert len(ITEMS) == 1 and again["image"] is first["image"]
    for key in fresh:
        assert torch.equal(fresh[key], again[key])
    SyntheticShapes(num_samples=4, image_size=32, shapes=("square",))[3]  # shapes is part of the key
    assert len(ITEMS) == 2
    assert again["mask"].dtype == fresh["mask"].dtype == torch.int64  # kept as uint8, handed back as it came
    # Beyond the budget the least recently used go: one 32² item is 32·32·(3·4 + 1 + 1) bytes = 14 KiB.
    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", str(60 / 1024))
    ds = SyntheticShapes(num_samples=8, image_size=32)
    for i in range(8):
        ds[i]
    assert len(ITEMS) == 4
    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="ABLATIONS_ITEM_CACHE_MB='lots'"):
        ds[0]
    ITEMS.clear()


def test_a_seeded_training_sample_is_kept_for_the_next_run_with_the_same_data_and_seed(monkeypatch):
    import functools

    from ablations.data.synthetic import ITEMS
    from ablations.training.datamodule import Transformed, training_sample

    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", "64")
    ITEMS.clear()
    recipe = {"crop_size": 24, "scale_range": (0.5, 2.0), "flip": True}
    transform = functools.partial(training_sample, **recipe)

    def sample(stream_seed, **data):
        return Transformed(SyntheticShapes(num_samples=4, image_size=32, **data), transform)[(2, stream_seed)]

    first, again = sample(7), sample(7)  # two datasets (two trials), one stream
    assert again["image"] is first["image"] and again["mask"].dtype == first["mask"].dtype == torch.uint8
    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", "0")
    fresh = sample(7)  # the cache off: rendered and augmented afresh, the same sample
    assert fresh["image"] is not first["image"]
    assert torch.equal(fresh["image"], first["image"]) and torch.equal(fresh["mask"], first["mask"])
    monkeypatch.setenv("ABLATIONS_ITEM_CACHE_MB", "64")
    assert not torch.equal(sample(8)["image"], first["image"])  # another seed, another crop
    assert sample(7, seed=1)["image"] is not first["image"]  # other data
    ITEMS.clear()
