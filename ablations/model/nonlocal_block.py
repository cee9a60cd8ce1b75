"""The embedded-Gaussian non-local block (Wang, Girshick, Gupta and He, "Non-local Neural Networks", CVPR 2018,
arXiv:1711.07971), on a 2-D feature map.

Every position i of the output is the input plus a weighted sum over all positions j (§3.1-3.3):

    z_i = x_i + W_z · y_i,   y_i = Σ_j softmax_j(θ(x_i)ᵀ φ(x_j)) · g(x_j)

θ, φ and g are 1×1 convs from the ``C`` input channels to ``channels`` (the paper's bottleneck: half of ``C``,
§3.3), the softmax over j is the embedded-Gaussian pairwise function f = exp(θᵀφ) normalised by Σ_j f (§3.2;
unscaled, as in the paper, not by 1/√channels as in a transformer), and W_z is a 1×1 conv back to ``C`` followed
by BatchNorm whose scale γ starts at zero (§4, "Implementation Details": the block then starts as an identity
mapping, so it can be put into a network without changing what the network computes at initialisation). The
paper's optional subsampling of φ and g by max-pooling (§3.3) is not used: every position attends to every other.

The attention matrix holds (h·w)² values per image: on a 33×33 map (513² at output stride 16) 1.19 M, 4.5 MiB in
fp32; at output stride 8 (65×65) 17.9 M, 68 MiB — and autograd keeps it for the backward pass.
:func:`attention_bytes` is that figure; ``ablations describe`` prints it and training refuses a batch whose
attention matrices alone exceed the device's memory (:func:`ablations.training.train.check_attention_memory`).
"""

from __future__ import annotations

import torch
from torch import nn


def attention_entries(height: int, width: int, batch: int = 1) -> int:
    """Values of the attention matrices of ``batch`` images whose feature map is ``height × width``: B·(h·w)²."""
    return batch * (height * width) ** 2


def attention_bytes(height: int, width: int, batch: int = 1, *, bytes_per_value: int = 4) -> int:
    """Bytes of those matrices (fp32 by default: softmax runs in fp32 under autocast too)."""
    return attention_entries(height, width, batch) * bytes_per_value


class NonLocalBlock(nn.Module):
    """``(B, C, h, w) → (B, C, h, w)``: the residual embedded-Gaussian non-local block; the identity at
    initialisation (γ of the output BatchNorm is zero).

    Args:
        in_channels: ``C``, the channels of the map (kept: the block is residual).
        channels: width of θ, φ and g; ``None`` = ``C // 2`` (the paper's bottleneck, §3.3).
    """

    def __init__(self, in_channels: int, channels: int | None = None) -> None:
        super().__init__()
        channels = max(1, in_channels // 2) if channels is None else channels
        self.channels = channels
        self.theta = nn.Conv2d(in_channels, channels, 1)
        self.phi = nn.Conv2d(in_channels, channels, 1)
        self.g = nn.Conv2d(in_channels, channels, 1)
        self.out = nn.Sequential(nn.Conv2d(channels, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels))
        nn.init.zeros_(self.out[1].weight)  # γ = 0 (and β = 0): W_z·y is 0, z = x — the block starts as identity

    def attention(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) → (B, h·w, h·w), rows sum to 1
        theta = self.theta(x).flatten(2)  # (B, C', N)
        phi = self.phi(x).flatten(2)  # (B, C', N)
        return torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # f(x_i, x_j) / C(x), softmax over j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        g = self.g(x).flatten(2)  # (B, C', N)
        y = g @ self.attention(x).transpose(1, 2)  # (B, C', N): y_i = Σ_j f_ij g_j
        return x + self.out(y.view(batch, self.channels, height, width))
