"""Shape and mask checks shared by every loss ([B, T, N] rates, bool masks)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_rates"]


def check_rates(
    model_rates: Tensor, target_rates: Optional[Tensor] = None, mask: Optional[Tensor] = None
) -> Tensor:
    """Validate ``[B, T, N]`` inputs and return a bool mask of the same shape.

    Raises ``ValueError`` when a rate tensor is not 3-D, when the two rate
    tensors differ in shape, or when ``mask`` does not match. ``mask=None``
    becomes an all-``True`` mask on the rates' device.
    """
    if model_rates.dim() != 3:
        raise ValueError(f"rates must be [B, T, N], got shape {tuple(model_rates.shape)}")
    if target_rates is not None and target_rates.shape != model_rates.shape:
        raise ValueError(
            f"model_rates {tuple(model_rates.shape)} and target_rates "
            f"{tuple(target_rates.shape)} must have the same shape [B, T, N]"
        )
    if mask is None:
        return torch.ones(model_rates.shape, dtype=torch.bool, device=model_rates.device)
    if mask.shape != model_rates.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match rates {tuple(model_rates.shape)}")
    return mask.to(dtype=torch.bool, device=model_rates.device)
