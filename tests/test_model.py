"""EIRNN invariants: Dale's law, no self-connections, init, ranks, time constants, embeddings."""
import numpy as np
import pytest
import torch

from eirnn.models import EIRNN, LowRankWeights, TimeConstants, hidden_split
from eirnn.models.connectivity import FullRankWeights

REC = np.array([True] * 10 + [False] * 5)


def _check_dale(model: EIRNN):
    W = model.W_rec.detach()
    exc = model.is_excitatory
    assert (W[:, exc] >= 0).all(), "E columns must be >= 0"
    assert (W[:, ~exc] <= 0).all(), "I columns must be <= 0"
    assert torch.all(torch.diagonal(W) == 0), "no self-connections"


def _random_steps(model: EIRNN, n_steps: int = 5, lr: float = 0.2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # bounded steps: every weight moves
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4, 12, model.n_inputs, generator=g)
    for _ in range(n_steps):
        opt.zero_grad()
        out = model(u, generator=g)
        # an arbitrary objective that pushes weights in all directions
        loss = (out.rates * torch.randn(out.rates.shape, generator=g)).sum()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("rank,mode", [(None, "product"), (3, "product"), (3, "factors")])
def test_dale_and_zero_diagonal_hold_after_optimizer_steps(rank, mode):
    model = EIRNN(14, REC, n_hidden=10, rank=rank, lowrank_dale=mode, seed=1)
    _check_dale(model)
    _random_steps(model)
    _check_dale(model)
    assert torch.isfinite(model.W_rec).all()


def test_units_layout_and_hidden_ratio():
    assert hidden_split(39, 4.0) == (31, 8)
    assert hidden_split(0, 4.0) == (0, 0)
    model = EIRNN(14, REC, n_hidden=10, hidden_ei_ratio=4.0)
    assert model.n_units == 25 and model.n_recorded == 15
    exc = model.is_excitatory.numpy()
    np.testing.assert_array_equal(exc[:15], REC)  # recorded neurons keep their own type, in order
    assert exc[15:].sum() == 8 and (~exc[15:]).sum() == 2


def test_init_is_balanced_and_scaled_to_spectral_radius():
    model = EIRNN(14, REC, n_hidden=25, spectral_radius=0.9, rate_scale=10.0)
    W = model.W_rec.detach().double()
    # exact E/I balance: every row sums to zero
    assert torch.allclose(W.sum(1), torch.zeros(W.shape[0], dtype=W.dtype), atol=1e-5)
    rho = torch.linalg.eigvals(W * float(model.rate_scale.detach())).abs().max().item()
    assert rho == pytest.approx(0.9, rel=1e-4)


def test_forward_shapes_positive_rates_and_readout_from_e_units():
    model = EIRNN(14, REC, n_hidden=5, n_outputs=2)
    out = model(torch.rand(3, 7, 14))
    assert out.rates.shape == (3, 7, 20) and out.outputs.shape == (3, 7, 2)
    assert (out.rates >= 0).all()
    assert model.W_out.shape == (2, int(model.is_excitatory.sum()))
    # the readout ignores I units: perturbing an I unit's rate does not change y
    r = out.rates.detach().clone()
    r_i = r.clone()
    r_i[..., ~model.is_excitatory] += 5.0
    y = r.index_select(-1, model.exc_index) @ model.W_out.T + model.b_out
    y_i = r_i.index_select(-1, model.exc_index) @ model.W_out.T + model.b_out
    assert torch.allclose(y, y_i)


def test_recurrence_matches_equation_step_by_step():
    """x[t] = (1-a) x[t-1] + a (W r[t-1] + W_in u[t] + b) + sigma sqrt(a) xi[t]."""
    model = EIRNN(14, REC, n_hidden=5, noise_scale=0.3, learnable_h0=True, h0_init=0.1)
    u = torch.rand(2, 6, 14)
    g1 = torch.Generator().manual_seed(3)
    out = model(u, generator=g1, return_states=True)
    g2 = torch.Generator().manual_seed(3)
    xi = torch.randn((2, 6, model.n_units), generator=g2)
    a = model.alpha()
    W, Win, b = model.W_rec, model.W_in, model.bias
    x = model.h0.expand(2, -1)
    r = model.rate(x)
    for t in range(6):
        x = (1 - a) * x + a * (r @ W.T + u[:, t] @ Win.T + b) + model.noise_scale * a.sqrt() * xi[:, t]
        r = model.rate(x)
        torch.testing.assert_close(out.states[:, t], x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.rates[:, t], r, rtol=1e-5, atol=1e-5)


