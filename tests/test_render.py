"""The embedded benchmark rendered in torch (ablations/data/render.py) and augmented on the device
(ablations/data/transforms.py: scale_crop_flip_draws, apply_scale_crop_flip): the same items as the NumPy path
within the tolerance render.py states, the same item whatever the batch, and the data module's device path
(data.render) training a real step on the same stream as the CPU path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import default_collate

from ablations.config import ConfigError, load_config
from ablations.data import IGNORE_INDEX, SIZE_BUCKETS
from ablations.data.render import SCENE_KEYS, SceneRenderer
from ablations.data.synthetic import SyntheticShapes
from ablations.data.transforms import apply_scale_crop_flip, random_scale_crop_flip, scale_crop_flip_draws
from ablations.training.datamodule import SegmentationDataModule

# The bounds render.py's docstring states: image values where the layer maps agree, and the share of pixels whose
# layer (hence label and size) differs between the NumPy and torch rasterisers.
IMAGE_TOLERANCE = 1e-6
PIXEL_DISAGREEMENT = 1e-3


def scenes(dataset: SyntheticShapes, indices) -> dict[str, torch.Tensor]:
    return default_collate([dataset.scene(i).tensors() for i in indices])


@pytest.fixture(scope="module")
def dataset() -> SyntheticShapes:
    return SyntheticShapes(split="train", num_samples=64, image_size=64, seed=0)


def test_scene_arrays_have_fixed_sizes_and_the_keys_the_renderer_reads(dataset):
    for i in range(20):
        t = dataset.scene(i).tensors()
        assert tuple(t) == SCENE_KEYS
        assert t["kind"].shape == t["layer"].shape == (dataset.max_primitives,)
        assert t["params"].shape[0] == t["box"].shape[0] == dataset.max_primitives
        assert t["label"].shape == t["texture"].shape == (dataset.max_layers,)
        assert t["colour"].shape == (dataset.max_layers, 2, 3) and t["params"].dtype == torch.float32
        # Paint order = layer order: the renderer's "maximum layer id wins" is NumPy's "later primitive wins".
        used = t["layer"][t["kind"] > 0]
        assert torch.equal(used, used.sort().values)


def test_the_same_item_in_any_order_and_any_batch(dataset):
    renderer = SceneRenderer(dataset)
    forward = renderer(scenes(dataset, [1, 2, 3]), size=True)
    shuffled = renderer(scenes(dataset, [3, 1, 2]), size=True)
    for place, index in enumerate([1, 2, 3]):
        single = renderer(scenes(dataset, [index]), size=True)
        other = [3, 1, 2].index(index)
        for key in ("image", "mask", "size"):
            assert torch.equal(forward[key][place], single[key][0])
            assert torch.equal(forward[key][place], shuffled[key][other])


def test_chunking_does_not_change_the_pixels(dataset):
    batch = scenes(dataset, range(8))
    whole = SceneRenderer(dataset, chunk_elements=1 << 30).layers(batch)
    tiny = SceneRenderer(dataset, chunk_elements=64 * 64).layers(batch)
    assert torch.equal(whole, tiny)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 64, "seed": 0},  # every shape and clutter kind
        {"image_size": 96, "seed": 4, "class_by": "size", "shapes": ("star", "ring"), "max_distractors": 8},
    ],
)
def test_torch_rendering_matches_the_numpy_path_within_the_stated_tolerance(kwargs):
    ds = SyntheticShapes(num_samples=32, **kwargs)
    renderer = SceneRenderer(ds)
    batch = scenes(ds, range(32))
    out, layers = renderer(batch, size=True), renderer.layers(batch)
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == out["size"].dtype == torch.uint8
    differ, classes, buckets = 0, torch.zeros(2, ds.num_classes), torch.zeros(2, len(SIZE_BUCKETS))
    for i in range(32):
        reference = ds[i]
        numpy_layers = torch.from_numpy(ds.rasterise(ds.scene(i))).long()
        agree = numpy_layers == layers[i]
        differ += int((~agree).sum())
        assert (reference["image"] - out["image"][i]).abs()[:, agree].max() <= IMAGE_TOLERANCE
        assert torch.equal(reference["mask"][agree], out["mask"][i][agree].long())
        assert torch.equal(reference["size"][agree], out["size"][i][agree].long())
        # The objects visible in the item (layers with a non-background label) are the same ones.
        fg = batch["label"][i] > 0
        assert set(numpy_layers.unique()[fg[numpy_layers.unique()]].tolist()) == set(
            layers[i].unique()[fg[layers[i].unique()]].tolist()
        )
        classes[0] += torch.bincount(reference["mask"].flatten(), minlength=ds.num_classes)
        classes[1] += torch.bincount(out["mask"][i].long().flatten(), minlength=ds.num_classes)
        buckets[0] += torch.bincount(reference["size"].flatten(), minlength=len(SIZE_BUCKETS))
        buckets[1] += torch.bincount(out["size"][i].long().flatten(), minlength=len(SIZE_BUCKETS))
    pixels = 32 * ds.image_size**2
    assert differ / pixels <= PIXEL_DISAGREEMENT
    # Class balance and size-bucket shares: equal up to the pixels that may differ.
    assert (classes[0] - classes[1]).abs().sum() <= 2 * PIXEL_DISAGREEMENT * pixels
    assert (buckets[0] - buckets[1]).abs().sum() <= 2 * PIXEL_DISAGREEMENT * pixels


def test_the_label_rules_hold_pixel_for_pixel_on_the_renderers_own_output():
    by_size = SyntheticShapes(num_samples=16, image_size=64, seed=2, class_by="size")
    out = SceneRenderer(by_size)(scenes(by_size, range(16)), size=True)
    assert torch.equal(out["mask"], out["size"])  # every object pixel's label is its size bucket; background 0
    assert (out["mask"] != 0).any()
    by_shape = SyntheticShapes(num_samples=16, image_size=64, seed=2)
    out = SceneRenderer(by_shape)(scenes(by_shape, range(16)), size=True)
    assert torch.equal(out["size"] == 0, out["mask"] == 0)
    assert int(out["mask"].max()) < by_shape.num_classes and int(out["size"].max()) < len(SIZE_BUCKETS)
    assert "size" not in SceneRenderer(by_shape)(scenes(by_shape, [0]))


def _old_draws(h, w, crop, scale_range, flip, generator):
    """random_scale_crop_flip's draws as it made them before they were factored out (the order is the contract)."""
    lo, hi = scale_range
    scale = lo + (hi - lo) * torch.rand((), generator=generator).item()
    size = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    padded = (max(size[0], crop), max(size[1], crop))
    top = int(torch.randint(0, padded[0] - crop + 1, (), generator=generator).item())
    left = int(torch.randint(0, padded[1] - crop + 1, (), generator=generator).item())
    flipped = flip and torch.rand((), generator=generator).item() < 0.5
    return size, top, left, flipped


