"""The assembled network: backbone → context module → (decoder) → head → logits at the input's size.

The logits reach the input's size by bilinear interpolation (DeepLab, v3 Table 8) or, with ``upsampler``, by
FCN's learned transposed convolution (Long et al., CVPR 2015 §3.3; :mod:`ablations.model.upsampling`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ablations.dilation import scale_rates


class Head(nn.Module):
    """A 1×1 classifier (the papers), optionally after torchvision's extra 3×3 conv + BN + ReLU (``DeepLabHead``)."""

    def __init__(self, in_channels: int, num_classes: int, *, extra_conv: bool = False) -> None:
        super().__init__()
        self.refine = (
            nn.Sequential(
                nn.Conv2d(in_channels, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True)
            )
            if extra_conv
            else None
        )
        self.classifier = nn.Conv2d(256 if extra_conv else in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.refine is not None:
            x = self.refine(x)
        return self.classifier(x)


class DeepLab(nn.Module):
    """Any point of the design space. Built by :func:`ablations.model.build_model`; takes modules, not a config.

    Args:
        backbone: an encoder from :mod:`ablations.model.backbones`.
        context: a module from :mod:`ablations.model.context`.
        decoder: a :class:`~ablations.model.decoder.Decoder` or ``None``.
        head: a :class:`Head`, or ``None`` when the context module already produces logits (v2 sum merge).
        rates: the context module's rates as stated, and ``reference_output_stride``, the stride they are
            stated at; :meth:`set_output_stride` rescales them with :func:`ablations.dilation.scale_rates`.
        upsampler: ``None`` (bilinear interpolation of the logits) or a
            :class:`~ablations.model.upsampling.TransposedUpsampling` of the logits' stride (the output stride,
            or 4 with the decoder); called as ``upsampler(logits, size)``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        context: nn.Module,
        decoder: nn.Module | None,
        head: nn.Module | None,
        *,
        rates: Sequence[int] = (),
        reference_output_stride: int | None = None,
        msc: nn.Module | None = None,
        upsampler: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.context = context
        self.decoder = decoder
        self.head = head
        self.stated_rates = tuple(rates)
        self.reference_output_stride = reference_output_stride
        self.msc = msc  # v1's MSc branches (ablations.model.msc): logits added to the head's
        if msc is not None:
            msc.set_strides(backbone.tap_strides(), backbone.output_stride)
        self.upsampler = upsampler
        # A learned upsampling is a conv of one stride: the head's (without the decoder; with it the logits are at
        # stride 4 whatever the encoder's) and the decoder's follow the encoder's output stride and cannot change.
        learned_head = upsampler is not None and decoder is None
        learned_decoder = decoder is not None and len(getattr(decoder, "upsample", ())) > 0
        self.fixed_output_stride = backbone.output_stride if learned_head or learned_decoder else None

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Re-plan backbone strides and rates and rescale the context rates; the weights stay as they are. A
        learned (transposed) upsampling of the encoder's stride cannot follow: another stride is a ``ValueError``."""
        if self.fixed_output_stride is not None and output_stride != self.fixed_output_stride:
            raise ValueError(
                f"output stride {output_stride}: this network's learned upsampling (head.upsample or "
                f"decoder.upsample = transposed) is a stride-{self.fixed_output_stride} transposed conv; evaluate it "
                f"at output stride {self.fixed_output_stride}"
            )
        self.backbone.set_output_stride(output_stride)
        if self.stated_rates:
            self.context.set_rates(scale_rates(self.stated_rates, self.reference_output_stride, output_stride))
        if self.msc is not None:
            self.msc.set_strides(self.backbone.tap_strides(), output_stride)

    @contextlib.contextmanager
    def at_output_stride(self, output_stride: int) -> Iterator[DeepLab]:
        """``with model.at_output_stride(8): …`` evaluates at OS 8 and restores the training stride after."""
        previous = self.output_stride
        self.set_output_stride(output_stride)
        try:
            yield self
        finally:
            self.set_output_stride(previous)

    def forward(self, x: torch.Tensor, *, upsample: bool = True) -> torch.Tensor:  # (B, 3, H, W) → (B, C, H, W)
        """Logits at the input's size; with ``upsample=False`` at the head's own stride (the output stride, or 4
        with the decoder), for a loss on subsampled labels (v2), whatever the upsampling."""
        features = self.backbone(x)
        y = self.context(features["out"])  # (B, C, H/os, W/os)
        if self.decoder is not None:
            y = self.decoder(y, features)  # (B, C, H/4, W/4)
        if self.head is not None:
            y = self.head(y)
        if self.msc is not None:
            y = y + self.msc(features)
        if not upsample:
            return y
        if self.upsampler is not None:  # FCN's learned ×stride transposed conv, centre-cropped to the input's size
            return self.upsampler(y, x.shape[-2:])
        # Upsample logits rather than downsample labels (v3 Table 8: +1.2 mIoU); exact size for odd inputs too.
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
