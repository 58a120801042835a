"""crossflow: CrossFlow (arXiv 2412.15213) — flow matching from one modality straight to another."""

__version__ = "0.1.0"
