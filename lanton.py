"""
LANTON: noise-adaptive layerwise learning rates (arXiv 2510.14009), on top of Muon or AdamW. It reuses
llr.py's plumbing: parameter roles, optimizer-group mapping, esd (for the nuclear norm), sharing over ranks.

    import llr, lanton
    ctrl = lanton.LANTON(model, [muon, adamw])   # optimizers built on llr.param_groups(model)
    for step in range(max_steps):
        ...                                      # forward, backward (and clipping)
        ctrl.step(step)                          # sets group['lr_scale'] everywhere
        for g in groups: g['lr'] = base_lr(step) * g['lr_scale']
"""

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from llr import _first, _groups, _map_groups, _opt, batched_over_ranks, esd, roles

# the paper's three layer families (Table 1; it says "groups", a word kept here for optimizer param groups):
# multipliers are relative to the least noisy layer of the family
FAMILY = {"hidden": "hidden", "embed": "embed_head", "head": "embed_head", "vector": "vector"}


def nuclear_norm(x):
    """Sum of singular values of each matrix of a stack (the hidden layers' dual norm), through llr.esd. In
    float64: a square root turns float32's ~1e-7 * max rounding of zero eigenvalues into ~3e-4 * max per zero
    singular value."""
    return esd(x, torch.float64).sqrt().sum(-1)


def _hidden_noise(grads, prevs):  # (B, rows, cols) each: sqrt(d_out / d_in) * nuclear norm (Table 1)
    rows, cols = grads.shape[-2:]
    return math.sqrt(rows / cols) * nuclear_norm(grads.double() - prevs.double())


def _l1_noise(grads, prevs):  # (B, *shape) each: entrywise l1 (see the LANTON docstring)
    return (grads.double() - prevs.double()).abs().flatten(1).sum(-1)


@dataclass
class LANTONConfig:
    every: int = _opt(10, "measure the noise every this many steps (paper, App. H: 10, ~4% overhead)")
    beta2: float = _opt(0.9, "moving average of the squared noise, H = beta2 H + (1 - beta2) n^2")
    eps: float = _opt(1e-16, "in H's units (a squared norm): (1e-8)^2, far below any real measurement")

    def __post_init__(self):
        for ok, msg in [(self.every >= 1, f"every must be >= 1, got {self.every}"),
                        (0 <= self.beta2 < 1, f"beta2 must be in [0, 1), got {self.beta2}"),
                        (self.eps > 0, f"eps must be > 0, got {self.eps}")]:
            if not ok:
                raise ValueError(msg)


