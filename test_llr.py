"""
Tests of llr.py: the spectrum, the Hill estimator, the multiplier map, the controller's schedule,
DDP agreement, and Muon against torch.optim.Muon. CPU only, no network, tiny sizes.

    python -m pytest -q test_llr.py
"""

import dataclasses
import math
import os
import pickle
import warnings

import pytest
import torch
from torch import nn

import llr
from conftest import run_ddp, with_spectrum
from lanton import LANTON
from common import layer_table
from llr import LLR, LLRConfig, Muon, alpha_to_multipliers, esd, hill_alpha, orthogonalize, param_groups
from model import LLaMA, PRESETS


def randn(*shape, seed=0, std=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def ref_alpha(w):
    """The float64 svdvals reference."""
    return hill_alpha(torch.linalg.svdvals(w.double()) ** 2)


# ---- spectra and the Hill estimator ----


@pytest.mark.parametrize("a", [2.0, 3.5])
def test_hill_recovers_power_law_exponent(a):
    # inverse-cdf Pareto sample with density ~ x^-a on [1, inf); the tail above the median is again
    # Pareto(a), so the Hill MLE is unbiased up to a spread of (a - 1) / sqrt(n) = 1-2.5% at n = 5000
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = (1 - u) ** (-1 / (a - 1))
    assert hill_alpha(x) == pytest.approx(a, rel=0.06)
    assert hill_alpha(x * 1e-3) == pytest.approx(hill_alpha(x), rel=1e-9)  # scale free


def test_hill_formula_by_hand():
    eigs = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])  # N = 5, i = 2, n = 3, tail = 2, 4, 8
    expected = 1 + 3 / (math.log(2) + math.log(4) + math.log(8) - 3 * math.log(2))
    assert hill_alpha(eigs) == pytest.approx(expected, rel=1e-12)
    # xmin_pos = 4: i = 1, tail starts at 1.0
    expected4 = 1 + 4 / (math.log(1 * 2 * 4 * 8) - 4 * math.log(1.0))
    assert hill_alpha(eigs, xmin_pos=4) == pytest.approx(expected4, rel=1e-12)


def test_alpha_at_random_init():
    # N(0, 0.02) gives ~2.12 square and ~2.99 at 2048x768; over seeds the spread is ~0.005
    assert ref_alpha(randn(768, 768, std=0.02)) == pytest.approx(2.12, abs=0.03)
    a = hill_alpha(esd(randn(2048, 768, std=0.02)))
    assert a == pytest.approx(2.99, abs=0.04)
    assert hill_alpha(esd(randn(768, 2048, std=0.02))) == pytest.approx(2.99, abs=0.04)  # W^T W vs W W^T: same tail


def test_farms_alpha_does_not_depend_on_the_shape():
    """At random init the plain alpha is ~2.13 square, ~3.06 at 1:2.75 and ~3.48 at 1:4 (tiny's attention,
    MLP and a 4x embedding); FARMS gives all three ~2.115 (measured over 20 seeds: means 2.111-2.116,
    one matrix's s.d. 0.009-0.018), so over 4 seeds their means agree within 0.03."""
    shapes = [(128, 128), (352, 128), (128, 352), (512, 128)]
    farms = {s: sum(llr.alphas([("w", randn(*s, std=0.02, seed=k))], estimator="farms")["w"]
                    for k in range(4)) / 4 for s in shapes}
    plain = {s: llr.alphas([("w", randn(*s, std=0.02, seed=0))])["w"] for s in shapes}
    assert max(farms.values()) - min(farms.values()) < 0.03, farms
    assert all(v == pytest.approx(2.115, abs=0.03) for v in farms.values()), farms
    assert plain[512, 128] - plain[128, 128] > 1.0  # the bias FARMS removes


def test_farms_esd_pools_square_windows():
    """farms_esd: windows**2 square windows of side min(rows, cols) // 2, evenly spaced from corner to corner,
    each window's squared singular values, pooled and sorted."""
    w = randn(40, 12, std=1.0)
    eigs = llr.farms_esd(w, windows=3)
    side, starts_r, starts_c = 6, [0, 17, 34], [0, 3, 6]
    want = torch.cat([torch.linalg.svdvals(w[r:r + side, c:c + side].double()) ** 2
                      for r in starts_r for c in starts_c]).sort().values
    assert eigs.shape == (9 * side,)
    assert torch.allclose(eigs.double(), want, rtol=1e-4, atol=1e-5)
    stack = torch.stack([w, 2 * w])
    assert torch.allclose(llr.farms_esd(stack, windows=3)[1], 4 * eigs, rtol=1e-4)


def test_alpha_is_scale_invariant():
    w = randn(300, 120, std=0.02)
    assert hill_alpha(esd(7.0 * w)) == pytest.approx(hill_alpha(esd(w)), rel=1e-6)