def test_noise_scales_with_sqrt_alpha():
    model = EIRNN(1, np.array([True]), n_hidden=0, noise_scale=1.0, tau=100.0, dt=25.0)
    with torch.no_grad():
        model.recurrent.raw.zero_()
        model.W_in.zero_()
    out = model(torch.zeros(4000, 1, 1), return_states=True)
    # one step from x=0 with zero drive: x = sigma * sqrt(alpha) * xi
    assert out.states[:, 0, 0].std().item() == pytest.approx(np.sqrt(0.25), rel=0.05)


def test_full_rank_is_full_and_lowrank_ranks():
    exc = torch.tensor([True] * 30 + [False] * 10)
    full = FullRankWeights(exc).weight().detach()
    assert torch.linalg.matrix_rank(full.double()).item() == 40
    # Dale on the product (abs then sign): abs breaks the low rank -> generically full rank
    prod = LowRankWeights(exc, rank=3, mode="product")
    assert torch.linalg.matrix_rank(prod.weight().detach().double()).item() > 3
    # signs on the factors: rank <= r before the diagonal is removed
    fac = LowRankWeights(exc, rank=3, mode="factors")
    W = fac.weight().detach().double()
    L = fac.low_rank_part().detach().double()
    assert torch.linalg.matrix_rank(W + torch.diag(torch.diagonal(L)), rtol=1e-5).item() == 3  # float32 weights
    s = torch.linalg.svdvals(W)
    assert (s[3:] / s[0]).max() < 0.2  # rank 3 plus a small diagonal correction


def test_lowrank_rejects_non_positive_rank():
    with pytest.raises(ValueError, match="positive integer"):
        LowRankWeights(torch.tensor([True, False]), rank=0 - 1)


@pytest.mark.parametrize("mode", ["scalar", "population", "neuron"])
def test_learnable_alpha_stays_in_unit_interval(mode):
    exc = torch.tensor([True] * 6 + [False] * 2)
    tc = TimeConstants(exc, dt=25.0, tau=50.0, learnable_alpha=mode)
    torch.testing.assert_close(tc.alpha(), torch.full((8,), 0.5))
    with torch.no_grad():
        tc.alpha_logit.add_(torch.randn_like(tc.alpha_logit) * 5)
    a = tc.alpha()
    assert a.shape == (8,) and ((a > 0) & (a < 1)).all()
    assert tc.alpha_logit.requires_grad


@pytest.mark.parametrize("mode", ["population", "neuron"])
def test_learnable_tau_is_bounded_smoothly_and_keeps_gradients(mode):
    exc = torch.tensor([True] * 6 + [False] * 2)
    tc = TimeConstants(exc, dt=25.0, tau=50.0, tau_inh=30.0, learnable_tau=mode, tau_max=500.0)
    torch.testing.assert_close(tc.tau(), torch.tensor([50.0] * 6 + [30.0] * 2))
    with torch.no_grad():
        tc.tau_raw.add_(-8.0)  # pushed towards the lower bound
    tau = tc.tau()
    assert (tau > 25.0).all() and (tc.alpha() < 1).all()  # tau > dt => alpha < 1
    tc.alpha().sum().backward()
    assert (tc.tau_raw.grad.abs() > 0).all(), "a smooth bound keeps a gradient everywhere"


def test_lab_clamp_reproduces_alpha_above_one_and_frozen_variant():
    exc = torch.tensor([True, False])
    tc = TimeConstants(exc, dt=25.0, tau=50.0, tau_inh=20.0, learnable_tau="population",
                       tau_bound="clamp", tau_min=10.0, tau_max=200.0, freeze=True)
    assert tc.alpha()[1].item() == pytest.approx(1.25)  # the lab's collapse: (1 - alpha) < 0
    assert not tc.tau_raw.requires_grad