class LANTON:
    """Sets group['lr_scale'] = this layer's noise-adaptive multiplier on every group of the optimizer(s).

    Algorithm 1 of the paper, lines 7-9, with its practical option (two consecutive gradients):
        n_l     = ||G_t - G_{t-1}||_dual                 gradient noise of layer l
        H_l     = beta2 H_l + (1 - beta2) n_l^2           (line 7; the first measurement sets H_l = n_l^2)
        alpha_l = 1 / sqrt(H_l + eps)                     (line 8)
        m_l     = alpha_l / max_{j in group(l)} alpha_j   (line 9: lr_l = lr * m_l)
    so the least noisy layer of each group keeps the base lr and noisier ones get proportionally less.
    Measured at steps t with t % every == 0 (App. H); G_{t-1} is copied at step t - 1 and dropped at t.

    Dual norms, each the dual of the norm whose LMO updates the layer (Section 4, Table 1, "Choice of Norm
    Constraint"). Hidden matrices (Muon): sqrt(d_out / d_in) * nuclear norm, dual of the RMS->RMS operator
    norm, as Table 1. Embedding and head: entrywise l1, sum |g_ij|; Table 1 updates them with Signum, whose
    LMO is that of the max-entry (l1->l_inf) norm, whose dual is entrywise l1; our AdamW is sign-like, the
    same geometry. Vectors (norm gains): entrywise l1 too; Table 1's RMS norm there (dual sqrt(d) * l2) is
    for gains updated by RMS normalisation, ours are updated by AdamW: the dual of its l_inf geometry.

    A layer keeps multiplier 1 until its first measurement. A non-finite measurement, or an exactly zero one
    (the gradient did not change: no information, and alpha = 1/sqrt(eps) would crush the rest of its
    family), is skipped and H kept."""

    def __init__(self, model, optimizer, cfg=None):
        self.cfg = cfg or LANTONConfig()
        self.optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        role = roles(model)
        self.key_of, seen = _map_groups(model, self.optimizers, lambda n, p: n)  # key: the layer name
        self.layers = [(n, p, FAMILY[role[id(p)]]) for n, p in seen]  # (name, param, family)
        self.H = {}  # name -> moving average of the squared noise
        self.mult = {}  # name -> current multiplier; a layer not in here has 1
        self.noise = {}  # name -> the last accepted measurement, for logging
        self.prev, self.prev_step = None, -1  # {name: G_{t-1}} and the step it was copied at
        self.seconds = 0.0  # wall time spent inside step()

    def _measure(self):
        """n_l for every layer as floats, NaN where unknown (no gradient or no copy) or non-finite."""
        jobs = [(_hidden_noise if family == "hidden" else _l1_noise, p.grad, self.prev[name])
                if p.grad is not None and name in self.prev else None for name, p, family in self.layers]
        return batched_over_ranks(jobs)  # shared out over DDP ranks, as llr.alphas

    @torch.no_grad()
    def _refresh(self):
        b2, accepted = self.cfg.beta2, {}
        for (name, _, _), n in zip(self.layers, self._measure()):
            if not (math.isfinite(n) and n > 0):
                continue  # non-finite or zero: skip, keep H
            h = self.H.get(name)
            self.H[name] = n * n if h is None else b2 * h + (1 - b2) * n * n  # line 7
            accepted[name] = n
        alpha = {name: 1 / math.sqrt(h + self.cfg.eps) for name, h in self.H.items()}  # line 8
        best = defaultdict(float)  # line 9's max of alpha over each family (an unmeasured layer counts 0)
        for name, _, family in self.layers:
            best[family] = max(best[family], alpha.get(name, 0.0))
        self.mult = {name: alpha[name] / best[family] for name, _, family in self.layers if name in alpha}
        self.noise = accepted
        return {"noise": dict(accepted),
                "multipliers": {name: self.mult.get(name, 1.0) for name, _, _ in self.layers}}

    def step(self, t):
        """Call once per training step after backward (and clipping), before the optimizer step. Reads
        p.grad, never writes it. Returns {'noise', 'multipliers'} on steps that measured, else None."""
        clock = time.perf_counter()
        info = self._refresh() if self.prev is not None and self.prev_step == t - 1 else None
        self.prev = None  # used or stale: the copy lives one step only
        if (t + 1) % self.cfg.every == 0:  # the next step measures: keep this gradient
            self.prev = {n: p.grad.detach().clone() for n, p, _ in self.layers if p.grad is not None}
            self.prev_step = t
        for group in _groups(self.optimizers):
            group["lr_scale"] = self.mult.get(self.key_of[_first(group)], 1.0)
        self.seconds += time.perf_counter() - clock
        return info

    def state_dict(self):
        # floats, ints and tensors only, so it loads with torch.load(weights_only=True)
        return {"H": dict(self.H), "multipliers": dict(self.mult), "noise": dict(self.noise),
                "prev": None if self.prev is None else dict(self.prev), "prev_step": self.prev_step}

    def load_state_dict(self, state):
        params = {n: p for n, p, _ in self.layers}
        unknown = (set(state["H"]) | set(state["prev"] or ())) - set(params)
        if unknown:
            raise ValueError(f"LANTON state has layers this model does not: {sorted(unknown)[:5]}")
        self.H = {n: float(h) for n, h in state["H"].items()}
        self.mult = {n: float(m) for n, m in state["multipliers"].items()}
        self.noise = {n: float(v) for n, v in state["noise"].items()}
        prev = state["prev"]
        self.prev = None if prev is None else {n: g.to(params[n].device) for n, g in prev.items()}
        self.prev_step = int(state["prev_step"])
