"""Question-conditioned vision: FiLM layers between the ViT's blocks (Perez et al. 2018).

FiLM scales and shifts every channel of every vision token by amounts computed from the
question, before each transformer block: ``x <- x * (1 + gamma(q)) + beta(q)``. A question about
"the red circle" can turn up the channels that respond to red and to round edges before the
blocks mix the tokens, which is how FiLM learned CLEVR from answers alone. The price: the
blocks run once per question instead of once per image (the stem still runs once per image).
"""

from __future__ import annotations

from torch import Tensor, nn

CONDITIONINGS = ("none", "film")


class FiLMGenerator(nn.Module):
    """Question vector -> a per-channel scale and shift for the input of each vision block.

    The projection starts at zero, so a new model starts as the unconditioned encoder.

    Args:
        question_dim: size of the question vector.
        channels: width of the vision tokens.
        layers: number of vision blocks (one modulation before each).
    """

    def __init__(self, question_dim: int, channels: int, layers: int) -> None:
        super().__init__()
        self.channels, self.layers = channels, layers
        self.norm = nn.LayerNorm(question_dim)
        self.proj = nn.Linear(question_dim, 2 * layers * channels)

    def reset_parameters(self) -> None:
        """Zero the projection: every scale is 1 and every shift 0 until training moves them."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, question: Tensor) -> Tensor:
        """(B, question_dim) -> (B, layers, 2, channels): [gamma, beta] for each block."""
        film = self.proj(self.norm(question))
        return film.view(question.shape[0], self.layers, 2, self.channels)


def modulate(tokens: Tensor, film: Tensor) -> Tensor:
    """Apply one block's FiLM: (B, T, C) tokens, (B, 2, C) [gamma, beta] -> (B, T, C)."""
    gamma, beta = film[:, None, 0], film[:, None, 1]  # (B, 1, C) each
    return tokens * (1 + gamma) + beta
