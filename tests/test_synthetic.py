"""The embedded benchmark: formats, determinism, class and size coverage, texture sharing, difficulty knobs."""

from __future__ import annotations

import pytest
import torch

from ablations.data.synthetic import CLASS_NAMES, SyntheticShapes


@pytest.fixture(scope="module")
def dataset():
    return SyntheticShapes(split="train", num_samples=200, image_size=64, seed=0)


def test_sample_format(dataset):
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["image"].min() >= 0.0 and sample["image"].max() <= 1.0
    assert sample["mask"].dtype == sample["size"].dtype == torch.int64
    assert int(sample["mask"].max()) < dataset.num_classes == len(CLASS_NAMES)
    assert set(sample["size"].unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(sample["size"] == 0, sample["mask"] == 0)  # background and clutter are bucket 0


def test_deterministic_per_seed_split_and_index(dataset):
    again = SyntheticShapes(split="train", num_samples=200, image_size=64, seed=0)
    for index in (7, 3, 7):
        assert all(torch.equal(dataset[index][k], again[index][k]) for k in ("image", "mask", "size"))
    assert not torch.equal(
        dataset[3]["image"], SyntheticShapes(split="val", num_samples=200, image_size=64)[3]["image"]
    )
    assert not torch.equal(dataset[3]["image"], SyntheticShapes(num_samples=200, image_size=64, seed=1)[3]["image"])


def test_every_class_and_every_size_bucket_occurs(dataset):
    classes, buckets, fractions = set(), set(), []
    for index in range(200):
        sample = dataset.render(index)
        classes |= set(sample.mask.unique().tolist())
        buckets |= set(sample.size.unique().tolist())
        fractions += [o.area / 64**2 for o in sample.objects]
    assert classes == set(range(len(CLASS_NAMES)))
    assert buckets == {0, 1, 2, 3}
    assert min(fractions) < 0.01 and max(fractions) > 0.25  # a few pixels to most of the image


def test_texture_is_drawn_independently_of_the_class(dataset):
    by_class: dict[int, set[int]] = {}
    for index in range(200):
        for spec in dataset.render(index).objects:
            by_class.setdefault(spec.label, set()).add(spec.texture)
    assert len(by_class) == 7
    shared = set.intersection(*by_class.values())
    assert len(shared) >= 12  # of 24: every class wears most textures, so texture cannot name the class


def test_shape_subset_relabels_and_counts_classes():
    subset = SyntheticShapes(num_samples=50, image_size=64, shapes=("disk", "cross", "bar"))
    assert subset.class_names == ("background", "disk", "cross", "bar") and subset.num_classes == 4
    labels = set()
    for index in range(50):
        sample = subset.render(index)
        labels |= set(sample.mask.unique().tolist())
        assert {CLASS_NAMES[o.label] for o in sample.objects} <= {"disk", "cross", "bar"}
    assert labels == {0, 1, 2, 3}


def test_background_contrast_flattens_only_the_background():
    flat = SyntheticShapes(num_samples=20, image_size=64, max_distractors=0, background_contrast=0.0)
    full = SyntheticShapes(num_samples=20, image_size=64, max_distractors=0)
    for index in range(20):
        a, b = flat[index], full[index]
        assert torch.equal(a["mask"], b["mask"])
        objects = a["mask"] > 0
        assert torch.equal(a["image"][:, objects], b["image"][:, objects])  # objects untouched
    one_region = next(i for i in range(20) if flat[i]["image"][:, flat[i]["mask"] == 0].std(1).max() < 1e-6)
    assert one_region is not None  # a single-region background becomes one flat colour


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_samples": 0}, "num_samples=0"),
        ({"image_size": 8}, "image_size=8"),
        ({"split": "dev"}, "split='dev'"),
        ({"background_contrast": 1.5}, "background_contrast=1.5"),
        ({"shapes": ("disk", "hexagon")}, "shapes="),
        ({"shapes": ()}, "shapes="),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        SyntheticShapes(**kwargs)


def test_index_out_of_range(dataset):
    with pytest.raises(IndexError, match="index=200"):
        dataset[200]
