"""baselines.py: LARS and LAMB against their formulas worked by hand, the trust ratio that defines both
(one step moves every matrix by the same fraction of its norm, whatever its gradient), and the blockwise
ratios as train.py sets them."""

import math

import pytest
import torch

import train
from baselines import BLOCKWISE, LAMB, LARS, blockwise_ratio
from llr import param_groups, roles
from model import LLaMA, PRESETS


def test_lars_step_worked_by_hand():
    w = torch.tensor([[3.0, 4.0]])  # ||w|| = 5
    g = torch.tensor([[1.0, 0.0]])
    p = torch.nn.Parameter(w.clone())
    opt = LARS([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad = g.clone()
    opt.step()
    v = 0.1 * (g + 0.5 * w)  # (1 - mu) (g + wd w) = [[0.25, 0.2]]
    want = w - 0.1 * 5 / v.norm() * v
    assert torch.allclose(p.detach(), want)
    # the second step: the momentum carries the first
    p.grad = g.clone()
    w1 = p.detach().clone()
    opt.step()
    v = 0.9 * v + 0.1 * (g + 0.5 * w1)
    assert torch.allclose(p.detach(), w1 - 0.1 * w1.norm() / v.norm() * v)


def test_lamb_step_worked_by_hand():
    w = torch.tensor([[3.0, 4.0]])
    g = torch.tensor([[2.0, -1.0]])
    p = torch.nn.Parameter(w.clone())
    opt = LAMB([p], lr=0.1, weight_decay=0.5)
    p.grad = g.clone()
    opt.step()
    m, v = 0.1 * g, 0.001 * g * g  # no bias correction
    r = m / (v.sqrt() + 1e-6) + 0.5 * w
    want = w - 0.1 * 5 / r.norm() * r  # phi(5) = 5
    assert torch.allclose(p.detach(), want)


def test_lamb_clamps_the_weight_norm_at_10():
    p = torch.nn.Parameter(torch.full((4, 4), 10.0))  # ||w|| = 40
    p.grad = torch.randn(4, 4)
    before = p.detach().clone()
    LAMB([p], lr=0.01).step()
    assert math.isclose((p.detach() - before).norm().item(), 0.01 * 10, rel_tol=1e-5)


def relative_steps(opt_cls, **kw):
    """||w' - w|| / ||w|| of every hidden matrix of a tiny model after one step, with the matrices' norms
    spread over 1x-2x (all under 10) and gradients of scales 1e-2 ... 1e2."""
    torch.manual_seed(0)
    model = LLaMA(PRESETS["tiny"])
    hidden = [p for p in model.layers.parameters() if p.ndim == 2]
    with torch.no_grad():
        for i, p in enumerate(hidden):
            p.mul_(1 + i % 2)
    before = [p.detach().clone() for p in hidden]
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn_like(p) * 10.0 ** (i % 5 - 2)
    opt_cls(param_groups(model, weight_decay=0.1), lr=1e-3, **kw).step()
    return [((p.detach() - b).norm() / b.norm()).item() for p, b in zip(hidden, before)]


@pytest.mark.parametrize("opt_cls", [LARS, LAMB])
def test_one_step_moves_every_matrix_by_the_same_fraction_of_its_norm(opt_cls):
    """The property that defines both: ||w' - w|| / ||w|| = lr for every matrix (below LAMB's clamp of
    ||w|| at 10), whatever its norm and the scale of its gradient; AdamW's does not."""
    fractions = relative_steps(opt_cls)
    assert all(math.isclose(f, 1e-3, rel_tol=1e-4) for f in fractions), fractions
    adamw = relative_steps(torch.optim.AdamW)
    assert max(adamw) / min(adamw) > 1.5


@pytest.mark.parametrize("opt_cls", [LARS, LAMB])
def test_a_zero_tensor_or_gradient_takes_no_nan(opt_cls):
    zero, other = torch.nn.Parameter(torch.zeros(3, 3)), torch.nn.Parameter(torch.ones(3, 3))
    zero.grad, other.grad = torch.ones(3, 3), torch.zeros(3, 3)
    opt_cls([zero, other], lr=0.1).step()
    assert torch.isfinite(zero).all() and torch.isfinite(other).all()
    assert zero.abs().sum() > 0  # the plain step, trust ratio 1


def test_blockwise_sets_each_group_to_its_ratio_times_the_schedule(tmp_path):
    """train.py --blockwise: every group's lr is the official ratio x --lr x the schedule, at any step."""
    cfg = train.resolve(train.TrainConfig(blockwise=True, lr=1e-3, max_steps=20, out_dir=str(tmp_path)))
    model = LLaMA(PRESETS["tiny"])
    [opt] = train.build_optimizers(model, cfg, fused=False)
    assert isinstance(opt, torch.optim.AdamW)
    role, names = roles(model), {id(p): n for n, p in model.named_parameters()}
    want = {"q_proj": 8, "k_proj": 8, "v_proj": 4, "o_proj": 4, "gate_proj": 6, "up_proj": 6, "down_proj": 6,
            "embed_tokens": 10, "lm_head": 10, "norm": 1}
    seen = set()
    for group in opt.param_groups:
        name = names[id(group["params"][0])]
        kind = next(k for k in want if k in name)
        seen.add(kind)
        assert group["initial_lr"] == pytest.approx(1e-3 * want[kind]), name
        assert blockwise_ratio(name, role[id(group["params"][0])]) == want[kind]
    assert seen == set(want)
    # the loop sets lr = initial_lr x lr_mult(step)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * train.lr_mult(7, cfg)
    assert sorted({round(g["lr"] / (1e-3 * train.lr_mult(7, cfg)), 9) for g in opt.param_groups}) == [1, 4, 6, 8, 10]
    assert set(BLOCKWISE.values()) == {1, 4, 6, 8, 10}


def test_blockwise_names_a_matrix_it_has_no_ratio_for():
    with pytest.raises(ValueError, match="no ratio for the matrix proj.weight"):
        blockwise_ratio("proj.weight", "hidden")


@pytest.mark.parametrize("optimizer", ["lars", "lamb"])
def test_lars_and_lamb_train_every_tensor(tmp_path, optimizer):
    cfg = train.TrainConfig(optimizer=optimizer, lr=0.01, max_steps=6, batch_size=2, seq_len=32, eval_interval=0,
                            eval_steps=1, sample_tokens=0, log_interval=100, device="cpu", out_dir=str(tmp_path))
    summary = train.train(cfg)
    assert summary["step"] == 6 and math.isfinite(summary["val_loss"])


@pytest.mark.parametrize("flags", [dict(optimizer="muon"), dict(llr=True), dict(embed_head_lr=3.0)])
def test_blockwise_refuses_what_would_set_the_ratios_twice(tmp_path, flags):
    with pytest.raises(train.UsageError, match="--blockwise sets every group's LR ratio itself"):
        train.resolve(train.TrainConfig(blockwise=True, out_dir=str(tmp_path), **flags))