SHAPES = [(64, 64), (96, 40), (40, 96), (257, 128), (1, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_esd_matches_float64_singular_values(shape):
    w = randn(*shape, seed=3)
    e = esd(w)
    ref = torch.linalg.svdvals(w.double()).flip(0) ** 2  # ascending
    assert e.dtype == torch.float64 and e.shape == (min(shape),) and e.device == w.device
    assert torch.all(e[1:] >= e[:-1]) and torch.all(e >= 0)
    torch.testing.assert_close(e.double(), ref, rtol=1e-5, atol=1e-6 * ref.max().item())


def spiky(rows, cols, seed):
    """A trained-looking matrix: a Marchenko-Pastur bulk plus a power-law spectrum plus a few spikes."""
    n = min(rows, cols)
    s = torch.arange(1, n + 1, dtype=torch.float64) ** -0.7
    return with_spectrum(rows, cols, s, seed) + randn(rows, cols, seed=seed + 2, std=0.02 / math.sqrt(max(rows, cols)))


@pytest.mark.parametrize("shape", [(128, 128), (192, 64), (64, 192), (300, 100)])
def test_fast_route_alpha_matches_svdvals_reference(shape):
    for w in [randn(*shape, seed=5, std=0.02), spiky(*shape, seed=7)]:
        assert hill_alpha(esd(w)) == pytest.approx(ref_alpha(w), rel=1e-4)
    # a stack of same-shape matrices in one call (the controller's route), each row as if alone
    stack = torch.stack([randn(*shape, seed=s, std=0.02) for s in range(3)] + [spiky(*shape, seed=9)])
    alpha = hill_alpha(esd(stack))
    assert alpha.shape == (4,)
    for a, w in zip(alpha.tolist(), stack):
        assert a == pytest.approx(ref_alpha(w), rel=1e-4) and a == pytest.approx(hill_alpha(esd(w)), rel=1e-12)
    torch.testing.assert_close(esd(stack)[1], esd(stack[1]))


def test_degenerate_spectra_are_nan_not_inf():
    bad = [torch.zeros(16, 16), torch.eye(16), torch.full((16, 8), float("nan")),
           torch.ones(16, 8).index_fill_(0, torch.tensor([3]), float("inf")), torch.ones(16, 8)]  # ones: rank 1
    for w in bad:
        assert math.isnan(hill_alpha(esd(w)))
    assert not torch.isinf(esd(torch.eye(4))).any()


def test_null_eigenvalues_of_a_float32_low_rank_matrix_are_not_a_tail():
    # rank 3: the median eigenvalue is float32 rounding noise (~1e-6 of the top), not a spectrum; alpha 1.27 without the check
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3, generator=g) @ torch.randn(3, 64, generator=g)
    assert math.isnan(hill_alpha(esd(w)))


# ---- llr.alphas: any model, the route LLR uses ----


def hf_model(arch):
    """A transformers model from a small random config (no download)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "gpt2":  # Conv1D layers store their weights transposed, (in, out); lm_head is tied to wte
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=96, vocab_size=200))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=200, max_position_embeddings=64))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_alphas_of_transformers_models_match_svdvals(arch):
    model = hf_model(arch)
    with torch.no_grad():  # a few large singular values in one matrix per shape family: not only init spectra
        for n, p in model.named_parameters():
            if p.ndim == 2 and ".0." in n:
                p[:3] *= 8.0
    matrices = {n: p for n, p in model.named_parameters() if p.ndim == 2}
    got = llr.alphas(model)
    assert list(got) == list(matrices)  # every 2-D weight once (a tied head is the embedding), in model order
    if arch == "gpt2":
        assert matrices["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # (in, out): transposed
    else:
        assert {"model.layers.1.self_attn.k_proj.weight", "lm_head.weight"} <= set(got)
    for n, w in matrices.items():
        assert got[n] == pytest.approx(ref_alpha(w), abs=1e-4), n


def test_llr_measures_through_alphas():
    model = TinyLM()
    info = LLR(model, torch.optim.SGD(param_groups(model), lr=0.1), total_steps=10).step(0)
    assert info["alphas"] == llr.alphas(model)  # one route: the same bits
    assert llr.alphas(nn.Sequential(nn.LayerNorm(4))) == {}


def test_spectra_run_on_one_cpu_thread():
    """The batched spectral work runs on one CPU thread (fast on a busy CPU), so alphas have the same bits at
    any thread count (multi-threaded eigvalsh of a 128 x 128 Gram does not), and the caller's thread count
    comes back, also after an error."""
    threads, matrices = torch.get_num_threads(), [(f"w{i}", randn(256, 128, seed=i)) for i in range(3)]
    try:
        torch.set_num_threads(2)
        inside = llr.batched_over_ranks([(lambda x: torch.full((len(x),), float(torch.get_num_threads())), randn(3))])
        assert inside == [1.0] and torch.get_num_threads() == 2
        with pytest.raises(ZeroDivisionError):
            llr.batched_over_ranks([(lambda x: 1 / 0, randn(3))])
        assert torch.get_num_threads() == 2
        two = llr.alphas(matrices)
        torch.set_num_threads(1)
        assert llr.alphas(matrices) == two
    finally:
        torch.set_num_threads(threads)


# ---- alpha -> multiplier ----


def test_multiplier_map():
    alphas = {"a": 2.0, "b": 3.0, "c": 4.0, "d": 2.5}
    m = alpha_to_multipliers(alphas, r_min=1.0, r_max=3.0)
    assert m["a"] == 1.0 and m["c"] == 3.0 and m["b"] == pytest.approx(2.0) and m["d"] == pytest.approx(1.5)
    by_alpha = sorted(alphas, key=alphas.get)
    assert [m[k] for k in by_alpha] == sorted(m.values())  # monotone: lighter tail -> larger lr
    assert alpha_to_multipliers({"x": 2.1, "y": 2.1}, 1.0, 5.0) == {"x": 5.0, "y": 5.0}  # all equal -> r_max
    assert alpha_to_multipliers({"x": 2.0, "y": float("nan"), "z": 3.0}) == {"x": 1.0, "z": 3.0}
    assert alpha_to_multipliers({}) == {}


def test_config_validation():
    LLRConfig()
    for bad in [dict(interval=-1), dict(ramp=-2), dict(window=1.5), dict(r_min=0.0), dict(r_min=3.0, r_max=2.0),
                dict(xmin_pos=1.0), dict(embed_head="zero"), dict(estimator="svd")]:
        with pytest.raises(ValueError):
            LLRConfig(**bad)


# ---- the controller ----


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


class TinyLM(nn.Module):
    """Embedding, two blocks with LLaMA-style names, a norm gain and an untied head."""

    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(dim, dim, bias=False),
                                                    "up_proj": nn.Linear(dim, 3 * dim, bias=False),
                                                    "down_proj": nn.Linear(3 * dim, dim, bias=False)}) for _ in range(2)])
        self.norm = nn.Parameter(torch.ones(dim))
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.embed_tokens(idx)
        for blk in self.layers:
            x = x + blk["q_proj"](x)
            x = x + blk["down_proj"](torch.relu(blk["up_proj"](x)))
        return self.lm_head(x * self.norm)

    def get_output_embeddings(self):  # how a model names its head (transformers' convention)
        return self.lm_head


def scripted(monkeypatch, ctrl, script):
    """Make the controller see the alphas script[step] (a list over its matrices, which are all analysed) when
    it measures: the measuring section returns them instead of running the alpha function it is given."""
    assert ctrl.analysed == [n for n, _ in ctrl.measured]
    state = {"step": 0}
    monkeypatch.setattr(llr, "batched_over_ranks", lambda jobs: list(script[state["step"]]))
    return state


def run(ctrl, state, steps):
    """lr_scale of each group, step by step."""
    out = []
    for s in steps:
        state["step"] = s
        ctrl.step(s)
        out.append([g["lr_scale"] for g in llr._groups(ctrl.optimizers)])
    return out


def three_layer_ctrl(**cfg):
    model = mlp()
    opt = torch.optim.SGD(param_groups(model), lr=0.1)
    ctrl = LLR(model, opt, total_steps=100, cfg=LLRConfig(**cfg))
    return ctrl, [i for i, g in enumerate(llr._groups(ctrl.optimizers)) if g["params"][0].ndim == 2]


def test_soft_switching_exact_values(monkeypatch):
    ctrl, mats = three_layer_ctrl(interval=4, ramp=2, window=0.1, r_min=1.0, r_max=3.0)
    state = scripted(monkeypatch, ctrl, {0: [1.0, 2.0, 3.0], 4: [3.0, 2.0, 1.0], 8: [3.0, 2.0, 1.0]})
    got = [[row[i] for i in mats] for row in run(ctrl, state, range(10))]
    assert got[0] == [1.0, 2.0, 3.0]  # first assignment is hard
    assert got[1] == got[2] == got[3] == [1.0, 2.0, 3.0]
    assert got[4] == [1.0, 2.0, 3.0]  # knot at the recompute step: value unchanged
    assert got[5] == [2.0, 2.0, 2.0]  # half way
    assert got[6] == got[7] == got[8] == got[9] == [3.0, 2.0, 1.0]  # arrived exactly at t + ramp
    biases = [row[i] for row in run(ctrl, state, [9]) for i in range(len(row)) if i not in mats]
    assert biases == [1.0, 1.0, 1.0]


def test_hard_switching_exact_values(monkeypatch):
    ctrl, mats = three_layer_ctrl(interval=4, ramp=0, window=0.1)
    state = scripted(monkeypatch, ctrl, {0: [1.0, 2.0, 3.0], 4: [3.0, 2.0, 1.0], 8: [2.0, 2.0, 2.0]})
    got = [[row[i] for i in mats] for row in run(ctrl, state, range(10))]
    assert got[:4] == [[1.0, 2.0, 3.0]] * 4
    assert got[4:8] == [[3.0, 2.0, 1.0]] * 4
    assert got[8:] == [[3.0, 3.0, 3.0]] * 2  # all equal -> r_max


def test_ramp_longer_than_interval_and_window_freeze(monkeypatch):
    # recomputes at 0, 4, 8 (window 0.1 * 100 = 10); ramp 8 > interval 4; the last ramp outlives the window
    ctrl, mats = three_layer_ctrl(interval=4, ramp=8, window=0.1)
    state = scripted(monkeypatch, ctrl, {0: [1.0, 2.0, 3.0], 4: [3.0, 2.0, 1.0], 8: [1.0, 3.0, 2.0]})
    infos = {}
    for s in range(20):
        state["step"] = s
        info = ctrl.step(s)
        if info:
            infos[s] = info
        infos.setdefault("scales", []).append([llr._groups(ctrl.optimizers)[i]["lr_scale"] for i in mats])
    assert sorted(k for k in infos if k != "scales") == [0, 4, 8]
    v = infos["scales"]
    assert v[4] == [1.0, 2.0, 3.0] and v[6] == [1.5, 2.0, 2.5]  # 2/8 of the way
    mid = [2.0, 2.0, 2.0]  # at step 8 the first ramp is half way: the new one starts there
    assert v[8] == mid
    assert v[12] == [1.5, 2.5, 2.0]  # 4/8 of the way from mid to [1, 3, 2]
    assert v[16] == v[19] == [1.0, 3.0, 2.0]  # the window closed at 10 but the ramp finished
    assert infos[8]["multipliers"] == dict(zip(ctrl.analysed, [1.0, 3.0, 2.0]))
    assert ctrl.step(40) is None  # frozen: on an interval step past the window nothing is recomputed


@pytest.mark.parametrize("estimator", ["hill", "farms"])
def test_llr_step_runs_the_documented_functions(monkeypatch, estimator):
    """LLR.step is the paper's steps through the public functions a reader is shown: esd (or farms_esd, which
    pools esd's of windows), hill_alpha, alpha_to_multipliers, switching. Wrapped, each is called, on stacks
    of same-shape matrices, and what hill_alpha returns is what the controller logs and maps."""
    model = TinyLM()
    plain = llr.alphas(model, estimator=estimator)  # the same functions, unwrapped
    calls = {name: [] for name in ["esd", "farms_esd", "hill_alpha", "alpha_to_multipliers", "switching"]}

    def wrap(name, change=lambda out: out):
        real = getattr(llr, name)
        monkeypatch.setattr(llr, name, lambda *a, **kw: change((calls[name].append(a[0]), real(*a, **kw))[1]))

    for name in ["esd", "farms_esd", "alpha_to_multipliers", "switching"]:
        wrap(name)
    wrap("hill_alpha", lambda alpha: alpha + 100.0)  # marked, to see it is these numbers that are used
    info = LLR(model, torch.optim.SGD(param_groups(model), lr=0.1), total_steps=10,
               cfg=LLRConfig(estimator=estimator)).step(0)
    matrices = {n: p for n, p in model.named_parameters() if p.ndim == 2}
    assert sum(len(stack) for stack in calls["hill_alpha"]) == len(matrices)  # every matrix once, as stacks
    assert len(calls["hill_alpha"]) == len({p.shape for p in matrices.values()})  # one call per shape
    assert len(calls["farms_esd" if estimator == "farms" else "esd"]) == len(calls["hill_alpha"])
    assert len(calls["esd"]) == len(calls["hill_alpha"])  # farms_esd: one esd of all the windows of a stack
    assert info["alphas"] == {n: a + 100.0 for n, a in plain.items()}
    assert calls["alpha_to_multipliers"] == [{n: info["alphas"][n] for n in matrices if "proj" in n}]
    assert len(calls["switching"]) >= len(param_groups(model))  # every group's lr_scale


def test_switching_exact_values():
    """switching(t, start, target, t0, ramp): linear from start at t0 to target at t0 + ramp, exactly."""
    assert [llr.switching(t, 1.0, 3.0, 10, 4) for t in range(9, 16)] == [1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    assert llr.switching(10, 1.0, 3.0, 10, 0) == 3.0  # hard switching
    assert llr.switching(12, 0.3, 0.7, 10, 4) == 0.3 + (0.7 - 0.3) * 2 / 4


def test_default_cadence_is_the_papers_proportions():
    # 40 of 3,200 steps, ramp 20, window boundary included: recomputes at 0, 40, ..., 640 (17 of them)
    model = mlp()
    ctrl = LLR(model, torch.optim.SGD(param_groups(model), lr=0.1), total_steps=3200)
    assert (ctrl.interval, ctrl.ramp) == (40, 20)
    assert [s for s in range(3200) if ctrl.step(s)] == list(range(0, 641, 40))
    ctrl = LLR(model, torch.optim.SGD(param_groups(model), lr=0.1), total_steps=100, cfg=LLRConfig(interval=10, ramp=-1))
    assert (ctrl.interval, ctrl.ramp) == (10, 5)
    assert [s for s in range(100) if ctrl.step(s)] == [0, 10, 20]  # 20 <= 0.2 * 100


def test_mean_one_keeps_allocation_without_extra_lr():
    model = TinyLM()
    opt = torch.optim.AdamW(param_groups(model), lr=1e-3)
    plain = LLR(model, opt, total_steps=100).step(0)["multipliers"]
    info = LLR(model, opt, total_steps=100, cfg=LLRConfig(mean_one=True)).step(0)["multipliers"]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    assert sum(sizes[n] * m for n, m in info.items()) / sum(sizes[n] for n in info) == pytest.approx(1.0, rel=1e-12)
    ratio = {n: info[n] / plain[n] for n in plain}  # one common factor: the order and the ratios stay
    assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-12) and min(ratio.values()) < 1


def test_resume_mid_ramp_is_exact(tmp_path, monkeypatch):
    script = {s: [1.0 + (s % 3), 2.0 + math.sin(s), 3.0 - s / 10] for s in range(0, 40, 4)}
    cfg = dict(interval=4, ramp=6, window=0.3)  # recomputes at 0, 4, 8, ...; ramps always in flight
    ctrl, _ = three_layer_ctrl(**cfg)
    st = scripted(monkeypatch, ctrl, script)
    full = run(ctrl, st, range(30))

    ctrl1, _ = three_layer_ctrl(**cfg)
    st1 = scripted(monkeypatch, ctrl1, script)
    first = run(ctrl1, st1, range(11))  # stop after step 10: in the middle of the ramp started at 8
    torch.save({"llr": ctrl1.state_dict()}, tmp_path / "ckpt.pt")
    ctrl2, _ = three_layer_ctrl(**cfg)
    ctrl2.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["llr"])
    st2 = scripted(monkeypatch, ctrl2, script)
    assert first + run(ctrl2, st2, range(11, 30)) == full  # bitwise: same floats every step


def test_degenerate_layer_keeps_multiplier_and_warns():
    model = mlp()
    opt = torch.optim.SGD(param_groups(model), lr=0.1)
    ctrl = LLR(model, opt, total_steps=100, cfg=LLRConfig(interval=1, ramp=0, window=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrl.step(0)  # healthy init: no warning
    before = {g["name"]: g["lr_scale"] for g in opt.param_groups if g["name"] in ctrl.analysed}
    with torch.no_grad():
        model[0].weight.zero_()
        model[2].weight.copy_(torch.eye(32))  # flat spectrum
        model[4].weight[0, 0] = float("nan")
    with pytest.warns(UserWarning, match="degenerate"):
        info = ctrl.step(1)
    assert info["alphas"] == {} and info["multipliers"] == before
    scales = [g["lr_scale"] for g in opt.param_groups]
    assert all(math.isfinite(s) for s in scales)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ctrl.step(2)  # once per layer, not every recompute

    # a layer that is degenerate from the start keeps 1.0
    model = mlp()
    with torch.no_grad():
        model[2].weight.zero_()
    opt = torch.optim.SGD(param_groups(model), lr=0.1)
    ctrl = LLR(model, opt, total_steps=100)
    with pytest.warns(UserWarning, match="2.weight"):
        ctrl.step(0)
    assert opt.param_groups[2]["lr_scale"] == 1.0
    assert sorted([opt.param_groups[0]["lr_scale"], opt.param_groups[4]["lr_scale"]]) == [1.0, 3.0]


def test_sequential_with_sgd():
    model = mlp()
    opt = torch.optim.SGD(param_groups(model, weight_decay=0.01), lr=0.1)
    assert [g["name"] for g in opt.param_groups] == [n for n, _ in model.named_parameters()]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0] * 3
    ctrl = LLR(model, opt, total_steps=50, cfg=LLRConfig(interval=40))
    info = ctrl.step(0)
    assert set(info["alphas"]) == set(info["multipliers"]) == {"0.weight", "2.weight", "4.weight"}
    assert sorted(info["multipliers"].values())[0] == 1.0 and max(info["multipliers"].values()) == 3.0
    assert all("lr_scale" in g for g in opt.param_groups)
    assert ctrl.step(1) is None and ctrl.seconds > 0
    x = torch.randn(4, 16)
    model(x).square().mean().backward()
    opt.step()


def test_head_is_found_by_the_models_own_accessor():
    # our model with an MLP as wide as the vocabulary: the old rule (out_features == vocab) took gate/up for heads
    from model import LLaMA, ModelConfig
    model = LLaMA(ModelConfig(dim=96, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=256, max_seq_len=8))
    assert model.layers[0].mlp.gate_proj.out_features == 256
    role = {n: llr.roles(model)[id(p)] for n, p in model.named_parameters()}
    assert role["lm_head.weight"] == "head" and role["embed_tokens.weight"] == "embed"
    assert {role[n] for n in role if "_proj" in n} == {"hidden"}
    transformers = pytest.importorskip("transformers")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                                   num_attention_heads=2, vocab_size=64))
    role = {n: llr.roles(llama)[id(p)] for n, p in llama.named_parameters()}
    assert role["lm_head.weight"] == "head" and role["model.embed_tokens.weight"] == "embed"
    assert {role[n] for n in role if "_proj" in n} == {"hidden"} and role["model.norm.weight"] == "vector"
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16))
    role = {n: llr.roles(gpt2)[id(p)] for n, p in gpt2.named_parameters()}  # tied head: the embedding
    assert role["transformer.wte.weight"] == role["transformer.wpe.weight"] == "embed"
    assert role["transformer.h.0.attn.c_attn.weight"] == role["transformer.h.0.mlp.c_fc.weight"] == "hidden"


def test_tiny_lm_with_adamw_and_muon():
    torch.manual_seed(0)
    model = TinyLM()
    groups = param_groups(model)
    role = llr.roles(model)
    hidden = [g for g in groups if role[id(g["params"][0])] == "hidden"]
    rest = [g for g in groups if role[id(g["params"][0])] != "hidden"]
    opts = [torch.optim.AdamW(rest, lr=1e-3), Muon(hidden, lr=0.02)]
    ctrl = LLR(model, opts, total_steps=100)
    assert ctrl.special == ["embed_tokens.weight", "lm_head.weight"]  # in model order
    assert len(ctrl.analysed) == 6
    info = ctrl.step(0)
    assert set(info["alphas"]) == {n for n, p in model.named_parameters() if p.ndim == 2}  # embed/head measured
    scale = {g["name"]: g["lr_scale"] for o in opts for g in o.param_groups}
    assert scale["embed_tokens.weight"] == scale["lm_head.weight"] == 3.0
    assert scale["norm"] == 1.0
    assert all(1.0 <= scale[n] <= 3.0 for n in ctrl.analysed)
    # at init, up/down (aspect 3) have larger alpha than square q: they get larger multipliers
    assert min(scale[n] for n in scale if "up_proj" in n) > max(scale[n] for n in scale if "q_proj" in n)
    table = layer_table(info["alphas"], info["multipliers"])
    assert all(t in table for t in ["q ", "up ", "down ", "embed ", "head "]) and "alpha" in table
    assert "noise" in layer_table({"x.q_proj.weight": 0.1}, {"x.q_proj.weight": 2.0}, label="noise")

    ctrl1 = LLR(model, opts, total_steps=100, cfg=LLRConfig(embed_head="one"))
    ctrl1.step(0)
    assert all(g["lr_scale"] == 1.0 for g in opts[0].param_groups)


def test_group_mapping_errors():
    model = mlp()
    mixed = torch.optim.SGD([{"params": [model[0].weight, model[2].weight]}, {"params": [model[4].weight]}], lr=0.1)
    with pytest.raises(ValueError, match="param_groups"):
        LLR(model, mixed, total_steps=10)
    vectors = torch.optim.SGD([{"params": [model[0].bias, model[2].bias]}, {"params": [model[2].weight]}], lr=0.1)
    LLR(model, vectors, total_steps=10).step(0)  # several vectors share multiplier 1: fine
    assert vectors.param_groups[0]["lr_scale"] == 1.0
    stranger = torch.optim.SGD([nn.Parameter(torch.zeros(3, 3))], lr=0.1)
    with pytest.raises(ValueError, match="not in the model"):
        LLR(model, stranger, total_steps=10)


# ---- DDP ----


def ddp_run():
    """The same weights in every process; one matrix changes its spectrum between recomputes."""
    model = TinyLM()
    for i, p in enumerate(model.parameters()):
        p.data.copy_(randn(*p.shape, seed=i, std=0.02))
    ctrl = LLR(model, torch.optim.SGD(param_groups(model), lr=0.1), total_steps=100, cfg=LLRConfig(interval=2, ramp=3))
    infos = []
    for s in range(5):
        if s == 2:
            with torch.no_grad():
                model.layers[0]["q_proj"].weight[:4] *= 5.0  # a few large singular values: a heavier tail
        infos.append(ctrl.step(s))
    return infos, ctrl


def _ddp_worker(rank, world, out_dir):
    seen = []
    eig = llr.esd
    llr.esd = lambda w, *a: (seen.append(w.shape[0]), eig(w, *a))[1]
    infos, ctrl = ddp_run()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump({"infos": infos, "scales": [g["lr_scale"] for g in llr._groups(ctrl.optimizers)], "decomposed": sum(seen)}, f)


def test_ddp_ranks_agree_with_single_process(tmp_path):
    run_ddp(_ddp_worker, str(tmp_path))
    r0, r1 = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    assert r0["infos"] == r1["infos"] and r0["scales"] == r1["scales"]  # bitwise identical
    assert r0["decomposed"] + r1["decomposed"] == 3 * 8  # 8 matrices, 3 recomputes, each done once
    assert r0["decomposed"] == r1["decomposed"] == 12  # ... shared evenly

    single, _ = ddp_run()
    for a, b in zip(single, r0["infos"]):
        assert (a is None) == (b is None)
        if a:
            assert a["multipliers"] == pytest.approx(b["multipliers"], rel=1e-12)
            assert a["alphas"] == pytest.approx(b["alphas"], rel=1e-12)


# ---- Muon ----


def muon_pair(shape, seed=0, steps=2, **kw):
    """The same parameter trained `steps` steps by ours and by torch.optim.Muon; returns both."""
    p0 = randn(*shape, seed=seed)
    ours, theirs = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    adjust = kw.pop("adjust_lr", "original")
    opt_a = Muon([ours], adjust_lr=adjust, **kw)
    opt_b = torch.optim.Muon([theirs], adjust_lr_fn=adjust, **kw)
    for s in range(steps):
        g = randn(*shape, seed=100 + s)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    return p0, ours.detach(), theirs.detach()


@pytest.mark.parametrize("shape", [(32, 32), (64, 16), (16, 64)])
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_matches_torch_muon(shape, adjust):
    # ours runs Newton-Schulz in float32 on CPU, torch's always in bfloat16: agree to bf16 precision
    p0, a, b = muon_pair(shape, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr=adjust)
    da, db = a - p0, b - p0
    assert (da - db).norm() / db.norm() < 0.03
    # in bfloat16 the orthogonalisation is the same computation as torch's, to rounding
    u = randn(*shape, seed=4)
    assert torch.equal(orthogonalize(u, dtype=torch.bfloat16),
                       torch.optim._muon._zeropower_via_newtonschulz(u, (3.4445, -4.7750, 2.0315), 5, 1e-7))


def test_muon_without_nesterov_matches_torch():
    p0, a, b = muon_pair((24, 40), lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.0)
    assert ((a - p0) - (b - p0)).norm() / (b - p0).norm() < 0.02


def test_orthogonalized_singular_values():
    for shape in [(64, 32), (32, 96)]:  # random rectangular matrices are well conditioned
        sv = torch.linalg.svdvals(orthogonalize(randn(*shape, seed=1)))
        assert sv.min() > 0.5 and sv.max() < 1.5
    w = with_spectrum(48, 48, torch.linspace(0.05, 1.0, 48))  # square with a known spread of singular values
    sv = torch.linalg.svdvals(orthogonalize(w))
    assert sv.min() > 0.5 and sv.max() < 1.5


def test_orthogonalize_a_stack_is_each_matrix_alone():
    for shape in [(3, 8, 5), (3, 5, 8), (2, 2, 6, 6)]:
        u = randn(*shape, seed=1)
        u[0] *= 100  # one matrix far larger than the rest: each must be normalised by its own norm
        alone = torch.stack([orthogonalize(m) for m in u.reshape(-1, *shape[-2:])]).reshape(shape)
        torch.testing.assert_close(orthogonalize(u), alone, rtol=1e-5, atol=1e-6)


def test_muon_per_group_lr():
    def one_step(lr0):
        ps = [nn.Parameter(randn(16, 8, seed=i)) for i in range(2)]
        opt = Muon([{"params": [ps[0]], "lr": lr0}, {"params": [ps[1]]}], lr=0.02)
        for i, p in enumerate(ps):
            p.grad = randn(16, 8, seed=10 + i)
        opt.step()
        return [p.detach() - randn(16, 8, seed=i) for i, p in enumerate(ps)]

    d1, d2 = one_step(0.02), one_step(0.04)
    torch.testing.assert_close(d2[0], 2 * d1[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(d2[1], d1[1])


def test_muon_deterministic_and_grad_untouched():
    _, a1, _ = muon_pair((20, 12), steps=3, weight_decay=0.1)
    _, a2, _ = muon_pair((20, 12), steps=3, weight_decay=0.1)
    assert torch.equal(a1, a2)
    p = nn.Parameter(randn(8, 8))
    g = randn(8, 8, seed=1)
    p.grad = g.clone()
    Muon([p]).step()
    assert torch.equal(p.grad, g)


def test_muon_solves_least_squares():
    x, w_true = randn(256, 16, seed=0), randn(16, 8, seed=1)
    y = x @ w_true
    w = nn.Parameter(torch.zeros(16, 8))
    opt = Muon([w], lr=0.02)
    losses = []
    for step in range(150):
        opt.zero_grad()
        loss = (x @ w - y).square().mean()
        loss.backward()
        losses.append(loss.item())
        for g in opt.param_groups:  # a linear decay: Muon's steps have a fixed size, so anneal to converge
            g["lr"] = 0.2 * (1 - step / 150)
        opt.step()
    assert losses[-1] < 0.01 * losses[0]


def test_muon_rejects_non_matrices_and_bad_options():
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError, match="2-D"):
        Muon([{"params": [nn.Parameter(torch.zeros(2, 3, 4))], "name": "conv"}])
    with pytest.raises(ValueError, match="adjust_lr"):
        Muon([nn.Parameter(torch.zeros(4, 4))], adjust_lr="moonlight")
    opt = Muon([nn.Parameter(torch.zeros(4, 4))])
    with pytest.raises(ValueError, match="2-D"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(4))]})
    with pytest.raises(ValueError, match="adjust_lr"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(4, 4))], "adjust_lr": "moonlight"})
    assert len(opt.param_groups) == 1


def test_muon_state_dict_round_trip(tmp_path):
    def make():
        p = nn.Parameter(randn(12, 20))
        return p, Muon([p], lr=0.03, weight_decay=0.1, adjust_lr="match_rms_adamw")

    p1, o1 = make()
    for s in range(3):
        p1.grad = randn(12, 20, seed=s)
        o1.step()
    torch.save({"p": p1.detach(), "opt": o1.state_dict()}, tmp_path / "m.pt")
    ck = torch.load(tmp_path / "m.pt", weights_only=True)
    p2, o2 = make()
    with torch.no_grad():
        p2.copy_(ck["p"])
    o2.load_state_dict(ck["opt"])
    assert torch.equal(o2.state[p2]["momentum_buffer"], o1.state[p1]["momentum_buffer"])
    for p, o in [(p1, o1), (p2, o2)]:
        p.grad = randn(12, 20, seed=9)
        o.step()
    assert torch.equal(p1, p2)


# square, wide and tall matrices, more of them than ranks and fewer; each its own lr, decay, rule, Nesterov
MUON_CASES = {"five": [(16, 16), (24, 8), (8, 24), (16, 16), (24, 8)], "one": [(12, 20)]}


def muon_run(shapes, steps=3):
    """Muon on matrices of these shapes for `steps` steps of fixed gradients: (matrices, momentum buffers)."""
    ps = [nn.Parameter(randn(*s, seed=i)) for i, s in enumerate(shapes)]
    opt = Muon([{"params": [p], "lr": 0.01 * (i + 1), "weight_decay": 0.1 * (i % 2), "nesterov": i != 1,
                 "adjust_lr": ("original", "match_rms_adamw")[i % 2]} for i, p in enumerate(ps)])
    for s in range(steps):
        for i, p in enumerate(ps):
            p.grad = randn(*p.shape, seed=100 * s + i)
        opt.step()
    return [p.detach() for p in ps], [opt.state[p]["momentum_buffer"] for p in ps]


def _muon_ddp_worker(rank, world, out_dir):
    done, real = [], llr.orthogonalize
    llr.orthogonalize = lambda u, *a: (done.append(tuple(u.shape)), real(u, *a))[1]
    runs = {name: muon_run(shapes) for name, shapes in MUON_CASES.items()}
    with open(os.path.join(out_dir, f"muon{rank}.pkl"), "wb") as f:
        pickle.dump({"runs": runs, "done": done}, f)


def test_ddp_muon_shares_the_work_and_matches_one_process(tmp_path):
    """Under DDP each matrix is orthogonalised by one rank, and every rank ends with bitwise the weights and
    momentum of one process: the owner runs the same float32 ops on the same inputs (one matrix at a time,
    as one process does) and the all_gather copies bits."""
    run_ddp(_muon_ddp_worker, str(tmp_path))
    ranks = [pickle.load(open(tmp_path / f"muon{r}.pkl", "rb")) for r in range(2)]
    for name, shapes in MUON_CASES.items():
        single = muon_run(shapes)
        for r in ranks:
            for a, b in zip(single[0] + single[1], r["runs"][name][0] + r["runs"][name][1]):
                assert torch.equal(a, b), name
    # 3 steps; in shape order (8, 24), (16, 16) x 2, (24, 8) x 2: rank 0 does 3 of the five and the one
    done = [sorted(r["done"]) for r in ranks]
    assert done[0] == sorted(3 * [(8, 24), (16, 16), (24, 8), (12, 20)])
    assert done[1] == sorted(3 * [(16, 16), (24, 8)])


def test_controllers_survive_optimizer_load_state_dict():
    # torch's load_state_dict replaces the group dicts: lr_scale must land in the new ones
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    opt = torch.optim.SGD(llr.param_groups(model), lr=0.1)
    ctrl = llr.LLR(model, opt, total_steps=100, cfg=llr.LLRConfig(interval=5, ramp=0))
    ctrl.step(0)
    opt.load_state_dict(opt.state_dict())
    for g in opt.param_groups:
        g["lr_scale"] = None
    ctrl.step(1)
    assert all(g["lr_scale"] is not None for g in opt.param_groups)
    lanton = LANTON(model, opt)
    opt.load_state_dict(opt.state_dict())
    lanton.step(0)
    assert all(isinstance(g["lr_scale"], float) for g in opt.param_groups)


def test_map_ranges_over_block_matrices_only():
    """With a real vocabulary the embedding's and head's alphas are far above the blocks' (about 24.7 at
    GPT-2's), so they must stay out of the map's min and max: the block matrices still span [r_min, r_max]."""
    model = TinyLM(vocab=400, dim=16)
    with torch.no_grad():  # nearly flat spectra: alpha in the tens, like a GPT-2-sized vocabulary's
        for w in (model.embed_tokens.weight, model.lm_head.weight):
            u, _, v = torch.linalg.svd(randn(*w.shape, seed=1), full_matrices=False)
            w.copy_(u @ torch.diag(torch.linspace(1.0, 1.1, 16)) @ v)
    ctrl = LLR(model, torch.optim.AdamW(param_groups(model), lr=1e-3), total_steps=100, cfg=LLRConfig(r_min=1, r_max=3))
    info = ctrl.step(0)
    block = [info["multipliers"][n] for n in ctrl.analysed]
    assert min(info["alphas"][n] for n in ctrl.special) > 3 * max(info["alphas"][n] for n in ctrl.analysed)
    assert min(block) == 1.0 and max(block) == 3.0
    assert all(info["multipliers"][n] == 3.0 for n in ctrl.special)


def test_muon_defaults_are_the_documented_ones():
    """train.py builds Muon with its defaults: momentum 0.95, Nesterov, 5 Newton-Schulz steps; an update with the
    defaults equals one with them spelled out."""
    p0, a, _ = muon_pair((24, 40), seed=3)
    _, b, _ = muon_pair((24, 40), seed=3, momentum=0.95, nesterov=True, ns_steps=5)
    _, c, _ = muon_pair((24, 40), seed=3, momentum=0.9)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# ---- the controls, and Muon's shares under DDP ----


def test_embed_head_one_keeps_embedding_and_head_at_exactly_one():
    """embed_head='one', the control that splits LLR's two rules: embedding and head stay at exactly 1 at every
    step, also where r_min is not 1, while the block matrices span [r_min, r_max]."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(param_groups(model), lr=1e-3)
    ctrl = LLR(model, opt, total_steps=100, cfg=LLRConfig(embed_head="one", r_min=0.5, r_max=2.0, interval=2, ramp=3))
    for s in range(4):
        info = ctrl.step(s)
        scale = {g["name"]: g["lr_scale"] for g in opt.param_groups}
        assert scale["embed_tokens.weight"] == scale["lm_head.weight"] == 1.0, s
        if info:
            assert [info["multipliers"][n] for n in ctrl.special] == [1.0, 1.0]
    block = [scale[n] for n in ctrl.analysed]  # step 3's lr_scale
    assert min(block) == pytest.approx(0.5) and max(block) == pytest.approx(2.0)  # the map's ends, to rounding


def test_mean_one_averages_over_the_matrices_that_have_a_multiplier():
    """mean_one with a degenerate matrix in the model (all zero: no alpha, so it keeps 1 and stays out of the map):
    the parameter-weighted mean of the multipliers LLR sets is exactly 1, the degenerate matrix not counted."""
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():
        model.layers[1]["up_proj"].weight.zero_()
    opt = torch.optim.AdamW(param_groups(model), lr=1e-3)
    with pytest.warns(UserWarning, match="layers.1.up_proj.weight"):
        info = LLR(model, opt, total_steps=100, cfg=LLRConfig(mean_one=True)).step(0)
    m, sizes = info["multipliers"], {n: p.numel() for n, p in model.named_parameters()}
    assert "layers.1.up_proj.weight" not in m and len(m) == 7  # 6 block matrices less one, embedding, head
    assert sum(sizes[n] * v for n, v in m.items()) / sum(sizes[n] for n in m) == pytest.approx(1.0, rel=1e-12)
    assert {g["name"]: g["lr_scale"] for g in opt.param_groups}["layers.1.up_proj.weight"] == 1.0


UNEVEN = [(4, 4), (16, 16)]  # in shape order: rank 0 orthogonalises the 4 x 4 matrix, rank 1 the 16 x 16 one


def _muon_uneven_worker(rank, world, out_dir):
    with open(os.path.join(out_dir, f"uneven{rank}.pkl"), "wb") as f:
        pickle.dump(muon_run(UNEVEN), f)


def test_ddp_muon_when_another_rank_holds_the_largest_share(tmp_path):
    """Rank 1's share (256 numbers) is larger than rank 0's (16): the buffer every rank gathers into has room for
    the largest share, whoever holds it, and every rank ends with one process's weights and momentum, bitwise."""
    assert [llr.share_of(r, 2, dict(enumerate(UNEVEN))) for r in range(2)] == [[0], [1]]
    run_ddp(_muon_uneven_worker, str(tmp_path))
    single = muon_run(UNEVEN)
    for r in range(2):
        weights, momenta = pickle.load(open(tmp_path / f"uneven{r}.pkl", "rb"))
        for a, b in zip(single[0] + single[1], weights + momenta):
            assert torch.equal(a, b), r


# ---- on a GPU: python -m pytest -q -k cuda (each skipped, with the reason, without one) ----


def test_cuda_alphas_are_the_cpus(cuda):
    """llr.alphas of the same weights on the GPU and on the CPU. The GPU's spectra run in float64 (llr.esd: a
    float32 matmul there may be TF32), the CPU's in float32, so the GPU's Hill alphas are the CPU's float64 ones
    to 1e-9 (float64 sums in another order) and the CPU's own, with either estimator, to 1e-5 (on CPU float32's
    are within 1.5e-6 of float64's for these matrices, FARMS's within 2.5e-7). The matrices: llama60m's first
    block, embedding and head at init (square, 2:1, T5's 32,128 x 768) and two with a power-law spectrum."""
    torch.manual_seed(0)
    model = LLaMA(dataclasses.replace(PRESETS["llama60m"], vocab_size=32128))
    named = [(n, p.detach()) for n, p in model.named_parameters()
             if p.ndim == 2 and (n.startswith("layers.0.") or "layers." not in n)]
    s = torch.arange(1, 257, dtype=torch.float64) ** -0.7
    named += [(f"power_law{i}", with_spectrum(512, 256, s, seed=i)) for i in range(2)]
    on_gpu = [(n, w.to(cuda)) for n, w in named]
    for estimator in ("hill", "farms"):
        gpu, cpu = llr.alphas(on_gpu, estimator=estimator), llr.alphas(named, estimator=estimator)
        assert gpu.keys() == cpu.keys() and all(math.isfinite(a) for a in cpu.values())
        for name, a in cpu.items():
            assert abs(gpu[name] - a) <= 1e-5 * a, (estimator, name, gpu[name], a)
        if estimator == "hill":
            for name, w in named:
                a = hill_alpha(esd(w, torch.float64))
                assert abs(gpu[name] - a) <= 1e-9 * a, (name, gpu[name], a)


def test_cuda_muon_orthogonalizes_in_bf16_as_torch_muon_does(cuda):
    """On the GPU Muon's Newton-Schulz runs in bfloat16 (llr.ns_dtype): bit for bit torch.optim.Muon's there (the
    same ops, as on CPU: test_muon_matches_torch_muon), each matrix of a stack on its own, within 3% of the CPU's
    float32 result (bfloat16 against float32 on CPU: 1.1-1.3%, measured with orthogonalize(dtype=bfloat16)), its
    singular values in (0.5, 1.5) for rectangles; and a Muon step on the GPU moves the weights as the CPU's, to
    the same 3%."""
    for shape in [(768, 768), (1512, 768), (768, 1512), (3, 344, 128)]:
        u = randn(*shape, seed=1)
        ours = orthogonalize(u.to(cuda))
        assert ours.dtype == torch.bfloat16
        on_cpu = orthogonalize(u)
        assert (ours.float().cpu() - on_cpu).norm() <= 0.03 * on_cpu.norm(), shape
        sv = torch.linalg.svdvals(ours.float())
        assert sv.max() < 1.5 and (shape[-1] == shape[-2] or sv.min() > 0.5), (shape, sv.min(), sv.max())
        if u.ndim == 2:
            theirs = torch.optim._muon._zeropower_via_newtonschulz(u.to(cuda), (3.4445, -4.7750, 2.0315), 5, 1e-7)
            assert torch.equal(ours, theirs), shape
    p0 = randn(64, 32)
    ps = [nn.Parameter(p0.clone()), nn.Parameter(p0.to(cuda))]
    opts = [Muon([p], lr=0.02, weight_decay=0.1) for p in ps]
    for step in range(3):
        g = randn(64, 32, seed=100 + step)
        for p, opt in zip(ps, opts):
            p.grad = g.to(p.device)
            opt.step()
    moved = [p.detach().cpu() - p0 for p in ps]
    assert (moved[1] - moved[0]).norm() <= 0.03 * moved[0].norm()
