"""Visual question answering with hard, soft and hybrid attention (see DESIGN.md)."""

__version__ = "0.1.0"
