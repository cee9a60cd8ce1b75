"""Deformable convolution, v1 (Dai et al., ICCV 2017: learned offsets) and v2 (Zhu et al., CVPR 2019: offsets and
a modulation per tap), on ``torchvision.ops.deform_conv2d``.

:class:`DeformConv2d` *is* an ``nn.Conv2d`` — the same ``weight``/``bias`` names, stride, padding and dilation,
so pretrained weights load into it, the dilation plan re-rates it (``layers.set_rate``) and deformable + atrous
is a deformable conv at the planned rate, as Dai et al. use in res5. Its offset (and mask) predictor is a conv of
the same kernel, stride, padding and dilation, initialised to zero: zero offsets, and a mask of 2·sigmoid(0) = 1,
so at initialisation the deformable conv computes exactly its rigid twin. (DCNv2 initialises the mask at 0.5 and
its weight accordingly; the factor 2 keeps "starts as the rigid net" exact.) The predictor follows the conv's
rate whenever the plan changes it: it reads the conv's stride, padding and dilation at every call.

Multiply-adds: torch's ``FlopCounterMode`` has no formula for ``torchvision::deform_conv2d`` and counts it as 0.
:data:`FLOP_FORMULAS` (passed as its ``custom_mapping`` by :func:`ablations.geometry.analysis.count_flops`) counts
the conv itself, B·C_out·H_out·W_out·(C_in/groups)·k², plus the sampling: every one of the B·C_in·k²·H_out·W_out
sampled values is a bilinear blend of 4 neighbours (4 multiply-adds), and with v2's modulation one more multiply.
The interpolation weights (a few ops per tap and output pixel, shared by all channels) are not counted. The
offset predictor is an ordinary conv and counted as one. The backward pass counts twice the forward pass (as
torch counts a convolution's: the gradients of the input and of the weights), for the sampling too (the gradients
of the input and of the offsets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

VERSIONS = ("v1", "v2")


class DeformConv2d(nn.Conv2d):
    """A ``k×k`` conv whose taps move by learned offsets (``version="v1"``), and are weighted by a learned
    modulation in (0, 2) (``"v2"``). ``offset`` predicts 2·k² offsets (+ k² mask logits for v2) per output pixel."""

    def __init__(self, *args, version: str = "v1", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if version not in VERSIONS:
            raise ValueError(f"deformable version {version!r}: allowed {list(VERSIONS)}")
        if self.groups != 1:
            raise ValueError("a deformable conv here has groups=1")
        self.version = version
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset = nn.Conv2d(self.in_channels, taps * (3 if version == "v2" else 2), self.kernel_size, bias=True)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, version: str) -> DeformConv2d:
        """The deformable twin of ``conv``: its weights (copied), stride, padding and dilation."""
        # Built on the meta device with the RNG state put back afterwards: a conv's constructor draws its
        # initial weights, which would shift every weight initialised after it (the context module, the head), so
        # a deformable net and its rigid twin built from the same seed would differ beyond the offsets.
        with torch.random.fork_rng(devices=[]):
            twin = cls(
                conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, bias=conv.bias is not None, version=version, device="meta",
                dtype=conv.weight.dtype,
            )  # fmt: skip
        twin = twin.to_empty(device=conv.weight.device)
        with torch.no_grad():
            twin.weight.copy_(conv.weight)
            if conv.bias is not None:
                twin.bias.copy_(conv.bias)
            twin.offset.weight.zero_()
            twin.offset.bias.zero_()
        twin.train(conv.training)
        return twin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predicted = F.conv2d(
            x, self.offset.weight, self.offset.bias, stride=self.stride, padding=self.padding, dilation=self.dilation
        )
        taps = self.kernel_size[0] * self.kernel_size[1]
        offsets, mask = predicted[:, : 2 * taps], None
        if self.version == "v2":
            mask = 2 * torch.sigmoid(predicted[:, 2 * taps :])
        return deform_conv2d(
            x, offsets, self.weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation,
            mask=mask,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr() + f", deformable={self.version}"


def deformable_modules(module: nn.Module) -> dict[str, DeformConv2d]:
    """Every :class:`DeformConv2d` under ``module`` (backbone, context, anywhere), by module name."""
    return {name: m for name, m in module.named_modules() if isinstance(m, DeformConv2d)}


def _sampled_values(input_shape, weight_shape, out_shape) -> int:
    """B·C_in·k_h·k_w·H_out·W_out: the values a deformable conv samples (its im2col columns)."""
    batch, in_channels = input_shape[0], input_shape[1]
    return batch * in_channels * weight_shape[2] * weight_shape[3] * out_shape[2] * out_shape[3]


def deform_conv2d_flop(input_shape, weight_shape, offset_shape, mask_shape, bias_shape, *args, out_shape=None,
                       **kwargs) -> int:  # fmt: skip
    """FLOPs of ``torchvision::deform_conv2d`` (2 per multiply-add): the conv on the sampled values, plus 4
    multiply-adds of bilinear sampling per sampled value and, with a mask (v2), one multiply more."""
    use_mask = bool(args[-1]) if args else False
    out_channels, in_per_group, kh, kw = weight_shape
    conv = out_shape[0] * out_channels * out_shape[2] * out_shape[3] * in_per_group * kh * kw
    sampling = _sampled_values(input_shape, weight_shape, out_shape) * (4 + int(use_mask))
    return 2 * (conv + sampling)


def deform_conv2d_backward_flop(grad_shape, input_shape, weight_shape, offset_shape, mask_shape, bias_shape, *args,
                                out_shape=None, **kwargs) -> int:  # fmt: skip
    """FLOPs of ``torchvision::_deform_conv2d_backward``: twice the forward pass's."""
    return 2 * deform_conv2d_flop(input_shape, weight_shape, offset_shape, mask_shape, bias_shape, *args,
                                  out_shape=grad_shape)  # fmt: skip


# FlopCounterMode looks formulas up by op *packet* (``func._overloadpacket``): the packet, not ``.default``.
FLOP_FORMULAS = {
    torch.ops.torchvision.deform_conv2d: deform_conv2d_flop,
    torch.ops.torchvision._deform_conv2d_backward: deform_conv2d_backward_flop,
}
