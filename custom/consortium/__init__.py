"""Federated medical image segmentation for hospital consortia on NVIDIA FLARE."""

__version__ = "0.1.0"
