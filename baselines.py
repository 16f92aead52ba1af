"""
The layerwise baselines the LLR paper (arXiv 2605.22297, main table) compares with: LARS, LAMB and
blockwise LR ratios. Each scales a tensor's step by a rule fixed in advance, where LLR reads the
weights' spectra.

    python train.py --optimizer=lars --lr=0.01
    python train.py --optimizer=lamb --lr=0.01
    python train.py --blockwise --lr=5e-4        # AdamW, LR ratios by block type

LARS and LAMB normalise each tensor's step to a fixed fraction of its own norm (the "trust ratio"), so
one step moves every matrix by the same relative amount, whatever its gradient's scale.
"""

import torch


class TrustRatio(torch.optim.Optimizer):
    """What LARS and LAMB share: each tensor steps along its own direction d (direction(), which keeps
    the optimizer's state), rescaled to a fixed fraction of the tensor's norm, w <- w - lr * ||w|| / ||d|| * d."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    d, w_norm = self.direction(p, group, self.state[p])
                    p.sub_(d * (group["lr"] * trust_ratio(w_norm, d.norm())))
        return loss


class LARS(TrustRatio):
    """Layer-wise Adaptive Rate Scaling (You, Gitman, Ginsburg 2017, arXiv 1708.03888), as the LLR
    paper's code runs it: weight decay inside the momentum, and the trust ratio ||w|| / ||v||:
        v = mu v + (1 - mu) (g + wd w);  w <- w - lr * ||w|| / ||v|| * v
    so ||step|| = lr * ||w||. (The LARS paper scales the gradient before the momentum, by
    eta ||w|| / (||g|| + wd ||w||); normalising the momentum itself, as here, makes every step exactly
    lr * ||w|| long.)"""

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=0.0):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"LARS needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0, got {lr}, "
                             f"{momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def direction(self, p, group, state):
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        v = state["momentum_buffer"]
        g = p.grad.add(p, alpha=group["weight_decay"])  # g + wd w
        v.mul_(group["momentum"]).add_(g, alpha=1 - group["momentum"])
        return v, p.norm()


class LAMB(TrustRatio):
    """Layer-wise Adaptive Moments for Batch training (You et al. 2019, arXiv 1904.00962), with the
    defaults of torch_optimizer.Lamb, which the LLR paper's code runs: betas (0.9, 0.999), eps 1e-6,
    no bias correction, phi(x) = min(x, 10):
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  r = m / (sqrt(v) + eps) + wd w
        w <- w - lr * phi(||w||) / ||r|| * r
    so ||step|| = lr * min(||w||, 10). (The paper's Algorithm 2 corrects the bias of m and v; at
    (0.9, 0.999) that only changes the first few hundred steps' r, whose norm the trust ratio removes.)"""

    def __init__(self, params, lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, clamp=10.0):
        if lr < 0 or not all(0 <= b < 1 for b in betas) or eps < 0 or weight_decay < 0:
            raise ValueError(f"LAMB needs lr >= 0, betas in [0, 1), eps >= 0, weight_decay >= 0, got "
                             f"{lr}, {betas}, {eps}, {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      clamp=clamp))

    def direction(self, p, group, state):
        (b1, b2), eps = group["betas"], group["eps"]
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(p.grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        r = (m / (v.sqrt() + eps)).add_(p, alpha=group["weight_decay"])
        return r, p.norm().clamp(max=group["clamp"])


def trust_ratio(w_norm, step_norm):
    """||w|| / ||step||, or 1 where either is 0 (a zero tensor, a zero gradient), as torch_optimizer.Lamb
    (the LLR code's LARS divides by ||v|| + 1e-6 instead). A tensor: no host sync per tensor on a GPU."""
    return torch.where((w_norm > 0) & (step_norm > 0), w_norm / step_norm, torch.ones_like(w_norm))


# Blockwise LR ratios to the base LR, by block type: the sharpness disparity principle (Wang et al.
# 2025, arXiv 2502.19002), as the LLR paper's code sets them for its "Sharpness" baseline (AdamW).
BLOCKWISE = {"q_proj": 8, "k_proj": 8, "v_proj": 4, "o_proj": 4, "gate_proj": 6, "up_proj": 6,
             "down_proj": 6, "embed": 10, "head": 10, "vector": 1}


def blockwise_ratio(name, role):
    """The blockwise ratio of one tensor, from its name and llr.roles' role."""
    if role in ("embed", "head", "vector"):
        return BLOCKWISE[role]
    kind = next((k for k in BLOCKWISE if k in name), None)
    if kind is None:
        raise ValueError(f"--blockwise has no ratio for the matrix {name}; name it like model.py's "
                         f"({', '.join(k for k in BLOCKWISE if '_' in k)})")
    return BLOCKWISE[kind]
