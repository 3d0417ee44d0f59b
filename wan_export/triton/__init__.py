"""Triton Inference Server model repositories over an engines folder (`wan-export triton`); no torch needed."""
from wan_export.triton.repository import PIPELINE_MODEL, RepositoryOptions, write_repository

__all__ = ["PIPELINE_MODEL", "RepositoryOptions", "write_repository"]
