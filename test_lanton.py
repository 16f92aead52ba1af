"""
Tests of the LANTON draft (noise-adaptive layerwise learning rates). Hermetic and CPU-only, seconds.

    python -m pytest -q test_lanton.py
"""

import math
import os
import pickle

import pytest
import torch
from torch import nn

import lanton
import llr
from conftest import run_ddp, with_spectrum
from lanton import LANTON, LANTONConfig
from lanton import nuclear_norm

# ---- the nuclear norm ----


def test_nuclear_norm_matches_float64_svdvals():
    g, f64 = torch.Generator().manual_seed(0), torch.float64
    cases = [torch.randn(8, 8, generator=g), torch.randn(5, 12, generator=g), torch.randn(40, 7, generator=g),
             torch.randn(3, 16, 24, generator=g),  # a batch of same-shape matrices
             with_spectrum(64, 48, [3.0, 1.0], dtype=f64),  # rank 2: 46 zero singular values must stay near zero
             with_spectrum(256, 128, [1.0, 0.5, 0.1, 0.01]),  # low rank, like a small-batch gradient
             with_spectrum(48, 64, torch.logspace(0, -6, 48), dtype=f64),  # ill-conditioned, full rank
             torch.randn(30, 20, generator=g).bfloat16().float() * 1e-6]  # tiny scale, from float32
    worst = 0.0
    for x in cases:
        ref = torch.linalg.svdvals(x.double()).sum(-1)
        err = ((nuclear_norm(x) - ref).abs() / ref).max().item()
        worst = max(worst, err)
    print(f"nuclear norm vs float64 svdvals: worst relative error {worst:.1e}")
    assert worst < 1e-6  # measured ~7e-8: zero singular values come back as ~1e-8 * s_max each


# ---- a toy model with known per-layer noise ----


class Toy(nn.Module):
    def __init__(self, vocab=11, dim=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.wide = nn.Linear(dim, 2 * dim, bias=False)
        self.square = nn.Linear(dim, dim, bias=False)
        self.narrow = nn.Linear(2 * dim, dim, bias=False)
        self.norm1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, vocab, bias=False)

    def get_output_embeddings(self):  # how a model names its head (transformers' convention)
        return self.head


ROLE = {"embed.weight": "embed_head", "head.weight": "embed_head", "wide.weight": "hidden",
        "square.weight": "hidden", "narrow.weight": "hidden", "norm1": "vector", "norm2": "vector"}
# noise level of each layer; spread wide enough that the dual norm's shape factors cannot reorder them
SIGMA = {"embed.weight": 0.1, "head.weight": 2.0, "wide.weight": 0.05, "square.weight": 0.5,
         "narrow.weight": 4.0, "norm1": 3.0, "norm2": 0.2}


def toy(seed=0):
    torch.manual_seed(seed)
    model = Toy()
    opt = torch.optim.SGD([{"params": [p], "name": n} for n, p in model.named_parameters()], lr=0.1)
    return model, opt


def set_grads(model, step, rank=0):
    """p.grad = fixed + sigma * noise(step): the step-to-step difference has known noise sigma."""
    grads = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        fixed = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + i))
        noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(step * 100 + i + 7919 * rank))
        p.grad = fixed + SIGMA[name] * noise
        grads[name] = p.grad.clone()
    return grads


def scales(ctrl):
    return {g["name"]: g["lr_scale"] for g in llr._groups(ctrl.optimizers)}


def ref_dual(diff, name):
    """The dual norms of the class docstring, from float64 singular values."""
    d = diff.double()
    if ROLE[name] == "hidden":
        return math.sqrt(d.shape[0] / d.shape[1]) * torch.linalg.svdvals(d).sum().item()
    return d.abs().sum().item()


