"""The fully connected CRF of DeepLab v1 §4 / v2 §3.2 (Krähenbühl & Koltun, NIPS 2011) on the network's softmax.

The energy is Σ −log P(xᵢ) + Σᵢ<ⱼ μ(xᵢ, xⱼ)·k(fᵢ, fⱼ) with Potts compatibility and two Gaussian kernels: the
*appearance* kernel w₁·exp(−|pᵢ−pⱼ|²/2σα² − |Iᵢ−Iⱼ|²/2σβ²) over position and RGB, and the *smoothness* kernel
w₂·exp(−|pᵢ−pⱼ|²/2σγ²) over position alone, minimised by mean-field iterations with the permutohedral lattice.
Widths are in pixels of the image the CRF sees (the input resolution) and RGB units (0-255), as in the papers.

It runs through ``pydensecrf2`` (the maintained fork of Lucas Beyer's wrapper of Krähenbühl's code), the optional
extra ``crf``: ``pip install -e '.[crf]'`` (it builds from source; a C++ compiler is needed). ``make install``
installs it.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ablations.ioutil import require_extra


def load_densecrf() -> Any:
    """The ``pydensecrf.densecrf`` module, or an ImportError of one line naming the extra."""
    return require_extra("eval.crf=True", "pydensecrf.densecrf", "crf", "pydensecrf2")


@dataclass(frozen=True)
class CrfSettings:
    """Mean-field iterations and the two kernels' weights (w₁, w₂) and widths (σα, σβ, σγ)."""

    iterations: int = 10
    appearance_weight: float = 4.0  # w₁
    appearance_xy: float = 65.0  # σα, pixels
    appearance_rgb: float = 3.0  # σβ, RGB units
    smoothness_weight: float = 3.0  # w₂
    smoothness_xy: float = 3.0  # σγ, pixels

    @classmethod
    def from_eval(cls, e: Any) -> CrfSettings:
        return cls(
            iterations=e.crf_iterations,
            appearance_weight=e.crf_appearance_weight,
            appearance_xy=e.crf_appearance_xy,
            appearance_rgb=e.crf_appearance_rgb,
            smoothness_weight=e.crf_smoothness_weight,
            smoothness_xy=e.crf_smoothness_xy,
        )


def dense_crf(probabilities: np.ndarray, image: np.ndarray, settings: CrfSettings = CrfSettings()) -> np.ndarray:
    """``(C, H, W)`` class probabilities and the ``(H, W, 3)`` uint8 RGB image → ``(C, H, W)`` float32 marginals
    after ``settings.iterations`` mean-field steps. Unary = −log P, clipped at 1e-8 (a one-hot input stays finite)."""
    densecrf = load_densecrf()
    classes, height, width = probabilities.shape
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"image {image.shape} {image.dtype}: expected ({height}, {width}, 3) uint8")
    unary = -np.log(np.clip(probabilities.astype(np.float32), 1e-8, 1.0)).reshape(classes, -1)
    field = densecrf.DenseCRF2D(width, height, classes)
    field.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if settings.smoothness_weight > 0:
        field.addPairwiseGaussian(sxy=settings.smoothness_xy, compat=settings.smoothness_weight)
    if settings.appearance_weight > 0:
        field.addPairwiseBilateral(
            sxy=settings.appearance_xy,
            srgb=settings.appearance_rgb,
            rgbim=np.ascontiguousarray(image),
            compat=settings.appearance_weight,
        )
    return np.asarray(field.inference(settings.iterations), dtype=np.float32).reshape(classes, height, width)


def to_rgb8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` images in [0, 1] → ``(B, H, W, 3)`` uint8, the CRF's appearance features."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def timed_crf(job: tuple[np.ndarray, np.ndarray, CrfSettings]) -> tuple[np.ndarray, float]:
    """One image's CRF and its own time in seconds (one core): what a pool's worker runs."""
    started = time.perf_counter()
    out = dense_crf(*job)
    return out, time.perf_counter() - started


class CrfRunner:
    """The CRF over batches, an image per core: ``processes`` > 1 runs a pool of that many spawned processes
    (pydensecrf holds the GIL, so threads would not help), started at the first batch and kept until
    :meth:`close`; 1 runs in this process. The per-image time it records is each image's own (one core), so it
    does not depend on the pool's size."""

    def __init__(self, settings: CrfSettings, processes: int = 1) -> None:
        self.settings, self.processes = settings, max(1, processes)
        self._pool: ProcessPoolExecutor | None = None
        self.seconds, self.images = 0.0, 0

    def __call__(self, probabilities: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` softmax and ``(B, 3, H, W)`` images in [0, 1] → ``(B, C, H, W)`` marginals on the
        probabilities' device."""
        rgb = to_rgb8(images)
        scores = probabilities.detach().float().cpu().numpy()
        jobs = [(p, i, self.settings) for p, i in zip(scores, rgb, strict=True)]
        if self.processes > 1 and len(jobs) > 1:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))
            results = list(self._pool.map(timed_crf, jobs))
        else:
            results = [timed_crf(job) for job in jobs]
        self.seconds += sum(t for _, t in results)
        self.images += len(results)
        return torch.from_numpy(np.stack([out for out, _ in results])).to(probabilities.device)

    def take_ms_per_image(self) -> float:
        """The mean time per image since the last call, in ms (NaN when none ran), and start counting anew."""
        ms = 1000.0 * self.seconds / self.images if self.images else float("nan")
        self.seconds, self.images = 0.0, 0
        return ms

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def refine(probabilities: torch.Tensor, images: torch.Tensor, settings: CrfSettings) -> torch.Tensor:
    """The CRF on every image of a batch, in this process (:class:`CrfRunner` for a pool)."""
    return CrfRunner(settings)(probabilities, images)
