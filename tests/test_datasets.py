"""Real dataset layouts: samples, exact label mappings, and one clear DatasetError for every bad input on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablations.data.datasets import (
    ADE20K,
    DATASETS,
    Cityscapes,
    DatasetError,
    FolderSegmentation,
    VOCSegmentation,
)
from tests.fixtures import voc_palette, write_ade20k, write_cityscapes, write_folder, write_voc

# Written out again from the cityscapesScripts table rather than imported, so a typo in the module cannot hide.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12}
OFFICIAL_TRAIN_IDS |= {26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def raw(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def check_samples(ds, size_hw: tuple[int, int]) -> None:
    for i in range(len(ds)):
        sample = ds[i]
        image, mask = sample["image"], sample["mask"]
        assert image.dtype == torch.float32 and image.shape == (3, *size_hw) and image.is_contiguous()
        assert mask.dtype == torch.int64 and mask.shape == size_hw
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.2
        valid = mask[mask != 255]
        assert valid.numel() > 0 and valid.min() >= 0 and valid.max() < ds.num_classes


def save_like(path: Path, values: np.ndarray, like: Path) -> None:
    """Overwrite a mask keeping its PNG mode (and palette), as a real annotation tool would."""
    src = Image.open(like)
    out = Image.fromarray(values.astype(np.uint8))
    if src.mode == "P":
        out.putpalette(src.getpalette())
    out.save(path)


# ------------------------------------------------------------------------------------------------------------ VOC


def test_voc_samples_and_palette_indices(tmp_path):
    root = write_voc(tmp_path, n_train=4, n_val=2, size=(37, 45))
    train, val, trainval = (VOCSegmentation(root, s) for s in ("train", "val", "trainval"))
    assert (len(train), len(val), len(trainval)) == (4, 2, 6)
    assert train.num_classes == 21 and len(train.class_names) == 21 and train.ignore_index == 255
    assert train.class_names[0] == "background" and train.class_names[15] == "person"
    check_samples(train, (37, 45))
    image_path, mask_path = train.files[0]
    assert image_path.suffix == ".jpg" and mask_path.parent.name == "SegmentationClass"
    png = Image.open(mask_path)
    assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]  # really a VOC palette PNG
    for i in range(len(train)):
        values = raw(train.files[i][1])
        assert (values == 255).any() and (values > 0).any() and (values < 255).any()
        # Palette indices are the labels; converting to RGB first would have produced colours instead.
        assert np.array_equal(train[i]["mask"].numpy(), values)


def test_voc_image_follows_mask(tmp_path):
    ds = VOCSegmentation(write_voc(tmp_path), "train")
    sample = ds[0]
    colours = torch.tensor(voc_palette(), dtype=torch.float32).view(256, 3) / 255
    expected = colours[sample["mask"]].permute(2, 0, 1)
    # JPEG + noise: the image is the class colour up to a small error, so image and mask are not transposed/shifted.
    assert (sample["image"] - expected).abs().mean() < 0.06


@pytest.mark.parametrize("where", ["parent", "devkit", "voc2012"])
def test_voc_root_given_either_way(tmp_path, where):
    parent = write_voc(tmp_path)
    root = {"parent": parent, "devkit": parent / "VOCdevkit", "voc2012": parent / "VOCdevkit" / "VOC2012"}[where]
    ds = VOCSegmentation(root, "val")
    assert ds.files == VOCSegmentation(parent, "val").files and len(ds) == 2


def test_voc_trainaug_used_when_present(tmp_path):
    root = write_voc(tmp_path, n_train=4, trainaug=True)
    ds = VOCSegmentation(root, "trainaug")
    assert len(ds) == 4 + 3  # the train ids plus the SBD-only ones
    assert all(mask.parent.name == "SegmentationClassAug" for _, mask in ds.files)
    assert all(Image.open(mask).mode == "L" for _, mask in ds.files)
    check_samples(ds, (37, 45))
    assert len(VOCSegmentation(root, "train")) == 4  # the ordinary split is unaffected


def test_voc_trainaug_alternative_list_name_and_two_column_format(tmp_path):
    root = write_voc(tmp_path, trainaug=True)
    lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    ids = (lists / "trainaug.txt").read_text().split()
    (lists / "trainaug.txt").unlink()
    (lists / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    ds = VOCSegmentation(root, "trainaug")
    assert [img.stem for img, _ in ds.files] == ids


def test_voc_trainaug_missing_is_a_clear_error(tmp_path):
    root = write_voc(tmp_path)
    with pytest.raises(DatasetError, match=r"trainaug\.txt") as err:
        VOCSegmentation(root, "trainaug")
    assert "SBD" in str(err.value)
    # The list present but the masks folder absent names the folder instead.
    (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("2007_000000\n")
    with pytest.raises(DatasetError, match=r"SegmentationClassAug is missing"):
        VOCSegmentation(root, "trainaug")


# ----------------------------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_samples_and_official_train_ids(tmp_path):
    root = write_cityscapes(tmp_path, n_train=4, n_val=2, size=(32, 64))
    train, val = Cityscapes(root, "train"), Cityscapes(root, "val")
    assert (len(train), len(val)) == (4, 2)
    assert train.num_classes == 19 and train.class_names[13] == "car" and train.class_names[-1] == "bicycle"
    check_samples(train, (32, 64))
    # The distractors of the real layout (color, instanceIds, polygons) are never picked up.
    assert all(m.name.endswith("_gtFine_labelIds.png") for _, m in train.files)
    assert {img.parent.name for img, _ in train.files} == {"aachen", "bochum"}
    seen = set()
    for i in range(len(train)):
        label_ids = raw(train.files[i][1])
        expected = np.vectorize(lambda v: OFFICIAL_TRAIN_IDS.get(int(v), 255))(label_ids)
        assert np.array_equal(train[i]["mask"].numpy(), expected)
        seen |= set(np.unique(label_ids).tolist())
    assert set(range(34)) <= seen  # every labelId, valid and void, was exercised


def test_cityscapes_single_pixels(tmp_path):
    root = write_cityscapes(tmp_path, n_train=1, n_val=1)
    ds = Cityscapes(root, "train")
    label_ids = np.zeros((32, 64), np.uint8)
    label_ids[0, :6] = (26, 0, 7, 33, 6, 34)
    Image.fromarray(label_ids).save(ds.files[0][1])
    assert ds[0]["mask"][0, :6].tolist() == [13, 255, 0, 18, 255, 255]


def test_cityscapes_any_label_id_is_valid_after_mapping(tmp_path):
    root = write_cityscapes(tmp_path, n_train=2, n_val=1)
    mask = next((root / "gtFine" / "train").glob("*/*_labelIds.png"))
    Image.fromarray(np.full((32, 64), 250, np.uint8)).save(mask)
    ds = Cityscapes(root, "train", check="full")  # 250 is no labelId, but maps to ignore: not an error
    index = [m for _, m in ds.files].index(mask)
    assert (ds[index]["mask"] == 255).all()


# --------------------------------------------------------------------------------------------------------- ADE20K


def test_ade20k_samples_and_reduce_zero_label(tmp_path):
    root = write_ade20k(tmp_path, n_train=4, n_val=2, size=(40, 48))
    train, val = ADE20K(root, "train"), ADE20K(root, "val")
    assert (len(train), len(val)) == (4, 2)
    assert train.num_classes == 150 and len(train.class_names) == 150 and len(set(train.class_names)) == 150
    assert train.class_names[:3] == ("wall", "building", "sky") and train.class_names[-1] == "flag"
    assert train.class_names[12] == "person" and train.class_names[20] == "car"
    check_samples(train, (40, 48))
    assert all(img.parent.name == "validation" for img, _ in val.files)
    for i in range(len(train)):
        values = raw(train.files[i][1]).astype(np.int64)
        mask = train[i]["mask"].numpy()
        assert mask[0, :3].tolist() == [255, 0, 149]  # the fixture writes 0, 1, 150 there
        assert np.array_equal(mask, np.where(values == 0, 255, values - 1))


def test_ade20k_root_may_be_the_challenge_folder(tmp_path):
    root = write_ade20k(tmp_path)
    assert ADE20K(root / "ADEChallengeData2016", "val").files == ADE20K(root, "val").files


# --------------------------------------------------------------------------------------------------------- folder


def test_folder_samples(tmp_path):
    root = write_folder(tmp_path, n_train=4, n_val=2, size=(33, 41), num_classes=5)
    train = FolderSegmentation(root, "train", num_classes=5)
    assert len(train) == 4 and len(FolderSegmentation(root, "val", num_classes=5)) == 2
    assert train.num_classes == 5 and train.class_names == ("class0", "class1", "class2", "class3", "class4")
    assert {img.suffix for img, _ in train.files} == {".jpg", ".png"}
    check_samples(train, (33, 41))
    for i in range(len(train)):
        assert np.array_equal(train[i]["mask"].numpy(), raw(train.files[i][1]))
        assert (train[i]["mask"] == 255).any()


def test_registry():
    expected = {"voc": VOCSegmentation, "cityscapes": Cityscapes, "ade20k": ADE20K, "folder": FolderSegmentation}
    assert expected == DATASETS
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------------------------------------- errors

WRITERS = {
    "voc": (write_voc, VOCSegmentation, {}),
    "cityscapes": (write_cityscapes, Cityscapes, {}),
    "ade20k": (write_ade20k, ADE20K, {}),
    "folder": (write_folder, FolderSegmentation, {"num_classes": 5}),
}


def build(name: str, tmp_path: Path, split: str = "train", **kwargs):
    writer, cls, extra = WRITERS[name]
    root = writer(tmp_path / name)
    return root, lambda **kw: cls(root, kw.pop("split", split), **extra, **kw)


@pytest.mark.parametrize("name", list(WRITERS))
def test_missing_root_names_the_setting(tmp_path, name):
    _, cls, extra = WRITERS[name]
    missing = tmp_path / "nowhere" / "data"
    with pytest.raises(DatasetError, match=r"data\.root") as err:
        cls(missing, "train", **extra)
    assert str(missing) in str(err.value)


@pytest.mark.parametrize(
    ("name", "remove", "expected"),
    [
        ("voc", "VOCdevkit", "VOCdevkit/VOC2012/JPEGImages"),
        ("voc", "VOCdevkit/VOC2012/SegmentationClass", "VOCdevkit/VOC2012/SegmentationClass"),
        (
            "voc",
            "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt",
            "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt",
        ),
        ("cityscapes", "gtFine", "gtFine/train"),
        ("cityscapes", "leftImg8bit/train", "leftImg8bit/train"),
        ("ade20k", "ADEChallengeData2016/annotations", "ADEChallengeData2016/annotations/training"),
        ("ade20k", "ADEChallengeData2016/images", "ADEChallengeData2016/images/training"),
        ("folder", "masks", "masks/train"),
    ],
)
def test_wrong_layout_names_the_expected_folder(tmp_path, name, remove, expected):
    root, make = build(name, tmp_path)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError, match="expected") as err:
        make()
    assert str(root / Path(expected)) in str(err.value)


def first_pair(name: str, tmp_path: Path):
    root, make = build(name, tmp_path)
    return root, make, make().files


# Only VOC lists its ids; the other layouts discover images, so there only a mask can go missing.
@pytest.mark.parametrize(("name", "which"), [("voc", 0), ("voc", 1), ("cityscapes", 1), ("ade20k", 1), ("folder", 1)])
def test_missing_listed_file_is_named_and_counted(tmp_path, name, which):
    _, make, files = first_pair(name, tmp_path)
    files[1][which].unlink()
    with pytest.raises(DatasetError, match="1 of 4 samples") as err:
        make()
    assert f"first missing: {files[1][which]}" in str(err.value)


@pytest.mark.parametrize("name", list(WRITERS))
def test_empty_split_names_split_and_place(tmp_path, name):
    root, make, files = first_pair(name, tmp_path)
    if name == "voc":
        list_file = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
        list_file.write_text("\n")
        where = str(list_file)
    else:
        for image, _ in files:
            image.unlink()
        where = str(files[0][0].parent.parent if name == "cityscapes" else files[0][0].parent)
    with pytest.raises(DatasetError, match="split 'train' is empty") as err:
        make()
    assert where in str(err.value)


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize("check", ["headers", "full"])
def test_size_mismatch_names_both_files_and_sizes(tmp_path, name, check):
    _, make, files = first_pair(name, tmp_path)
    image, mask = files[2]
    w, h = Image.open(mask).size
    save_like(mask, raw(mask)[:, : w - 3], like=mask)
    with pytest.raises(DatasetError, match="sizes differ") as err:
        make(check=check)
    message = str(err.value)
    assert str(image) in message and str(mask) in message
    assert f"{w}x{h}" in message and f"{w - 3}x{h}" in message
    # check="none" lets it through, but loading that sample still fails clearly rather than deep in a transform.
    ds = make(check="none")
    with pytest.raises(DatasetError, match="sizes differ"):
        ds[2]


@pytest.mark.parametrize(
    ("name", "bad_value", "allowed"),
    [("voc", 30, "0..20, 255"), ("ade20k", 151, "0..150, 255"), ("folder", 7, "0..4, 255")],
)
def test_mask_values_out_of_range(tmp_path, name, bad_value, allowed):
    _, make, files = first_pair(name, tmp_path)
    mask = files[3][1]
    values = raw(mask)
    values[5, 5:8] = bad_value
    save_like(mask, values, like=mask)
    with pytest.raises(DatasetError, match="outside the label range") as err:
        make(check="full")
    message = str(err.value)
    assert str(mask) in message and f": {bad_value} (3 pixels)" in message and allowed in message
    # Values are only checked by the full decode.
    assert len(make(check="headers")) == 4 and len(make(check="none")) == 4


def test_voc_fixture_num_classes_writes_out_of_range_labels(tmp_path):
    root = write_voc(tmp_path, num_classes=40, n_train=6)
    with pytest.raises(DatasetError, match="outside the label range"):
        VOCSegmentation(root, "train")


def test_colour_mask_is_rejected(tmp_path):
    _, make, files = first_pair("folder", tmp_path)
    mask = files[0][1]
    Image.open(mask).convert("RGB").save(mask)
    with pytest.raises(DatasetError, match="mode 'RGB'") as err:
        make(check="full")
    assert str(mask) in str(err.value)


def test_truncated_mask_is_named(tmp_path):
    _, make, files = first_pair("ade20k", tmp_path)
    mask = files[1][1]
    mask.write_bytes(mask.read_bytes()[:60])
    with pytest.raises(DatasetError, match="cannot be decoded") as err:
        make(check="full")
    assert str(mask) in str(err.value)


@pytest.mark.parametrize("name", list(WRITERS))
def test_bad_check_value(tmp_path, name):
    _, make = build(name, tmp_path)
    with pytest.raises(DatasetError, match=r"check='quick'.*'none', 'headers', 'full'"):
        make(check="quick")


@pytest.mark.parametrize(
    ("name", "split", "allowed"),
    [
        ("voc", "test", "'train', 'val', 'trainval', 'trainaug'"),
        ("cityscapes", "training", "'train', 'val', 'test'"),
        ("ade20k", "validation", "'train', 'val'"),
        ("folder", "test", "splits present: train, val"),
    ],
)
def test_bad_split_value(tmp_path, name, split, allowed):
    _, make = build(name, tmp_path)
    with pytest.raises(DatasetError, match=f"split={split!r}") as err:
        make(split=split)
    assert allowed in str(err.value)


@pytest.mark.parametrize("num_classes", [0, 256, 2.5])
def test_folder_bad_num_classes(tmp_path, num_classes):
    root = write_folder(tmp_path)
    with pytest.raises(DatasetError, match="num_classes"):
        FolderSegmentation(root, "train", num_classes=num_classes)


def test_fixtures_are_deterministic(tmp_path):
    a, b = write_voc(tmp_path / "a"), write_voc(tmp_path / "b")
    ds_a, ds_b = VOCSegmentation(a), VOCSegmentation(b)
    assert all(torch.equal(ds_a[i]["mask"], ds_b[i]["mask"]) for i in range(len(ds_a)))
    assert all(torch.equal(ds_a[i]["image"], ds_b[i]["image"]) for i in range(len(ds_a)))
