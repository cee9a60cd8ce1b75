"""Data: the embedded synthetic benchmark, real datasets in their on-disk layouts, and the training transforms.

Every dataset is a ``torch.utils.data.Dataset`` whose items are dicts:

* ``"image"``: ``torch.float32`` tensor ``(3, H, W)``, RGB in [0, 1], not normalised (the training system
  normalises on the device).
* ``"mask"``: ``torch.int64`` tensor ``(H, W)``: a class index in ``[0, num_classes)`` or ``255`` (ignore).
* ``"size"`` (the synthetic benchmark only): ``torch.int64`` ``(H, W)``: the size bucket of the object a pixel
  belongs to — 0 background, 1 small, 2 medium, 3 large — or 255 where the mask is 255.

and which expose ``num_classes: int``, ``class_names: tuple[str, ...]`` and ``ignore_index = 255``.

What reaches the training system (``ablations.training.datamodule``) differs a little: training batches carry no
``"size"`` (only evaluation reads it), and masks may travel as ``torch.uint8`` (the synthetic benchmark's, on either
``data.render`` path); the system converts them to int64 on the device.
"""

IGNORE_INDEX = 255
SIZE_BUCKETS = ("background", "small", "medium", "large")

# The embedded benchmark's shape classes (mask labels 1..7; 0 is background); see ablations.data.synthetic.
SYNTHETIC_SHAPES = ("disk", "square", "triangle", "ring", "cross", "star", "bar")

# Classes per dataset, known without touching the disk (the folder dataset's count comes from head.num_classes).
# A test pins the synthetic entry to the generator's class list.
NUM_CLASSES = {"synthetic": 8, "voc": 21, "cityscapes": 19, "ade20k": 150}
DATASET_NAMES = ("synthetic", "voc", "cityscapes", "ade20k", "folder")
