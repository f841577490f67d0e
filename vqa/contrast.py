"""A box-free auxiliary objective: each region must find itself in a recoloured, shifted view.

Answers alone leave the vision encoder's region tokens as blind to shape as an untrained
encoder's, and redrawing the pixels around a region (``vqa.reconstruction``) does not change
that. This loss needs only pixels too. Each image is also encoded as a second view, moved by
whole regions and with its colour channels permuted (red becomes blue, ...). A small head maps
each region's token to an embedding, and each region of the first view must pick out the region
of the second view that holds the same pixels among many others (InfoNCE, as the dense
contrastive methods DenseCL and PixPro do). Colour no longer tells regions apart, so the tokens
must tell them apart by the outlines they see: the inside of an object by where its edges are.
On the embedded scenes this made shape readable by a linear probe (0.53 against 0.40 for window
reconstruction; ``scripts/experiments/pretrain_probe.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_SHIFT = 2  # regions, in each direction


def channel_permutation(channels: int, device: torch.device | None = None) -> Tensor:
    """(channels,) a random order of the channels other than their own (channels >= 2),
    from torch's global generator."""
    if channels < 2:
        raise ValueError(f"recolouring needs at least 2 channels, got {channels}")
    identity = torch.arange(channels)
    order = torch.randperm(channels)
    while torch.equal(order, identity):
        order = torch.randperm(channels)
    return order.to(device)


def shifted(pixel_values: Tensor, dx: int, dy: int) -> Tensor:
    """(U, C, H, W) images moved right by ``dx`` and down by ``dy`` pixels, 0 filled in (the
    normalised mean)."""
    height, width = pixel_values.shape[-2:]
    out = torch.zeros_like(pixel_values)
    out[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = pixel_values[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


def recoloured_view(pixel_values: Tensor, patch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The second view of (U, C, H, W) images: moved by up to ``MAX_SHIFT`` whole regions in
    each direction and colour channels permuted; the same move and order for the batch, drawn
    from torch's global generator.

    Returns:
        the view (U, C, H, W), and (P,) regions of the images with (P,) the regions of the view
        that hold the same pixels (row-major over the region grid).
    """
    rows, cols = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
    dx, dy = (int(v) for v in torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,)))
    view = shifted(pixel_values, dx * patch_size, dy * patch_size)
    view = view[:, channel_permutation(pixel_values.shape[1], pixel_values.device)]
    index = torch.arange(rows * cols, device=pixel_values.device)
    row, col = index // cols, index % cols
    inside = (row + dy >= 0) & (row + dy < rows) & (col + dx >= 0) & (col + dx < cols)
    return view, index[inside], ((row + dy) * cols + col + dx)[inside]


def info_nce(first: Tensor, second: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE between matching rows of (P, E) ``first`` and ``second``: each row
    must pick out its partner among the other rows."""
    a, b = F.normalize(first.float(), dim=-1), F.normalize(second.float(), dim=-1)
    logits = a @ b.T / tau  # (P, P)
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class RegionContrast(nn.Module):
    """The embedding head and the loss of matching regions across the two views.

    Args:
        hidden_size: width of the vision tokens.
        embedding_size: width of the embeddings compared (the head is an MLP).
        samples: region pairs drawn from the batch for one InfoNCE (its negatives).
        tau: the softmax temperature.
    """

    def __init__(
        self, hidden_size: int, embedding_size: int = 128, samples: int = 1024, tau: float = 0.2
    ) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(hidden_size, 2 * embedding_size),
            nn.GELU(),
            nn.Linear(2 * embedding_size, embedding_size),
        )
        self.samples, self.tau = samples, tau

    def forward(self, first: Tensor, second: Tensor, source: Tensor, target: Tensor) -> Tensor:
        """The InfoNCE loss of up to ``samples`` random pairs of regions that hold the same
        pixels, drawn from every image of the batch.

        Args:
            first, second: (U, N, hidden_size) the tokens of every region of the images and of
                their second view (:func:`recoloured_view`), in order.
            source, target: (P,) the regions of the images and of the view that match.
        """
        pairs = first[:, source].flatten(0, 1), second[:, target].flatten(0, 1)  # (U * P, D)
        chosen = torch.randperm(len(pairs[0]), device=first.device)[: self.samples]
        return info_nce(self.head(pairs[0][chosen]), self.head(pairs[1][chosen]), self.tau)