def test_multipliers_follow_the_formula_and_order_by_noise():
    every, beta2, eps = 3, 0.8, 1e-16
    model, opt = toy()
    ctrl = LANTON(model, opt, LANTONConfig(every=every, beta2=beta2, eps=eps))
    H, last = {}, None
    for step in range(14):
        grads = set_grads(model, step)
        info = ctrl.step(step)
        s = scales(ctrl)
        assert set(s) == set(SIGMA) and all(math.isfinite(v) for v in s.values())
        if step < every:  # no previous gradient yet: everything 1, nothing measured
            assert info is None and all(v == 1.0 for v in s.values())
        if step % every or step == 0:
            assert info is None
        else:  # replay lines 7-9 of Algorithm 1 from float64 svdvals
            assert list(info) == ["noise", "multipliers"]
            for name in SIGMA:
                n = ref_dual(grads[name].double() - last[name].double(), name)
                assert info["noise"][name] == pytest.approx(n, rel=1e-10)
                H[name] = n * n if name not in H else beta2 * H[name] + (1 - beta2) * n * n
            alpha = {name: 1 / math.sqrt(h + eps) for name, h in H.items()}
            for name in SIGMA:
                best = max(a for m, a in alpha.items() if ROLE[m] == ROLE[name])
                assert info["multipliers"][name] == pytest.approx(alpha[name] / best, rel=1e-10)
            assert s == info["multipliers"]
            assert all(type(v) is float for d in info.values() for v in d.values())  # plain floats for JSON
        last = grads
    # within each group the least noisy layer keeps 1, the rest fall in order of their noise
    for group in ("hidden", "embed_head", "vector"):
        names = sorted((n for n in SIGMA if ROLE[n] == group), key=SIGMA.get)
        m = [s[n] for n in names]
        assert m[0] == 1.0 and all(a > b for a, b in zip(m, m[1:])), (group, m)
    assert ctrl.seconds > 0


def test_every_one_measures_each_step_and_copies_only_before_refresh():
    model, opt = toy()
    ctrl = LANTON(model, opt, LANTONConfig(every=1))
    set_grads(model, 0)
    assert ctrl.step(0) is None and ctrl.prev is not None
    for step in range(1, 4):
        set_grads(model, step)
        assert ctrl.step(step) is not None
    ctrl = LANTON(model, opt, LANTONConfig(every=5))
    held = []
    for step in range(11):
        set_grads(model, step)
        ctrl.step(step)
        held.append(ctrl.prev is not None)
    assert [i for i, h in enumerate(held) if h] == [4, 9]  # one copy, on the step before a refresh


def test_grads_untouched_and_two_optimizers():
    torch.manual_seed(0)
    model = Toy()
    mats = [p for n, p in model.named_parameters() if ROLE[n] == "hidden"]
    rest = [p for n, p in model.named_parameters() if ROLE[n] != "hidden"]
    sgd = torch.optim.SGD([{"params": [p]} for p in mats], lr=0.1)
    adamw = torch.optim.AdamW([{"params": [p]} for p in rest], lr=0.01)
    ctrl = LANTON(model, (sgd, adamw), LANTONConfig(every=2))
    names = {id(p): n for n, p in model.named_parameters()}
    for step in range(7):
        grads = set_grads(model, step)
        ctrl.step(step)
        for name, p in model.named_parameters():
            assert torch.equal(p.grad, grads[name])  # read, never written
        for opt in (sgd, adamw):
            for g in opt.param_groups:
                assert g["lr_scale"] == ctrl.mult.get(names[id(g["params"][0])], 1.0)
                g["lr"] = 0.01 * g["lr_scale"]
            opt.step()
    assert min(ctrl.mult.values()) < 1.0 and len(llr._groups(ctrl.optimizers)) == len(SIGMA)


def test_non_finite_and_zero_noise_are_skipped():
    model, opt = toy()
    ctrl = LANTON(model, opt, LANTONConfig(every=2))
    for step in range(5):
        grads = set_grads(model, step)
        if step == 2:  # first measurement: a NaN layer has no H yet and keeps multiplier 1
            model.wide.weight.grad[0, 0] = float("nan")
        if step == 4:
            model.wide.weight.grad[1, 1] = float("inf")
            model.head.weight.grad[0, 0] = float("nan")
            model.norm2.grad = last["norm2"].clone()  # no change at all: zero noise, no information
            H = dict(ctrl.H)
        info = ctrl.step(step)
        assert all(math.isfinite(v) for v in scales(ctrl).values())
        if step == 2:
            assert "wide.weight" not in info["noise"] and info["multipliers"]["wide.weight"] == 1.0
        last = grads
    for name in ("head.weight", "norm2"):
        assert name not in info["noise"] and ctrl.H[name] == H[name]  # skipped, H kept
    assert "wide.weight" not in ctrl.H
    assert info["noise"].keys() == set(SIGMA) - {"wide.weight", "head.weight", "norm2"}
    assert scales(ctrl)["norm1"] < 1.0  # the zero-noise layer did not crush its group


