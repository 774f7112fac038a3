"""Local-attention transformer: each bar attends to the ``band`` bars up to itself.

Keys and values are gathered as ``band`` shifted copies instead of a full
(T, T) score matrix, so cost is O(T * band) and long windows stay cheap. Only
slicing, stacking and elementwise ops are used, which export cleanly to ONNX
(no ``nn.TransformerEncoder`` mask / ``is_causal`` pitfalls).

The head reads the last position AND the mean over all positions: with
``n_layers`` blocks of band ``band`` the last position alone only sees the
last ``n_layers * (band - 1) + 1`` bars, so without the pooled summary the
older bars of the window would never reach the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TransformerConfig:
    window: int = 32
    n_features: int = 7
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    band: int = 8  # bars each position attends to, itself included
    dropout: float = 0.0


class LocalAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0, "d_model must divide into heads"
        self.n_heads, self.band = cfg.n_heads, cfg.band
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        # offset j of position t is key t - band + 1 + j; keys before the window start are masked.
        pos = torch.arange(cfg.window)[:, None] - cfg.band + 1 + torch.arange(cfg.band)[None, :]
        self.register_buffer("pad_mask", pos < 0, persistent=False)  # (T, band)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, K = self.n_heads, self.band
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        k = F.pad(k.view(B, T, H, C // H).transpose(1, 2), (0, 0, K - 1, 0))  # (B, H, T+K-1, D)
        v = F.pad(v.view(B, T, H, C // H).transpose(1, 2), (0, 0, K - 1, 0))
        keys = torch.stack([k[:, :, j : j + T] for j in range(K)], dim=3)  # (B, H, T, K, D)
        vals = torch.stack([v[:, :, j : j + T] for j in range(K)], dim=3)  # (B, H, T, K, D)
        att = (q.unsqueeze(3) * keys).sum(-1) / math.sqrt(C // H)  # (B, H, T, K)
        att = att.masked_fill(self.pad_mask[:T], float("-inf")).softmax(-1)  # the last offset (self) is never masked
        y = (att.unsqueeze(-1) * vals).sum(3)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = LocalAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TransformerBody(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.n_features, cfg.d_model)
        self.pos = nn.Parameter(torch.zeros(cfg.window, cfg.d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(2 * cfg.d_model, 4)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z) + self.pos  # (B, T, C)
        for block in self.blocks:
            h = block(h)
        h = self.ln_f(h)
        return self.head(torch.cat([h[:, -1], h.mean(1)], dim=1))  # (B, 2C) -> (B, 4)
