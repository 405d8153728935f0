"""Recurrent connectivity under Dale's law: full-rank and low-rank parametrisations.

Convention: ``W[i, j]`` is the weight from presynaptic unit ``j`` onto postsynaptic
unit ``i`` (the recurrent input is ``W @ r``). Dale's law constrains *columns*:
every outgoing weight of an excitatory unit is ``>= 0`` and every outgoing weight of
an inhibitory unit is ``<= 0``. No unit connects to itself (``W[i, i] == 0``).

Both properties hold *exactly* for every matrix returned by :meth:`weight`, for any
value of the raw parameters, because they are built into the parametrisation:
``W = |raw| * sign[None, :] * offdiag`` (a product with a fixed sign vector and a
fixed zero-diagonal mask), so no optimiser step can break them.

Parametrisations (``rank`` config group / ``model.rank``):

* :class:`FullRankWeights` -- ``W = |A| * s^T * (1 - I)``, ``A`` an ``[n, n]`` parameter.
  Effective rank: generically full (``n``).
* :class:`LowRankWeights` with ``dale="product"`` -- ``W = |U V^T| * s^T * (1 - I)``
  (Dale applied to the product: absolute value, then the presynaptic sign).
  The absolute value is a non-linear map of the rank-``r`` product ``U V^T``, so
  the constrained matrix is generically *full rank*; ``r`` limits the number of
  parameters (``2 n r``) and smoothness, not the rank of ``W``.
* :class:`LowRankWeights` with ``dale="factors"`` -- ``W = (|U| (s * |V|)^T) * (1 - I)``
  (signs applied to the factors: ``U >= 0`` and row ``j`` of ``V`` carries unit
  ``j``'s sign, so every column of ``|U| (s*|V|)^T`` already has the sign of its
  presynaptic unit). Before the diagonal is removed the matrix has rank ``<= r``
  exactly; removing self-connections subtracts ``diag(L)``, so
  ``W + diag(L)`` has rank ``<= r`` and ``W`` itself is rank ``r`` plus a
  diagonal correction whose singular values are ``O(1/n)`` of the top ones.

``dale=False`` (unconstrained baseline) drops the absolute value and sign: ``W = A * (1 - I)``.

Every form is multiplied by a fixed ``gain`` (a constant, not a parameter). The model
sets ``gain = 1 / (rate_scale * sqrt(n))`` so that the raw parameters live on an O(1) scale
while ``W`` acts on rates in sp/s: an optimiser step of a given size then changes
the weights by the same relative amount whatever the rate units are.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def dale_signs(is_excitatory: torch.Tensor) -> torch.Tensor:
    """``+1`` for excitatory units, ``-1`` for inhibitory ones; shape ``[n]``."""
    return is_excitatory.to(torch.float32) * 2.0 - 1.0


def _balanced_magnitudes(is_exc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Non-negative ``[n, n]`` magnitudes whose rows are exactly E/I balanced.

    For every postsynaptic row ``i``: ``sum_{j in E} M[i, j] == sum_{j in I} M[i, j]``
    (zero diagonal excluded), so the signed matrix ``M * s`` has zero row sums:
    the uniform population mode is silent at initialisation.
    """
    n = is_exc.numel()
    mag = torch.randn(n, n, generator=generator).abs()
    mag.fill_diagonal_(0.0)
    if is_exc.all() or (~is_exc).all():
        return mag
    e_sum = mag[:, is_exc].sum(1, keepdim=True)
    i_sum = mag[:, ~is_exc].sum(1, keepdim=True).clamp_min(1e-12)
    mag[:, ~is_exc] *= e_sum / i_sum
    return mag


def _spectral_radius(w: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(w.double()).abs().max())


class RecurrentWeights(nn.Module):
    """Base class: holds the sign vector and zero-diagonal mask; :meth:`weight` gives ``W``."""

    def __init__(self, is_excitatory: torch.Tensor, dale: bool = True, gain: float = 1.0):
        super().__init__()
        n = int(is_excitatory.numel())
        self.n = n
        self.dale = bool(dale)
        self.gain = float(gain)
        self.register_buffer("is_excitatory", is_excitatory.clone().bool(), persistent=False)
        self.register_buffer("sign", dale_signs(is_excitatory), persistent=False)
        self.register_buffer("offdiag", 1.0 - torch.eye(n), persistent=False)

    def weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scale_(self, factor: float) -> None:  # pragma: no cover - abstract
        """Multiply ``W`` by ``factor > 0`` in place (used for the spectral-radius init)."""
        raise NotImplementedError

    @torch.no_grad()
    def set_spectral_radius_(self, radius: float) -> None:
        """Rescale so that ``max |eig(W)| == radius`` (no-op for an all-zero matrix)."""
        current = _spectral_radius(self.weight())
        if current > 0 and radius > 0:
            self.scale_(radius / current)