@pytest.mark.parametrize("crop", [40, 64, 100])
def test_device_augmentation_equals_the_cpu_transform_for_the_same_seed(dataset, crop):
    items = [dataset[i] for i in range(6)]
    batch = {
        "image": torch.stack([s["image"] for s in items]),
        "mask": torch.stack([s["mask"] for s in items]).to(torch.uint8),
        "size": torch.stack([s["size"] for s in items]),
    }
    recipe = {"crop_size": crop, "scale_range": (0.5, 2.0), "flip": True}
    draws = []
    for seed in range(6):
        drawn = scale_crop_flip_draws(64, 64, generator=torch.Generator().manual_seed(seed), **recipe)
        assert drawn == _old_draws(64, 64, crop, (0.5, 2.0), True, torch.Generator().manual_seed(seed))
        (h, w), top, left, flipped = drawn
        draws.append((h, w, top, left, int(flipped)))
    out = apply_scale_crop_flip(batch, torch.tensor(draws), crop_size=crop)
    assert out["image"].shape == (6, 3, crop, crop) and out["mask"].dtype == torch.uint8
    for seed, sample in enumerate(items):
        sample = {"image": sample["image"], "mask": sample["mask"].to(torch.uint8), "size": sample["size"]}
        cpu = random_scale_crop_flip(sample, generator=torch.Generator().manual_seed(seed), **recipe)
        assert (cpu["image"] - out["image"][seed]).abs().max() <= IMAGE_TOLERANCE
        assert torch.equal(cpu["mask"], out["mask"][seed]) and torch.equal(cpu["size"], out["size"][seed])
    if crop == 100:
        assert (out["mask"] == IGNORE_INDEX).any()  # a crop beyond a small scale is padded with ignore


TINY = [
    "data.image_size=48",
    "data.crop_size=40",
    "data.train_samples=16",
    "data.val_samples=8",
    "data.batch_size=4",
    "data.num_workers=0",
]


