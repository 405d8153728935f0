"""Gradient balancing between the PSTH loss and the trial-matching loss.

The lab's recipe (seed 001, after Défossez et al. 2023) combines a primary loss
``L_main`` (``L_neuron``) and an auxiliary loss ``L_aux`` (``L_trial``) as::

    g = grad L_main + w * grad L_aux + grad L_extra,     w = scale * ||grad L_main|| / ||grad L_aux||

so the auxiliary gradient always has ``scale`` times the norm of the main one,
whatever the two losses' magnitudes. ``w`` is a constant (no gradient flows
through the norms). ``L_extra`` (weight and activity regularisation) is added unbalanced.

Modes (``loss.balance.mode``):

* ``param``  -- norms of the gradients w.r.t. the *parameters* (seed 001). Needs the
  gradient of each loss separately. When ``outputs`` (the tensor both losses are computed
  from) is the rates of a fused recurrence (:class:`~eirnn.models.recurrence.FusedRecurrence`)
  or a view of them, both vector-Jacobian products go through the recurrence in ONE reverse
  sweep carrying the two cotangents ``dL_neuron/d outputs`` and ``dL_trial/d outputs``
  (:func:`~eirnn.models.recurrence.output_vjp`: each step one ``[2B, n] x [n, n]`` product,
  ``softplus'`` evaluated once); upstream of the recurrence (drive, weight factors) autograd
  runs once per loss. Same gradients as two backward passes, up to float round-off. Otherwise
  two autograd passes.
* ``output`` -- norms of the gradients w.r.t. the *model rates* (the network output,
  as in audiocraft's Balancer). The two output gradients are cheap (they do not
  traverse the recurrence); their balanced sum is back-propagated once.
* ``fixed``  -- ``L_main + lambda * L_aux + L_extra`` with a fixed ``lambda``.
* ``off``    -- ``L_main + L_extra`` (no trial-matching term).

:meth:`GradientBalancer.backward` fills ``.grad`` of the parameters and returns
detached statistics (tensors; no host synchronisation).

Member axis (``members=K``, an ensemble of ``K`` models stacked as one, every parameter
``[K, ...]``): the losses are ``[K]`` (one per member) and every norm, hence every weight
``w_k = scale |g_main,k| / |g_aux,k|``, is member ``k``'s own -- slice ``k`` of each gradient is
exactly what the single-model balancer gives member ``k``. ``members=None`` is one model (scalar
losses, the global norm over all parameters).
"""
from __future__ import annotations

from typing import Sequence

import torch

MODES = ("param", "output", "fixed", "off")


