"""Visual question answering with hard, soft and hybrid attention (see the README)."""

__version__ = "0.1.0"