def test_attention_embedding_shapes_and_softmax():
    model = EIRNN(14, REC, n_hidden=5, input_embedding="attention", embed_dim=56, n_heads=4)
    assert model.W_in.shape == (20, 56)
    u = torch.rand(2, 5, 14)
    w, _ = model.embedding.attention(u)
    assert w.shape == (2, 5, 4, 14)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, 4))
    out = model(u)
    assert out.rates.shape == (2, 5, 20)
    out.rates.sum().backward()
    assert model.embedding.query.grad is not None


def test_unconstrained_model_can_have_mixed_signs():
    model = EIRNN(14, REC, n_hidden=5, dale=False)
    _check_dale(model)  # same (Dale-conforming) initialisation as the constrained model ...
    _random_steps(model)  # ... but nothing keeps the signs during training
    W = model.W_rec.detach()
    exc = model.is_excitatory
    assert (W[:, exc] < 0).any() and torch.all(torch.diagonal(W) == 0)


def test_initialisation_is_seeded():
    a = EIRNN(14, REC, seed=3).W_rec.detach()
    b = EIRNN(14, REC, seed=3).W_rec.detach()
    c = EIRNN(14, REC, seed=4).W_rec.detach()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unconstrained_init_signs():
    """model.init_signs (dale=false): 'dale' starts at the Dale model's E-I matrix, 'random' gives
    the same magnitudes random signs; the spectral radius is set either way; misuse is refused."""
    import numpy as np
    import pytest
    import torch

    from eirnn.models import EIRNN

    exc = [True] * 8 + [False] * 4
    kw = dict(n_inputs=3, recorded_is_excitatory=exc, n_hidden=8, dt=25.0, seed=3)
    ei = EIRNN(dale=True, **kw)
    same = EIRNN(dale=False, **kw)
    rnd = EIRNN(dale=False, init_signs="random", **kw)
    w_ei, w_same, w_rnd = (m.W_rec.detach().numpy() for m in (ei, same, rnd))
    np.testing.assert_allclose(w_same, w_ei, rtol=1e-6, atol=1e-9)  # the default start is the E-I matrix
    sign = np.where(ei.is_excitatory.numpy(), 1.0, -1.0)[None, :]
    off = ~np.eye(w_rnd.shape[0], dtype=bool)
    forbidden = ((w_rnd * sign) < 0)[off].mean()
    assert 0.35 < forbidden < 0.65 and ((w_same * sign) < 0)[off].sum() == 0
    radius = lambda w: float(np.max(np.abs(np.linalg.eigvals(w * float(ei.rate_scale)))))  # noqa: E731
    assert radius(w_rnd) == pytest.approx(radius(w_ei), rel=1e-4)
    with pytest.raises(ValueError, match="dale=false"):
        EIRNN(dale=True, init_signs="random", **kw)
    with pytest.raises(ValueError, match="full-rank"):
        EIRNN(dale=False, init_signs="random", rank=4, **kw)
    with pytest.raises(ValueError, match="init_signs"):
        EIRNN(dale=False, init_signs="gaussian", **kw)


def test_n_hidden_per_neuron_scales_the_hidden_population():
    rec14 = np.array([True] * 9 + [False] * 5)
    rec41 = np.array([True] * 30 + [False] * 11)
    # round(0.95 * 14) = 13 hidden units, round(0.95 * 41) = 39 (the fixed default's count)
    assert EIRNN(15, rec14, n_hidden=39, n_hidden_per_neuron=0.95).n_units == 14 + 13
    assert EIRNN(15, rec41, n_hidden=5, n_hidden_per_neuron=0.95).n_units == 41 + 39
    assert EIRNN(15, rec14, n_hidden=39, n_hidden_per_neuron=0.0).n_units == 14
    assert EIRNN(15, rec14, n_hidden=7).n_units == 14 + 7  # unset: n_hidden as given
    with pytest.raises(ValueError, match="n_hidden_per_neuron"):
        EIRNN(15, rec14, n_hidden_per_neuron=-1.0)