class FullRankWeights(RecurrentWeights):
    """``W = |A| * s^T * (1 - I)`` (Dale) or ``A * (1 - I)`` (unconstrained); ``A``: ``[n, n]``.

    ``init_signs`` (unconstrained only): ``"dale"`` starts ``A`` at the E-I matrix (column
    ``j`` of sign ``s_j``, the magnitudes of the Dale model), ``"random"`` gives every entry of
    those magnitudes a random sign (a sign-free start, as a generic RNN has).
    """

    def __init__(self, is_excitatory: torch.Tensor, dale: bool = True, generator: torch.Generator | None = None,
                 gain: float = 1.0, init_signs: str = "dale"):
        super().__init__(is_excitatory, dale, gain)
        if init_signs not in ("dale", "random"):
            raise ValueError(f"model.init_signs must be 'dale' or 'random', got {init_signs!r}")
        if dale and init_signs != "dale":
            raise ValueError("model.init_signs=random needs model.dale=false (Dale's law fixes every sign)")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        mag = _balanced_magnitudes(self.is_excitatory, g)
        if dale:
            self.raw = nn.Parameter(mag)
        elif init_signs == "dale":
            self.raw = nn.Parameter(mag * self.sign[None, :])
        else:
            signs = torch.randint(0, 2, mag.shape, generator=g).to(mag.dtype) * 2 - 1
            self.raw = nn.Parameter(mag * signs)

    def weight(self) -> torch.Tensor:
        if self.dale:
            return self.raw.abs() * (self.gain * self.sign[None, :] * self.offdiag)
        return self.raw * (self.gain * self.offdiag)

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        self.raw.mul_(factor)


class LowRankWeights(RecurrentWeights):
    """Rank-``r`` factors ``U, V``: ``[n, r]`` each; see the module docstring for ``dale`` modes."""

    def __init__(
        self,
        is_excitatory: torch.Tensor,
        rank: int,
        dale: bool = True,
        mode: str = "product",
        generator: torch.Generator | None = None,
        gain: float = 1.0,
    ):
        super().__init__(is_excitatory, dale, gain)
        if isinstance(rank, bool) or int(rank) != rank or int(rank) < 1:
            raise ValueError(f"model.rank must be a positive integer, got {rank!r}")
        if int(rank) > int(is_excitatory.numel()):
            raise ValueError(f"model.rank={int(rank)} exceeds the network's {int(is_excitatory.numel())} units "
                             f"(recorded + model.n_hidden); use 1..{int(is_excitatory.numel())}, or rank=full")
        if mode not in ("product", "factors"):
            raise ValueError(f"model.lowrank_dale must be 'product' or 'factors', got {mode!r}")
        self.rank = int(rank)
        self.mode = mode
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        u = torch.randn(self.n, self.rank, generator=g) / math.sqrt(self.rank)
        v = torch.randn(self.n, self.rank, generator=g) / math.sqrt(self.rank)
        if dale and mode == "factors":
            u, v = u.abs(), v.abs()
            # E/I balance of every factor column: sum_j s_j |V_jk| = 0.
            exc = self.is_excitatory
            if exc.any() and (~exc).any():
                e_sum = v[exc].sum(0, keepdim=True)
                i_sum = v[~exc].sum(0, keepdim=True).clamp_min(1e-12)
                v[~exc] *= e_sum / i_sum
        elif dale and mode == "product":
            # Balance on average: scaling row j of V scales column j of |U V^T|.
            exc = self.is_excitatory
            if exc.any() and (~exc).any():
                mag = (u @ v.T).abs() * (1.0 - torch.eye(self.n))
                v[~exc] *= mag[:, exc].sum() / mag[:, ~exc].sum().clamp_min(1e-12)
        self.U = nn.Parameter(u)
        self.V = nn.Parameter(v)

    def low_rank_part(self) -> torch.Tensor:
        """The rank-``<= r`` matrix before the diagonal is removed (``factors``/unconstrained modes)."""
        if self.dale and self.mode == "factors":
            return self.gain * (self.U.abs() @ (self.V.abs() * self.sign[:, None]).T)
        return self.gain * (self.U @ self.V.T)

    def weight(self) -> torch.Tensor:
        if not self.dale:
            return (self.U @ self.V.T) * (self.gain * self.offdiag)
        if self.mode == "product":
            return (self.U @ self.V.T).abs() * (self.gain * self.sign[None, :] * self.offdiag)
        return self.low_rank_part() * self.offdiag

    @torch.no_grad()
    def scale_(self, factor: float) -> None:
        root = math.sqrt(factor)
        self.U.mul_(root)
        self.V.mul_(root)


def build_recurrent_weights(
    is_excitatory: torch.Tensor,
    rank: int | None = None,
    dale: bool = True,
    lowrank_dale: str = "product",
    generator: torch.Generator | None = None,
    gain: float = 1.0,
    init_signs: str = "dale",
) -> RecurrentWeights:
    """Full rank when ``rank`` is ``None`` (or ``"full"``), else :class:`LowRankWeights`
    (whose unconstrained start is Gaussian factors, sign-free: ``init_signs`` is full rank only).
    ``rank=0`` is refused (it used to mean full rank silently, under ``model=lowrank``)."""
    if rank is None or (isinstance(rank, str) and rank.lower() in ("full", "none", "null")):
        return FullRankWeights(is_excitatory, dale=dale, generator=generator, gain=gain, init_signs=init_signs)
    if init_signs != "dale":
        raise ValueError("model.init_signs applies to full-rank W_rec only (low-rank factors start sign-free)")
    return LowRankWeights(is_excitatory, int(rank), dale=dale, mode=lowrank_dale, generator=generator, gain=gain)