def test_group_mapping_and_config_errors():
    model, _ = toy()
    mixed = torch.optim.SGD([{"params": [model.wide.weight, model.square.weight]}], lr=0.1)
    with pytest.raises(ValueError, match="one group per parameter"):
        LANTON(model, mixed)
    stranger = torch.optim.SGD([nn.Parameter(torch.ones(3))], lr=0.1)
    with pytest.raises(ValueError, match="not in the model"):
        LANTON(model, stranger)
    for bad in ({"every": 0}, {"beta2": 1.0}, {"beta2": -0.1}, {"eps": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LANTONConfig(**bad)


def test_roles_by_module_type():
    model, _ = toy()
    roles = llr.roles(model)
    got = {n: roles[id(p)] for n, p in model.named_parameters()}
    assert got == {"embed.weight": "embed", "head.weight": "head", "wide.weight": "hidden", "square.weight": "hidden",
                   "narrow.weight": "hidden", "norm1": "vector", "norm2": "vector"}


# ---- exact resume ----


def run(ctrl, model, steps):
    out = []
    for step in steps:
        set_grads(model, step)
        out.append((ctrl.step(step), scales(ctrl)))
    return out


@pytest.mark.parametrize("stop", [2, 3, 5, 6, 10])  # every=3: 2, 5 hold a gradient copy for the next step
def test_resume_is_exact(tmp_path, stop):
    cfg = LANTONConfig(every=3, beta2=0.7)
    model, opt = toy()
    ref = run(LANTON(model, opt, cfg), model, range(14))
    model, opt = toy()
    ctrl = LANTON(model, opt, cfg)
    run(ctrl, model, range(stop + 1))
    assert (ctrl.prev is not None) == (stop % 3 == 2)
    torch.save(ctrl.state_dict(), tmp_path / "lanton.pt")
    model, opt = toy(seed=1)  # other weights: the state, not the model, carries the trajectory
    ctrl = LANTON(model, opt, cfg)
    ctrl.load_state_dict(torch.load(tmp_path / "lanton.pt", weights_only=True))
    assert run(ctrl, model, range(stop + 1, 14)) == ref[stop + 1:]


def test_load_rejects_unknown_layers():
    model, opt = toy()
    ctrl = LANTON(model, opt)
    with pytest.raises(ValueError, match="layers this model does not"):
        ctrl.load_state_dict({"H": {"nope": 1.0}, "multipliers": {}, "noise": {}, "prev": None, "prev_step": -1})


# ---- DDP ----


def _ddp_worker(rank, world, out_dir):
    decomposed = []
    nuc = lanton.nuclear_norm
    lanton.nuclear_norm = lambda x: (decomposed.append(x.shape[0]), nuc(x))[1]
    result = {}
    for label, grad_rank in (("same", 0), ("differ", rank)):  # "differ": gradients that disagree across ranks
        model, opt = toy()
        ctrl = LANTON(model, opt, LANTONConfig(every=2))
        infos = []
        for step in range(7):
            set_grads(model, step, rank=grad_rank)
            infos.append(ctrl.step(step))
        result[label] = (infos, scales(ctrl))
    result["decomposed"] = sum(decomposed)
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def test_ddp_ranks_agree(tmp_path):
    run_ddp(_ddp_worker, str(tmp_path))
    r0, r1 = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in range(2)]
    assert r0["same"] == r1["same"] and r0["differ"] == r1["differ"]  # bitwise identical on both ranks
    assert r0["decomposed"] + r1["decomposed"] == 2 * 3 * 3  # 3 matrices, 3 refreshes, 2 runs: each once
    model, opt = toy()
    single = run(LANTON(model, opt, LANTONConfig(every=2)), model, range(7))
    for (a, _), b in zip(single, r0["same"][0]):
        assert (a is None) == (b is None)
        if a:
            assert a["multipliers"] == pytest.approx(b["multipliers"], rel=1e-12)
            assert a["noise"] == pytest.approx(b["noise"], rel=1e-12)


# ---- on a GPU: python -m pytest -q -k cuda (skipped, with the reason, without one) ----


def test_cuda_lanton_is_the_cpus(cuda):
    """LANTON on the GPU, given the CPU's gradients: its dual norms are float64 there as here (nuclear norms
    through llr.esd in float64, l1 norms of float64 differences), so noise and multipliers agree to 1e-9 at
    every refresh (float64 sums in another order)."""
    (cpu, cpu_opt), (gpu, gpu_opt) = toy(), toy()
    gpu.to(cuda)
    ctrls = [LANTON(cpu, cpu_opt, LANTONConfig(every=2)), LANTON(gpu, gpu_opt, LANTONConfig(every=2))]
    refreshes = 0
    for step in range(7):
        grads = set_grads(cpu, step)
        for name, p in gpu.named_parameters():
            p.grad = grads[name].to(cuda)
        here, there = (ctrl.step(step) for ctrl in ctrls)
        assert (here is None) == (there is None)
        if here:
            refreshes += 1
            for key in ("noise", "multipliers"):
                assert there[key] == pytest.approx(here[key], rel=1e-9), key
    assert refreshes == 3 and scales(ctrls[1]) == pytest.approx(scales(ctrls[0]), rel=1e-9)