def _first_train_batch(render: str) -> dict[str, torch.Tensor]:
    module = SegmentationDataModule(load_config(overrides=[*TINY, f"data.render={render}"]))
    module.setup()
    batch = next(iter(module.train_dataloader()))
    return module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)


def test_the_device_path_trains_on_the_same_stream_as_the_cpu_path():
    device, cpu = _first_train_batch("device"), _first_train_batch("cpu")
    assert set(device) == set(cpu) == {"image", "mask"}  # training batches carry no size map
    assert device["mask"].dtype == cpu["mask"].dtype == torch.uint8
    agree = device["mask"] == cpu["mask"]
    assert agree.float().mean() >= 1 - PIXEL_DISAGREEMENT
    assert (device["image"] - cpu["image"]).abs().amax(1)[agree].max() <= IMAGE_TOLERANCE


def test_the_device_path_evaluates_with_the_size_map():
    module = SegmentationDataModule(load_config(overrides=[*TINY, "data.render=device"]))
    module.setup()
    batch = next(iter(module.val_dataloader()))
    out = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    reference = [module.val_set[i] for i in range(len(out["mask"]))]
    assert set(out) == {"image", "mask", "size"} and out["size"].dtype == torch.uint8
    assert out["image"].shape == (4, 3, 48, 48)  # no augmentation: the whole image
    assert torch.equal(out["size"].long(), torch.stack([r["size"] for r in reference]))


def test_render_is_a_validated_config_field():
    assert load_config().data.render == "auto"
    assert load_config(overrides=["data.render=device"]).data.render == "device"
    with pytest.raises(ConfigError, match=r"data\.render='gpu': allowed \['auto', 'device', 'cpu'\]"):
        load_config(overrides=["data.render=gpu"])
    with pytest.raises(ConfigError, match=r"data\.render='device'.*data\.name='voc'"):
        load_config(overrides=["data.render=device", "data.name=voc", "data.root=/nowhere"])


def test_a_run_resumes_under_another_data_render_like_another_num_workers():
    from ablations.training.checkpoints import config_differences

    cpu = load_config(overrides=["data.render=cpu"]).to_dict()
    assert config_differences(cpu, load_config(overrides=["data.render=device"]).to_dict()) == []
    before = {**cpu, "data": {k: v for k, v in cpu["data"].items() if k != "render"}}  # a checkpoint from before
    assert config_differences(before, load_config().to_dict()) == []


def test_auto_renders_on_the_cpu_workers_without_a_cuda_trainer():
    module = SegmentationDataModule(load_config(overrides=TINY))
    module.setup()
    assert not module.renders_on_device  # no trainer, or a CPU one: NumPy on the loader workers
    on = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    module.trainer = on
    assert module.renders_on_device  # a run that trains on a CUDA GPU renders there
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert not module.renders_on_device
    for overrides in (["data.render=cpu"], ["data.name=voc", "data.root=/nowhere"]):
        other = SegmentationDataModule(load_config(overrides=[*TINY, *overrides]))
        other.trainer = on
        assert not other.renders_on_device  # asked for NumPy, or a real dataset: its CPU loaders


@pytest.mark.e2e
def test_a_real_training_step_with_the_device_path_on_a_cpu(tmp_path, monkeypatch):
    from ablations.training.train import train

    rendered = []  # (batch size, with size map) of every batch the device path rendered
    call = SceneRenderer.__call__

    def counting(self, batch, *, size=False, plan=None):
        rendered.append((len(batch["kind"]), size, plan is not None))
        return call(self, batch, size=size, plan=plan)

    monkeypatch.setattr(SceneRenderer, "__call__", counting)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_config(
        overrides=[*TINY, "data.render=device", "backbone.width=0.125", "context.channels=16", "decoder.channels=16",
                   "train.max_steps=2", "train.val_every=2", "train.log_every=1", "train.lr=0.01",
                   "train.bn_momentum=0.1"],
    )  # fmt: skip
    metrics = train(config, tmp_path / "run", progress_bar=False)
    assert metrics["best_step"] == 2 and 0.0 <= metrics["val/mIoU"] <= 1.0
    assert {"val/mIoU_small", "val/mIoU_medium", "val/mIoU_large"} <= set(metrics)
    # Two training steps and the two validation batches (sanity check off in tiny runs or not, at least one pass),
    # all rendered through the hook with the host plan that on_before_batch_transfer took.
    assert rendered.count((4, False, True)) == 2 and rendered.count((4, True, True)) >= 2
