"""A box-free auxiliary objective: every region's token redraws the pixels around it.

Answers alone teach the vision encoder slowly what an object looks like: a wrong answer about a
triangle says little about which pixels made it one. Any image has pixels, so this loss needs
no boxes: a linear head reads each region's final token and predicts the
``window x window`` patches centred on that region (the region and its neighbours, zero-padded
at the border), normalised per window as MAE normalises its targets (He et al. 2022), so that
the loss is about the shape and the colour contrasts in the window rather than its brightness.
Predicting the neighbours too makes each token describe the whole object it is part of, much as
the region attribute loss does where boxes exist.

Masked (the config's ``reconstruction_mask_ratio`` > 0, :func:`hide_regions`): each image is
encoded a second time with a random share of its regions hidden (their pixels set to 0, the
normalised mean), and only the hidden regions' tokens redraw their windows (masked image
modelling, as SimMIM and MAE; Xie et al. 2022, He et al. 2022). A hidden region's pixels are not
in its token, so the encoder must infer them from the visible rest of the object: what a
circle's missing quarter or a square's corner looks like. Masking the pixels rather than the
tokens works with every vision encoder. The masked pass does not move BatchNorm's running
statistics (:func:`frozen_batch_norm_statistics`), so evaluation sees the statistics of whole
images.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def window_pixels(pixel_values: Tensor, patch_size: int, window: int) -> Tensor:
    """The pixels of the ``window x window`` patches centred on each patch of the grid.

    Args:
        pixel_values: (U, C, H, W) images, H and W multiples of ``patch_size``.
        patch_size: side of a region in pixels.
        window: an odd number of patches per side.

    Returns:
        (U, N, C * (window * patch_size) ** 2), N = (H / patch_size) * (W / patch_size), each
        window normalised to mean 0 and variance 1 (zero padding outside the image).
    """
    side = window * patch_size
    pad = (window // 2) * patch_size
    windows = F.unfold(pixel_values, kernel_size=side, stride=patch_size, padding=pad)
    windows = windows.transpose(1, 2)  # (U, N, C * side * side)
    mean = windows.mean(-1, keepdim=True)
    variance = windows.var(-1, keepdim=True)
    return (windows - mean) / (variance + 1e-6).sqrt()


def hide_regions(pixel_values: Tensor, patch_size: int, ratio: float) -> tuple[Tensor, Tensor]:
    """Hide ``round(ratio * N)`` random regions of each image: their pixels become 0.

    Args:
        pixel_values: (U, C, H, W) normalised images, H and W multiples of ``patch_size``.
        patch_size: side of a region in pixels.
        ratio: share of the N regions to hide, in (0, 1); at least one region is hidden.

    Returns:
        (U, C, H, W) the images with the hidden regions zeroed, and (U, N) bool, True for the
        hidden regions (row-major over the region grid). Drawn from torch's global generator.
    """
    images, _, height, width = pixel_values.shape
    rows, cols = height // patch_size, width // patch_size
    count = max(1, round(ratio * rows * cols))
    order = torch.rand(images, rows * cols, device=pixel_values.device).argsort(-1)
    hidden = torch.zeros_like(order, dtype=torch.bool).scatter(-1, order[:, :count], True)
    grid = hidden.view(images, 1, rows, cols).to(pixel_values.dtype)
    pixels = grid.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    return pixel_values * (1 - pixels), hidden


@contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``module`` still normalise by the batch (in
    training mode) but leave their running statistics as they were."""
    norms = [
        layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)
    ]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


class WindowReconstruction(nn.Module):
    """A linear head from a region's token to the normalised pixels of its window.

    Args:
        hidden_size: width of the vision tokens.
        num_channels: channels of the images.
        patch_size: side of a region in pixels.
        window: an odd number of patches per side of the window to predict.
    """

    def __init__(self, hidden_size: int, num_channels: int, patch_size: int, window: int) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"the reconstruction window must be an odd number >= 1, got {window}")
        self.patch_size = patch_size
        self.window = window
        self.head = nn.Linear(hidden_size, num_channels * (window * patch_size) ** 2)

    def forward(
        self,
        features: Tensor,
        regions: Tensor | None,
        pixel_values: Tensor,
        hidden: Tensor | None = None,
    ) -> Tensor:
        """The mean squared error of the predicted windows, averaged over regions and images.

        Args:
            features: (U, M, hidden_size) final vision tokens, one row per image.
            regions: (U, M) the region of each token (negative: a token with no region, such as
                a fold of the dropped ones), or None when the M tokens are every region in order.
            pixel_values: (U, C, H, W) the whole images (the targets).
            hidden: (U, N) bool, the regions hidden from the encoder (:func:`hide_regions`): only
                they count; with ``regions`` None. None: every region counts.
        """
        target = window_pixels(pixel_values, self.patch_size, self.window)  # (U, N, P)
        if hidden is not None:
            if regions is not None:
                raise ValueError("hidden regions need the tokens of every region, in order")
            valid = hidden
        elif regions is None:
            valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            valid = regions >= 0
            slots = regions.clamp_min(0)[..., None].expand(-1, -1, target.shape[-1])
            target = target.gather(1, slots)  # (U, M, P)
        predicted = self.head(features).float()
        errors = (predicted - target.float()).pow(2).mean(-1)  # (U, M)
        return (errors * valid).sum() / valid.sum().clamp_min(1)
