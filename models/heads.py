"""Projection heads: the student MLP, the MoCo-v2 teacher head and the SwAV RN50w2 head.

Layer indices follow the released checkpoints (``fc.0``/``fc.2`` for MoCo, ``projection_head.0/1/3`` for SwAV), so
their weights load by position without renaming.
"""
from __future__ import annotations

from torch import nn

__all__ = ["mlp_head", "swav_head", "student_head", "compress_head"]


def mlp_head(in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> nn.Sequential:
    """Linear -> ReLU -> Linear, no BN: the MoCo-v2 head and the official BINGO student head."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def swav_head(in_dim: int = 4096, hidden_dim: int = 8192, out_dim: int = 128) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear: SwAV's projection head (4096 -> 8192 -> 128 for RN50w2)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


def student_head(in_dim: int, out_dim: int = 128, mlp: bool = True, hidden_dim: int = 2048) -> nn.Module:
    """The new head on the student: the official 2-layer MLP (``--mlp``), or one linear layer (MoCo-v1 style)."""
    if mlp:
        return mlp_head(in_dim, hidden_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim))


def compress_head(in_dim: int, teacher_dim: int, one_bank: bool) -> nn.Module:
    """CompRess's student has no head (its pooled features are compared with its own bank); CompRess-1q ends in one
    linear map to the teacher's width (compared with the teacher's bank)."""
    return nn.Linear(in_dim, teacher_dim) if one_bank else nn.Identity()
