"""Learned upsampling: FCN's "deconvolution" (Long, Shelhamer & Darrell, CVPR 2015, arXiv:1411.4038 §3.3).

FCN upsamples by a factor ``s`` with a transposed convolution ("backwards strided convolution") of stride ``s`` and
kernel ``2s``, initialised to bilinear interpolation and learned. DeepLab upsamples its logits with a fixed
bilinear interpolation instead (v3 Table 8); ``head.upsample: transposed`` and ``decoder.upsample: transposed``
put FCN's learned upsampling in its place.

:class:`TransposedUpsampling` is one such layer per channel (``groups = channels``: each class, or each feature
channel, is upsampled from itself alone, as FCN's per-class ``upscore`` filters are at initialisation):

* the kernel is ``2s × 2s``, stride ``s``, no bias, initialised to FCN's ``upsample_filt``: the separable
  triangle ``w[k] = 1 − |k − (s − ½)| / s``, so each output pixel receives exactly two cells per axis, weighted
  by their distance as bilinear interpolation weights them;
* **alignment**: the transposed conv is run without padding (``(n + 1)·s`` outputs from ``n`` cells) and its
  output is centre-cropped to the target size, so the upsampled map is centred on the image as bilinear
  interpolation with ``align_corners=False`` centres it. For a target of ``n·s`` pixels (96 from 6 cells at
  stride 16) the crop is ``s/2`` on each side — exactly FCN's padding ``s/2`` — and cell ``i`` sits at pixel
  ``i·s + s/2 − ½``, where ``F.interpolate`` puts it: the two agree exactly (float rounding) wherever a pixel lies
  between two cell centres, and differ only in the outer ``s/2`` pixels, where bilinear interpolation repeats the
  edge cell and the transposed conv fades (one cell, weight ``½ … 1``). For a target of ``(n − 1)·s + 1`` pixels
  (513 from 33 cells at stride 16) the crop is ``⌊31/2⌋ = 15`` and cell ``i`` sits at pixel ``i·s + ½``: half a
  pixel from where the network's convs centre it (pixel ``i·s``, ``align_corners=True``), while
  ``F.interpolate(align_corners=False)`` stretches the map by 513/528 and puts cell ``i`` at ``15.55·i + 7.3``.
  ``tests/test_upsampling.py`` measures both differences;
* a target larger than ``(n + 1)·s`` cannot be reached from ``n`` cells: a ``ValueError`` says so (the model
  refuses to re-plan a learned upsampling for another output stride before that can happen).

The receptive field is that of bilinear interpolation (two cells per axis per output pixel), which
:func:`~ablations.geometry.analysis.network_field_of_view` does not count for either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

UPSAMPLING = ("bilinear", "transposed")


def bilinear_kernel(size: int, *, device=None, dtype=None) -> torch.Tensor:
    """FCN's ``upsample_filt(size)``: the ``size × size`` bilinear-interpolation kernel of a transposed conv of
    stride ``(size + 1) // 2`` (for ``size = 2s``: ``w[k] = 1 − |k − (s − ½)| / s``, separable)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    taps = torch.arange(size, device=device, dtype=dtype or torch.float32)
    line = 1 - (taps - centre).abs() / factor
    return line[:, None] * line[None, :]


class TransposedUpsampling(nn.Module):
    """Upsample ``channels`` maps by ``stride`` with a learned per-channel ``ConvTranspose2d`` (kernel ``2·stride``,
    bilinear at initialisation), centre-cropped to the requested size. ``forward(x, size)``:
    ``(B, C, h, w) → (B, C, *size)``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        if stride < 2:
            raise ValueError(f"stride={stride}: a learned upsampling needs a factor ≥ 2")
        self.stride = stride
        # Built without drawing from the random generator (its weights are set, not drawn), so that every other
        # module of a network starts from the same weights under head.upsample=transposed as under bilinear.
        with torch.random.fork_rng(devices=[]):
            self.conv = nn.ConvTranspose2d(channels, channels, 2 * stride, stride=stride, groups=channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every channel's kernel to bilinear interpolation (FCN §3.3)."""
        weight = self.conv.weight  # (channels, 1, 2s, 2s): one kernel per group
        kernel = bilinear_kernel(weight.shape[-1], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            weight.copy_(kernel.expand_as(weight))

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        full = self.conv(x)  # (B, C, (h + 1)·s, (w + 1)·s): cell i's kernel centred on index i·s + s − ½
        height, width = int(size[0]), int(size[1])
        top, left = (full.shape[-2] - height) // 2, (full.shape[-1] - width) // 2
        if top < 0 or left < 0:
            raise ValueError(
                f"a ×{self.stride} learned upsampling of a {tuple(x.shape[-2:])} map reaches at most "
                f"{tuple(full.shape[-2:])} pixels, not {(height, width)}: the map is not at stride {self.stride}"
            )
        return full[..., top : top + height, left : left + width]

    def extra_repr(self) -> str:
        return f"stride={self.stride}, kernel={2 * self.stride}, centre-cropped"
