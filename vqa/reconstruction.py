"""A box-free auxiliary objective: every region's token redraws the pixels around it.

Answers alone teach the vision encoder slowly what an object looks like: a wrong answer about a
triangle says little about which pixels made it one. Any image has pixels, so this loss needs
no boxes: a linear head reads each region's final token and predicts the
``window x window`` patches centred on that region (the region and its neighbours, zero-padded
at the border), normalised per window as MAE normalises its targets (He et al. 2022), so that
the loss is about the shape and the colour contrasts in the window rather than its brightness.
Predicting the neighbours too makes each token describe the whole object it is part of, much as
the region attribute loss does where boxes exist.
"""

from __future__ import annotations

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

    def forward(self, features: Tensor, regions: Tensor | None, pixel_values: Tensor) -> Tensor:
        """The mean squared error of the predicted windows, averaged over regions and images.

        Args:
            features: (U, M, hidden_size) final vision tokens, one row per image.
            regions: (U, M) the region of each token (negative: a token with no region, such as
                a fold of the dropped ones), or None when the M tokens are every region in order.
            pixel_values: (U, C, H, W) the images the tokens come from.
        """
        target = window_pixels(pixel_values, self.patch_size, self.window)  # (U, N, P)
        if regions is None:
            valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            valid = regions >= 0
            slots = regions.clamp_min(0)[..., None].expand(-1, -1, target.shape[-1])
            target = target.gather(1, slots)  # (U, M, P)
        predicted = self.head(features).float()
        errors = (predicted - target.float()).pow(2).mean(-1)  # (U, M)
        return (errors * valid).sum() / valid.sum().clamp_min(1)
