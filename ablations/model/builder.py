"""The one place that reads an :class:`~ablations.config.ExperimentConfig` and builds the network."""

from __future__ import annotations

from ablations.config import ExperimentConfig
from ablations.dilation import scale_rates
from ablations.model.backbones import BACKBONES
from ablations.model.context import AtrousPyramid, NoContext, PyramidPooling, SummedAtrousHeads
from ablations.model.decoder import Decoder
from ablations.model.deeplab import DeepLab, Head
from ablations.model.msc import TAPS, MultiScaleFeatures
from ablations.model.vgg import VGG16


def build_model(config: ExperimentConfig, *, load_weights: bool = True) -> DeepLab:
    """``config → nn.Module``. Pretrained encoder weights are loaded when ``backbone.weights`` names them."""
    b, c, d, h = config.backbone, config.context, config.decoder, config.head
    encoders = {**BACKBONES, "vgg16": VGG16, "vgg16_bn": VGG16}
    backbone = encoders[b.name](
        b.name,
        width=b.width,
        output_stride=b.output_stride,
        multi_grid=b.multi_grid,
        cascade=b.cascade,
        hdc=b.hdc,
        first_unit=b.first_unit,
    )
    if load_weights and b.weights is not None:
        backbone.load_pretrained(b.weights)
    features = backbone.channels["out"]
    rates = scale_rates(c.rates, c.reference_output_stride, b.output_stride) if c.rates else ()
    if c.kind == "spp":
        context = PyramidPooling(features, c.channels, bins=c.bins, pooling_norm=c.pooling_norm, dropout=c.dropout)
    elif c.kind == "none":
        context = NoContext(features)
    else:
        atrous = {
            "rates": rates,
            "topology": c.topology,
            "separable": c.separable,
            "image_pooling": c.image_pooling,
            "pooling_norm": c.pooling_norm,
            "dropout": c.dropout,
        }
        if c.merge == "concat":
            context = AtrousPyramid(features, c.channels, **atrous)
        else:  # v2 sum of per-branch logits: ASPP-S/L, LargeFOV
            context = SummedAtrousHeads(
                features, h.num_classes, channels=c.channels, kernel_size=c.kernel_size, **atrous
            )
    decoder = None
    if d.enabled:
        decoder = Decoder(
            context.out_channels,
            backbone.channels,
            levels=("conv3", "conv2") if d.low_level == "conv2+conv3" else ("conv2",),
            low_level_channels=d.low_level_channels,
            convs=d.convs,
            channels=d.channels,
            separable=d.separable,
        )
    head = None
    if c.merge != "sum":
        head_in = decoder.out_channels if decoder is not None else context.out_channels
        head = Head(head_in, h.num_classes, extra_conv=h.style == "torchvision")
    msc = None
    if h.msc:  # v1's MSc branches (VGG-16 only; the config checks)
        msc = MultiScaleFeatures({t: backbone.channels[t] for t in TAPS}, h.num_classes, channels=h.msc_channels)
    return DeepLab(
        backbone,
        context,
        decoder,
        head,
        rates=c.rates or (),
        reference_output_stride=c.reference_output_stride,
        msc=msc,
    )