def _global_norm(grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
    sq = [g.pow(2).sum() for g in grads if g is not None]
    return torch.stack(sq).sum().sqrt() if sq else torch.zeros(())


def member_grad_norms(grads: Sequence[torch.Tensor | None], size: int) -> torch.Tensor:
    """``[K]`` Euclidean norm of each member's slice of the stacked gradients ``[K, ...]``."""
    sq = None
    for g in grads:
        if g is None:
            continue
        s = g.reshape(size, -1).pow(2).sum(1)
        sq = s if sq is None else sq + s
    return sq.sqrt() if sq is not None else torch.zeros(size)


def per_member(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``w`` ``[K]`` shaped to broadcast over ``like`` ``[K, ...]``."""
    return w.view(-1, *([1] * (like.dim() - 1)))


def _norms(grads, members: int | None) -> torch.Tensor:
    return _global_norm(grads) if members is None else member_grad_norms(grads, members)


def _weighted(w: torch.Tensor, g: torch.Tensor, members: int | None) -> torch.Tensor:
    return w * g if members is None else per_member(w, g) * g


def _param_grads_one_sweep(params, main, aux, outputs, retain: bool):
    """``(grad main, grad aux)`` w.r.t. ``params`` with one reverse sweep through the recurrence
    (see the module docstring), or ``None`` when ``outputs`` does not come from one.

    ``main`` and ``aux`` must depend on the parameters only through ``outputs`` (as in output mode)."""
    from eirnn.models.recurrence import output_vjp, supports_output_vjp

    if outputs is None or not supports_output_vjp(outputs, 2):
        return None
    go = [torch.autograd.grad(loss, outputs, retain_graph=True, allow_unused=True)[0] for loss in (main, aux)]
    inputs, per_k = output_vjp(outputs, go)
    return [torch.autograd.grad(inputs, params, grad_outputs=grads, retain_graph=retain or k == 0, allow_unused=True)
            for k, grads in enumerate(per_k)]


class GradientBalancer:
    """Combine ``L_main`` and ``L_aux`` gradients; see the module docstring.

    Args:
        mode: one of ``param``, ``output``, ``fixed``, ``off``.
        scale: ``ltrial_scale``, the ratio ``||w grad L_aux|| / ||grad L_main||`` (balanced modes).
        lambda_fixed: the weight of ``L_aux`` in ``fixed`` mode.
        eps: guards the division when ``grad L_aux`` vanishes.
    """

    def __init__(self, mode: str = "param", scale: float = 0.5, lambda_fixed: float = 0.1, eps: float = 1e-12):
        mode = str(mode).lower()
        if mode not in MODES:
            raise ValueError(f"loss.balance.mode must be one of {MODES}, got {mode!r}")
        self.mode, self.scale, self.lambda_fixed, self.eps = mode, float(scale), float(lambda_fixed), float(eps)

    def weight(self, norm_main: torch.Tensor, norm_aux: torch.Tensor) -> torch.Tensor:
        """``w = scale * norm_main / norm_aux`` (0 when the auxiliary gradient vanishes)."""
        return torch.where(norm_aux > self.eps, self.scale * norm_main / norm_aux.clamp_min(self.eps), torch.zeros_like(norm_aux))

    def backward(
        self,
        params: Sequence[torch.nn.Parameter],
        main: torch.Tensor,
        aux: torch.Tensor | None,
        extra: torch.Tensor | None = None,
        outputs: torch.Tensor | None = None,
        members: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Set ``p.grad`` for every parameter in ``params`` and return statistics.

        Args:
            params: the trainable parameters (gradients are *assigned*, not accumulated).
            main, aux: scalar losses, or ``[K]`` with ``members=K`` (``aux=None`` behaves like mode ``off``).
            extra: added with weight 1 (regularisers; scalar or ``[K]``), or ``None``.
            outputs: the tensor both losses are computed from (required for ``output`` mode);
                with ``members=K`` a ``[K, ...]`` tensor or a list of ``K`` member tensors.
            members: ``K`` for a stacked ensemble (parameters ``[K, ...]``, per-member norms), ``None``: one model.
        Returns:
            dict with ``weight`` (effective weight of ``L_aux``), and for balanced modes
            ``grad_norm_main`` and ``grad_norm_aux`` -- detached, scalar (``[K]`` with ``members``).
        """
        params = [p for p in params if p.requires_grad]
        mode = "off" if aux is None else self.mode
        stats: dict[str, torch.Tensor] = {}
        zero = main.detach() * 0.0
        K = members
        # the member losses are summed: slice k of each gradient is member k's own gradient
        total_of = (lambda t: t) if K is None else (lambda t: t.sum())  # noqa: E731
        if mode in ("off", "fixed"):
            w = zero if mode == "off" else zero + self.lambda_fixed
            total = total_of(main) if mode == "off" else total_of(main) + self.lambda_fixed * total_of(aux)
            if extra is not None:
                total = total + total_of(extra)
            grads = torch.autograd.grad(total, params, allow_unused=True)
            stats["weight"] = w
        elif mode == "param":
            m_tot, a_tot = total_of(main), total_of(aux)
            pair = _param_grads_one_sweep(params, m_tot, a_tot, outputs if K is None or torch.is_tensor(outputs)
                                          else None, retain=extra is not None)
            if pair is not None:
                g_main, g_aux = pair
            else:
                g_main = torch.autograd.grad(m_tot, params, retain_graph=True, allow_unused=True)
                g_aux = torch.autograd.grad(a_tot, params, retain_graph=extra is not None, allow_unused=True)
            n_main, n_aux = _norms(g_main, K), _norms(g_aux, K)
            w = self.weight(n_main, n_aux)
            g_extra = (torch.autograd.grad(total_of(extra), params, allow_unused=True) if extra is not None
                       else [None] * len(params))
            grads = []
            for gm, ga, ge in zip(g_main, g_aux, g_extra):
                parts = [g for g in (gm, None if ga is None else _weighted(w, ga, K), ge) if g is not None]
                grads.append(sum(parts) if parts else None)
            stats.update(weight=w, grad_norm_main=n_main, grad_norm_aux=n_aux)
        else:  # output
            if outputs is None:
                raise ValueError("output-space balancing needs the `outputs` tensor the losses were computed from")
            if K is not None and isinstance(outputs, (list, tuple)):  # one tensor per member
                outs = list(outputs)
                go_main = torch.autograd.grad(main.sum(), outs, retain_graph=True, allow_unused=True)
                go_aux = torch.autograd.grad(aux.sum(), outs, retain_graph=True, allow_unused=True)
                go_main = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, go_main)]
                go_aux = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, go_aux)]
                n_main = torch.stack([g.norm() for g in go_main])
                n_aux = torch.stack([g.norm() for g in go_aux])
                w = self.weight(n_main, n_aux)
                surrogate = sum((o * (gm + w[k] * ga).detach()).sum()
                                for k, (o, gm, ga) in enumerate(zip(outs, go_main, go_aux)))
            else:
                go_main = torch.autograd.grad(total_of(main), outputs, retain_graph=True)[0]
                go_aux = torch.autograd.grad(total_of(aux), outputs, retain_graph=True)[0]
                if K is None:
                    n_main, n_aux = go_main.norm(), go_aux.norm()
                else:
                    n_main, n_aux = go_main.reshape(K, -1).norm(dim=1), go_aux.reshape(K, -1).norm(dim=1)
                w = self.weight(n_main, n_aux)
                surrogate = (outputs * (go_main + _weighted(w, go_aux, K)).detach()).sum()
            if extra is not None:
                surrogate = surrogate + total_of(extra)
            grads = torch.autograd.grad(surrogate, params, allow_unused=True)
            stats.update(weight=w, grad_norm_main=n_main, grad_norm_aux=n_aux)
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.detach()
        return {k: v.detach() for k, v in stats.items()}
