"""edgeseg: domain-adaptive semantic segmentation from training to engines on vehicles."""

__version__ = "0.1.0"
