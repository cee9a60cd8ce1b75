"""The one place that reads an :class:`~ablations.config.ExperimentConfig` and builds the network."""

from __future__ import annotations

from ablations.config import ConfigError, ExperimentConfig
from ablations.dilation import scale_rates
from ablations.model import custom
from ablations.model.backbones import BACKBONES
from ablations.model.context import AtrousPyramid, NoContext, NonLocalContext, PyramidPooling, SummedAtrousHeads
from ablations.model.decoder import Decoder
from ablations.model.deeplab import DeepLab, Head
from ablations.model.msc import TAPS, MultiScaleFeatures
from ablations.model.nonlocal_block import NonLocalBlock
from ablations.model.upsampling import TransposedUpsampling
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
    if b.deformable_stages is not None:  # after the weights: each deformable conv starts as the loaded rigid one
        backbone.make_deformable(*b.deformable_stages)
    features = backbone.channels["out"]
    rates = scale_rates(c.rates, c.reference_output_stride, b.output_stride) if c.rates else ()
    if c.kind == "spp":
        context = PyramidPooling(features, c.channels, bins=c.bins, pooling_norm=c.pooling_norm, dropout=c.dropout)
    elif c.kind == "none":
        context = NoContext(features)
    elif c.kind == "custom":  # the researcher's module (ablations.model.custom: the contract and its arguments)
        context = custom.build_context(
            c.target, c.args, in_channels=features, out_channels=c.channels, rates=rates, output_stride=b.output_stride
        )
    elif c.kind == "nonlocal":
        context = NonLocalContext(features, c.channels, nonlocal_channels=c.nonlocal_channels, dropout=c.dropout)
    else:
        _check_groups(c.groups, c.resolved_groups, features, c.channels)
        atrous = {
            "rates": rates,
            "topology": c.topology,
            "separable": c.separable,
            "groups": c.resolved_groups,
            "image_pooling": c.image_pooling,
            "pooling_norm": c.pooling_norm,
            "dropout": c.dropout,
        }
        if c.rate_sets is not None:  # multi-scale ASPP: every set at this output stride
            del atrous["rates"]
            atrous["rate_sets"] = [scale_rates(s, c.reference_output_stride, b.output_stride) for s in c.rate_sets]
        if c.merge == "concat":
            block = NonLocalBlock(features, c.nonlocal_channels) if c.kind == "aspp+nonlocal" else None
            context = AtrousPyramid(features, c.channels, nonlocal_block=block, **atrous)
        else:  # v2 sum of per-branch logits: ASPP-S/L, LargeFOV
            context = SummedAtrousHeads(
                features, h.num_classes, channels=c.channels, kernel_size=c.kernel_size, **atrous
            )
        if c.deformable is not None:  # each deformable branch starts as its rigid twin (zero offsets)
            context.make_deformable(c.deformable)
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
            upsample=d.upsample,
            output_stride=b.output_stride,
        )
    head = None
    if c.merge != "sum":
        head_in = decoder.out_channels if decoder is not None else context.out_channels
        if h.style == "custom":
            head = custom.build_head(h.target, h.args, in_channels=head_in, num_classes=h.num_classes)
        else:
            head = Head(head_in, h.num_classes, extra_conv=h.style == "torchvision")
    msc = None
    if h.msc:  # v1's MSc branches (VGG-16 only; the config checks)
        msc = MultiScaleFeatures({t: backbone.channels[t] for t in TAPS}, h.num_classes, channels=h.msc_channels)
    return DeepLab(
        backbone,
        context,
        decoder,
        head,
        rates=c.stated_rates,
        reference_output_stride=c.reference_output_stride,
        msc=msc,
        upsampler=(  # FCN's learned upsampling of the logits, from their stride (4 with the decoder)
            TransposedUpsampling(h.num_classes, 4 if decoder is not None else b.output_stride)
            if h.upsample == "transposed"
            else None
        ),
    )


def _check_groups(groups: int | str, resolved: int, features: int, channels: int) -> None:
    """``context.groups`` must divide the atrous branches' inputs too: the backbone's channels, known only here (the
    config checks ``context.channels``)."""
    if features % resolved:
        common = [k for k in range(1, min(features, channels) + 1) if features % k == 0 and channels % k == 0]
        what = f" (depthwise = context.channels = {channels} groups)" if groups == "depthwise" else ""
        raise ConfigError(
            f"context.groups={groups!r}{what}: must divide the branches' inputs, the backbone's {features} channels, "
            f"and context.channels={channels}: allowed divisors {common}"
        )
