"""The DeepLab v3 §4 training transform: exact crop sizes, padding values, image/label alignment, randomness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ablations.data.datasets import VOCSegmentation
from ablations.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pad_to, random_scale_crop_flip
from tests.fixtures import write_voc

# Far-apart colours, so the nearest palette colour of a pixel tells which class it was painted with.
PALETTE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def size_of(mask: torch.Tensor) -> torch.Tensor:
    """A second label map that is a fixed function of the mask, as the synthetic "size" key is."""
    return torch.where(mask == 255, mask, (mask * 3 + 1) % 4)


def pattern(h: int, w: int, block: int, seed: int = 0) -> dict:
    """Asymmetric blocks of classes 0..3 and 255; the image is the class colour (PALETTE[4] where ignored)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 5, (-(-h // block), -(-w // block)), generator=g)
    grid[0, 0], grid[0, -1] = 0, 1  # left and right differ, so a flip is visible
    classes = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    mask = torch.where(classes == 4, 255, classes)
    return {"image": PALETTE[classes].permute(2, 0, 1).contiguous(), "mask": mask, "size": size_of(mask)}


def nearest_class(image: torch.Tensor) -> torch.Tensor:
    return torch.cdist(image.permute(1, 2, 0).reshape(-1, 3), PALETTE).argmin(1).view(image.shape[1:])


def test_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("hw", [(10, 12), (37, 45), (120, 90)])
@pytest.mark.parametrize("crop", [32, (24, 40)])
def test_output_is_exactly_the_crop_size(hw, crop):
    crop_hw = (crop, crop) if isinstance(crop, int) else crop
    for seed in range(8):
        torch.manual_seed(seed)
        out = random_scale_crop_flip(pattern(*hw, block=4), crop_size=crop)
        assert out["image"].shape == (3, *crop_hw) and out["image"].dtype == torch.float32
        for key in ("mask", "size"):
            assert out[key].shape == crop_hw and out[key].dtype == torch.int64
        assert all(out[k].is_contiguous() for k in ("image", "mask", "size"))
        # A crop must not keep the whole scaled image alive (it would travel between data-loader processes).
        assert out["image"].untyped_storage().nbytes() == out["image"].numel() * 4


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_padding_with_mean_and_ignore_when_smaller_than_crop(scale):
    sample = pattern(10, 14, block=2)
    sample["image"] = sample["image"] * 0.5 + 0.25  # keep the content away from the mean values
    out = random_scale_crop_flip(sample, crop_size=32, scale_range=(scale, scale), flip=False)
    h, w = round(10 * scale), round(14 * scale)
    image, mask = out["image"], out["mask"]
    if scale == 1.0:
        assert torch.equal(image[:, :h, :w], sample["image"]) and torch.equal(mask[:h, :w], sample["mask"])
    pad = torch.ones(32, 32, dtype=torch.bool)
    pad[:h, :w] = False
    assert torch.equal(image[:, pad], MEAN.view(3, 1).expand(3, int(pad.sum())))
    assert (mask[pad] == 255).all() and (out["size"][pad] == 255).all()
    assert not (image[:, ~pad] == MEAN.view(3, 1)).all(0).any()  # the content was not overwritten
    # Mean padding becomes exactly zero after normalisation.
    normalised = (image - MEAN) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert normalised[:, pad].abs().max() < 1e-6


def test_scale_is_uniform_in_the_range():
    sample = {"image": torch.rand(3, 40, 40), "mask": torch.zeros(40, 40, dtype=torch.int64)}
    scales = []
    for _ in range(300):
        out = random_scale_crop_flip(sample, crop_size=96, scale_range=(0.5, 2.0))
        scales.append(((out["mask"] != 255).sum().item() ** 0.5) / 40)  # the crop holds the whole scaled image
    scales = torch.tensor(scales)
    assert scales.min() >= 0.5 - 1e-6 and scales.max() <= 2.0 + 1e-6
    assert scales.min() < 0.6 and scales.max() > 1.9 and abs(scales.mean().item() - 1.25) < 0.08


@pytest.mark.parametrize("scale", [2.0, 1.3, 0.75, 0.5])
def test_resize_is_bilinear_without_antialias_and_labels_nearest(scale):
    sample = pattern(24, 30, block=3)
    sample["image"] = torch.rand(3, 24, 30)
    h, w = int(24 * scale + 0.5), int(30 * scale + 0.5)  # round half up
    out = random_scale_crop_flip(sample, crop_size=(h, w), scale_range=(scale, scale), flip=False)
    expected = F.interpolate(sample["image"][None], size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(out["image"], expected[0])
    # Half-pixel-centred nearest: the same sampling grid as the bilinear image.
    nearest = F.interpolate(sample["mask"][None, None].float(), size=(h, w), mode="nearest-exact")
    assert torch.equal(out["mask"], nearest[0, 0].long())
    assert torch.equal(out["size"], size_of(out["mask"]))


def test_labels_stay_aligned_with_the_image_at_scale_one():
    sample = pattern(40, 52, block=5)
    for seed in range(20):
        torch.manual_seed(seed)
        out = random_scale_crop_flip(sample, crop_size=(48, 36), scale_range=(1.0, 1.0))
        mask, image = out["mask"], out["image"]
        valid = mask != 255
        assert torch.equal(image.permute(1, 2, 0)[valid], PALETTE[mask[valid]])
        assert torch.equal(out["size"], size_of(mask))


def test_labels_stay_aligned_with_the_image_under_scale_crop_flip():
    sample = pattern(64, 80, block=12, seed=1)
    for seed in range(20):
        torch.manual_seed(seed)
        out = random_scale_crop_flip(sample, crop_size=48)
        mask = out["mask"]
        valid = mask != 255
        if valid.sum() < 100:
            continue
        colour_class = nearest_class(out["image"])
        agree = (colour_class[valid] == mask[valid]).float().mean()
        # Bilinear blending only disagrees on thin bands at block edges; a misaligned (e.g. unflipped) mask
        # agrees only by chance.
        assert agree > 0.85, (seed, agree)
        assert (colour_class[valid] == mask.flip(-1)[valid]).float().mean() < agree - 0.1
        assert torch.equal(out["size"], size_of(mask))


def test_deterministic_under_manual_seed():
    sample = pattern(50, 70, block=4)
    torch.manual_seed(123)
    a = random_scale_crop_flip(sample, crop_size=40)
    torch.manual_seed(123)
    b = random_scale_crop_flip(sample, crop_size=40)
    c = random_scale_crop_flip(sample, crop_size=40)
    assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "size"))
    assert not torch.equal(a["image"], c["image"])  # the generator advanced: a fresh draw


def test_flip_happens_about_half_the_time():
    sample = pattern(16, 20, block=4)
    flipped = 0
    for _ in range(400):
        out = random_scale_crop_flip(sample, crop_size=(16, 20), scale_range=(1.0, 1.0))
        if torch.equal(out["image"], sample["image"].flip(-1)):
            assert torch.equal(out["mask"], sample["mask"].flip(-1))
            flipped += 1
        else:
            assert torch.equal(out["image"], sample["image"]) and torch.equal(out["mask"], sample["mask"])
    assert 150 < flipped < 250  # Binomial(400, 0.5): mean 200, sd 10
    unflipped = [random_scale_crop_flip(sample, crop_size=(16, 20), scale_range=(1, 1), flip=False) for _ in range(50)]
    assert all(torch.equal(o["image"], sample["image"]) for o in unflipped)


def test_other_keys_pass_through_untouched():
    sample = pattern(20, 20, block=4)
    weights = torch.rand(20, 20)
    sample |= {"name": "2007_000032", "weights": weights}
    out = random_scale_crop_flip(sample, crop_size=16)
    assert out["name"] == "2007_000032" and out["weights"] is weights
    assert set(out) == set(sample)


def test_input_sample_is_not_modified():
    sample = pattern(12, 12, block=3)
    copy = {k: v.clone() for k, v in sample.items()}
    random_scale_crop_flip(sample, crop_size=24)
    assert all(torch.equal(sample[k], copy[k]) for k in sample)


@pytest.mark.parametrize(
    ("kwargs", "sample_change", "match"),
    [
        ({"crop_size": 0}, {}, "crop_size"),
        ({"crop_size": 8, "scale_range": (2.0, 1.0)}, {}, "scale_range"),
        ({"crop_size": 8}, {"mask": torch.zeros(5, 6, dtype=torch.int64)}, r"sample\['mask'\]"),
        ({"crop_size": 8}, {"image": torch.zeros(3, 12, 12, dtype=torch.uint8)}, r"sample\['image'\]"),
    ],
)
def test_bad_inputs(kwargs, sample_change, match):
    with pytest.raises(ValueError, match=match):
        random_scale_crop_flip(pattern(12, 12, block=3) | sample_change, **kwargs)


def test_pad_to():
    sample = pattern(10, 7, block=2)
    out = pad_to(sample, (12, 9))
    assert out["image"].shape == (3, 12, 9) and out["mask"].shape == (12, 9) and out["size"].shape == (12, 9)
    assert torch.equal(out["image"][:, :10, :7], sample["image"]) and torch.equal(out["mask"][:10, :7], sample["mask"])
    assert (out["image"][:, 10:, :] == MEAN).all() and (out["image"][:, :, 7:] == MEAN).all()
    assert (out["mask"][10:, :] == 255).all() and (out["mask"][:, 7:] == 255).all()
    assert (pad_to(sample, (12, 9), ignore_index=0)["mask"][10:] == 0).all()
    assert torch.equal(pad_to(sample, (10, 7))["image"], sample["image"])
    with pytest.raises(ValueError, match="smaller"):
        pad_to(sample, (9, 9))


def test_on_a_real_dataset_sample(tmp_path):
    ds = VOCSegmentation(write_voc(tmp_path, size=(37, 45)), "train")
    out = random_scale_crop_flip(ds[0], crop_size=(33, 29))
    assert out["image"].shape == (3, 33, 29) and out["mask"].shape == (33, 29)
    values = out["mask"][out["mask"] != 255]
    assert values.numel() == 0 or values.max() < 21


def test_uint8_label_maps_follow_the_image_exactly_as_int64_ones():
    """The device path and the CPU training path ship masks as uint8 (≤ 255 classes and ignore fit)."""
    sample = pattern(30, 26, block=3)
    small = sample | {"mask": sample["mask"].to(torch.uint8), "size": sample["size"].to(torch.uint8)}
    for seed in range(10):
        wide = random_scale_crop_flip(sample, crop_size=32, generator=torch.Generator().manual_seed(seed))
        narrow = random_scale_crop_flip(small, crop_size=32, generator=torch.Generator().manual_seed(seed))
        assert narrow["mask"].dtype == narrow["size"].dtype == torch.uint8
        assert torch.equal(wide["image"], narrow["image"])
        assert torch.equal(wide["mask"], narrow["mask"].long()) and torch.equal(wide["size"], narrow["size"].long())
    assert torch.equal(pad_to(small, (40, 40))["mask"][35:], torch.full((5, 40), 255, dtype=torch.uint8))
