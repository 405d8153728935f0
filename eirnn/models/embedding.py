"""Input embeddings: map task inputs ``u[t]`` (``[B, T, C]``) to the recurrent drive space.

* :class:`LinearEmbedding` -- identity: ``e[t] = u[t]`` (``[B, T, C]``); the model then
  applies ``W_in`` (``[n, C]``). This is the default.
* :class:`AttentionEmbedding` -- multi-head attention pooling over the ``C`` input
  channels treated as tokens (seed 003: 4 heads, 56-d).  At each time step channel
  ``c`` becomes a token ``z_c = u_c * a_c + b_c`` (``a_c, b_c`` in ``R^d``: a
  value-scaled channel embedding plus a channel identity). Head ``h`` has a learned
  query ``q_h`` and attends over the channel tokens::

      w_{h,c} = softmax_c( q_h . (W_K z_c) / sqrt(d_h) )
      o_h     = sum_c w_{h,c} (W_V z_c)            # [d_h], d_h = d / heads
      e[t]    = W_O concat_h(o_h)                   # [d]

  so which channels drive the network, and how strongly, depends on the current
  input configuration. Output ``[B, T, d]``; the model applies ``W_in`` (``[n, d]``).
  The embedding does not depend on the network state, so it is computed for all
  time steps at once before the recurrence.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .fastops import attention_pool


class LinearEmbedding(nn.Module):
    """Identity embedding; ``out_dim == n_inputs``."""

    def __init__(self, n_inputs: int):
        super().__init__()
        self.out_dim = int(n_inputs)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u


class AttentionEmbedding(nn.Module):
    """Multi-head attention pooling over input channels; ``[B, T, C] -> [B, T, embed_dim]``."""

    def __init__(self, n_inputs: int, embed_dim: int = 56, n_heads: int = 4, generator: torch.Generator | None = None):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"model.embed_dim ({embed_dim}) must be divisible by model.n_heads ({n_heads})")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        d = int(embed_dim)
        self.n_inputs, self.out_dim, self.n_heads, self.d_head = int(n_inputs), d, int(n_heads), d // int(n_heads)
        self.channel_scale = nn.Parameter(torch.randn(n_inputs, d, generator=g) / math.sqrt(d))
        self.channel_bias = nn.Parameter(torch.randn(n_inputs, d, generator=g) * 0.1 / math.sqrt(d))
        self.query = nn.Parameter(torch.randn(self.n_heads, self.d_head, generator=g) / math.sqrt(self.d_head))
        self.W_K = nn.Parameter(torch.randn(d, d, generator=g) / math.sqrt(d))
        self.W_V = nn.Parameter(torch.randn(d, d, generator=g) / math.sqrt(d))
        self.W_O = nn.Parameter(torch.randn(d, d, generator=g) / math.sqrt(d))

    def attention(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(weights [..., heads, C], values [..., C, heads, d_h])`` for inputs ``[..., C]``."""
        # K and V are linear in z_c = u_c a_c + b_c, so project a and b once:
        # W_K z_c = u_c (W_K a_c) + W_K b_c.
        ka, kb = self.channel_scale @ self.W_K.T, self.channel_bias @ self.W_K.T  # [C, d]
        va, vb = self.channel_scale @ self.W_V.T, self.channel_bias @ self.W_V.T
        q = self.query  # [H, d_h]
        # scores[..., h, c] = q_h . (u_c ka_c + kb_c)_h / sqrt(d_h)
        qa = torch.einsum("hd,chd->hc", q, ka.view(-1, self.n_heads, self.d_head))
        qb = torch.einsum("hd,chd->hc", q, kb.view(-1, self.n_heads, self.d_head))
        scores = (u.unsqueeze(-2) * qa + qb) / math.sqrt(self.d_head)  # [..., H, C]
        weights = torch.softmax(scores, dim=-1)
        return weights, (va, vb)

    def pool_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(qa, qb, vab)`` of :func:`~eirnn.models.fastops.attention_pool`: the scores are
        ``u_c qa[h, c] + qb[h, c]`` and ``e = [w * u | w] @ vab``, i.e. ``vab`` stacks the
        per-head value maps block-diagonally (``[2 H C, d]``), already multiplied by ``W_O^T``."""
        C, h, dh = self.n_inputs, self.n_heads, self.d_head
        ka, kb = self.channel_scale @ self.W_K.T, self.channel_bias @ self.W_K.T  # [C, d]
        va, vb = self.channel_scale @ self.W_V.T, self.channel_bias @ self.W_V.T
        inv = 1.0 / math.sqrt(dh)
        qa = torch.einsum("hd,chd->hc", self.query, ka.view(C, h, dh)) * inv
        qb = torch.einsum("hd,chd->hc", self.query, kb.view(C, h, dh)) * inv
        blocks = [torch.block_diag(*v.view(C, h, dh).unbind(1)) for v in (va, vb)]  # [h*C, h*dh] each
        return qa, qb, torch.cat(blocks, 0) @ self.W_O.T

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # Same computation as `attention` + pooling + W_O, evaluated by the fused kernel
        # eirnn.models.fastops.attention_pool (the generic softmax over C channels is slow on CPU).
        return attention_pool(u, *self.pool_factors())


def build_embedding(kind: str, n_inputs: int, embed_dim: int = 56, n_heads: int = 4, generator=None) -> nn.Module:
    kind = str(kind).lower()
    if kind == "linear":
        return LinearEmbedding(n_inputs)
    if kind == "attention":
        return AttentionEmbedding(n_inputs, embed_dim, n_heads, generator=generator)
    raise ValueError(f"model.input_embedding must be 'linear' or 'attention', got {kind!r}")
