"""
LLR: heavy-tail guided layerwise learning rates (arXiv 2605.22297), plus the Muon optimizer.

    import llr
    opt = torch.optim.AdamW(llr.param_groups(model, weight_decay=0.1), lr=6e-4)  # one group per tensor
    ctrl = llr.LLR(model, opt, total_steps=max_steps)                 # or a list of optimizers
    for step in range(max_steps):
        loss.backward(); info = ctrl.step(step)                       # sets group['lr_scale'] everywhere
        for g in opt.param_groups: g['lr'] = schedule(step) * g['lr_scale']
        opt.step(); opt.zero_grad()                                  # info: {'alphas', 'multipliers'}
    llr.alphas(model)                                                 # {name: alpha} of any nn.Module

Sections 1-5 are the paper's steps in its order, each function taking one matrix or a stack of them; the
last section (one call per shape, the work shared over DDP ranks) hands them the stacks and is not needed
to follow the method. METHOD.md: the details, and where this code departs from the official release.
"""

import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

# ---- 1. the spectrum of a weight matrix ----

def esd(weight, dtype=None):
    """Empirical spectral density (METHOD.md#1-spectrum): the eigenvalues of W^T W, the squared singular values
    of W, ascending, float64; all NaN for a matrix with a non-finite entry. One matrix (rows, cols) -> (N,),
    or a stack (B, rows, cols) -> (B, N), N = min(rows, cols)."""
    if weight.ndim < 2:
        raise ValueError(f"esd needs a matrix, got shape {tuple(weight.shape)}")
    w = weight.detach()
    finite = torch.isfinite(w).flatten(-2).all(-1)  # (...,) LAPACK may fail on NaN, so zero those out
    # float32 on CPU (alpha within ~1e-6 of float64's); float64 on CUDA, where a float32 matmul may be TF32
    dtype = dtype or (torch.float64 if w.is_cuda else torch.float32)
    w = w.masked_fill(~finite[..., None, None], 0).to(dtype)
    # the Gram matrix of the smaller side has the same nonzero eigenvalues, and eigvalsh on it beats svdvals
    gram = w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT  # (..., N, N)
    eigs = torch.linalg.eigvalsh(gram).double().clamp_min(0)  # rounding can leave tiny negatives
    return eigs.masked_fill(~finite[..., None], float("nan"))


def farms_esd(weight, windows=9):
    """FARMS (Hu et al., arXiv 2506.06280): the esd pooled over windows**2 overlapping square submatrices of
    side min(rows, cols) // 2, `windows` evenly spaced offsets per dimension, ascending. It has no aspect-ratio
    bias: a random matrix's Hill alpha is ~2.11 at any shape (the esd's: ~2.1 square, ~3.1 at 1:2.75).
    One matrix or a stack (B, rows, cols) -> (windows**2 * side,) or (B, windows**2 * side)."""
    if weight.ndim < 2:
        raise ValueError(f"farms_esd needs a matrix, got shape {tuple(weight.shape)}")
    rows_cols = weight.shape[-2:]
    side = max(1, min(rows_cols) // 2)  # FARMS's LLaMA runs: 2000 of 4096
    # `windows` offsets from 0 to n - side per dimension, evenly spaced (fewer where n - side is small)
    starts = [sorted({round(i * (n - side) / max(1, windows - 1)) for i in range(windows)}) for n in rows_cols]
    subs = torch.stack([weight[..., r:r + side, c:c + side] for r in starts[0] for c in starts[1]], -3)
    return esd(subs).flatten(-2).sort(-1).values  # (..., windows**2 * side), pooled


# ---- 2. the heavy tail of a spectrum: the Hill estimator ----

def hill_alpha(eigs, xmin_pos=2.0):
    """PL_Alpha_Hill (METHOD.md#2-heavy-tail), the Hill estimate of the spectrum's power-law tail exponent:
        alpha = 1 + n / (sum_{j>=i} ln lambda_j - n ln lambda_i),   i = floor(N / xmin_pos), n = N - i,
    lambda ascending, so the tail is the upper half for xmin_pos = 2. Smaller alpha: heavier tail, a more
    trained matrix. NaN for a degenerate spectrum. One spectrum (N,) -> a float; a stack (B, N) -> (B,)."""
    eigs = torch.as_tensor(eigs).double().sort(-1).values
    N = eigs.shape[-1]
    i = int(N / xmin_pos)
    n = N - i
    tail = eigs[..., i:]  # the tail includes xmin = lambda_i itself
    xmin = tail[..., 0]
    spread = tail.log().sum(-1) - n * xmin.log()  # sum of ln(lambda_j / xmin) over the tail
    alpha = 1 + n / spread
    # degenerate: xmin at numerical zero (zero, low-rank or NaN matrix: float32 eigvalsh leaves null eigenvalues
    # up to ~3 eps * max), or a tail with no log spread (identity, orthogonal; a mean log ratio < 1e-6 is noise)
    tiny = 32 * torch.finfo(torch.float32).eps * eigs[..., -1]
    ok = (xmin > tiny) & (spread > n * 1e-6) & torch.isfinite(alpha)
    alpha = torch.where(ok, alpha, float("nan"))
    return alpha.item() if alpha.ndim == 0 else alpha


# ---- 3. alpha -> a learning-rate multiplier per matrix ----

def alpha_to_multipliers(alpha, r_min=1.0, r_max=3.0):
    """{name: alpha} -> {name: multiplier} by the paper's linear map (METHOD.md#3-multipliers),
        m = r_min + (r_max - r_min) (alpha - alpha_min) / (alpha_max - alpha_min):
    the heaviest tail gets r_min, the lightest r_max. Non-finite alphas stay out of the min/max and of the
    result; all equal -> r_max, as the official code."""
    finite = {name: a for name, a in alpha.items() if math.isfinite(a)}
    if not finite:
        return {}
    lo, hi = min(finite.values()), max(finite.values())
    if hi == lo:
        return {name: float(r_max) for name in finite}
    return {name: r_min + (r_max - r_min) * (a - lo) / (hi - lo) for name, a in finite.items()}


# ---- 4. switching: how a layer moves to its new multiplier ----

def switching(t, start, target, t0, ramp):
    """The multiplier at step t of a layer that a recompute at step t0 sent from `start` to `target` (METHOD.md,
    section 4). Soft switching: m(t) = start + (target - start) min(1, (t - t0) / ramp), exactly the target
    from t0 + ramp on; ramp = 0 is hard switching, m(t) = target at once."""
    k = t - t0
    if ramp == 0 or k >= ramp:
        return target  # exactly, not start + (target - start) * 1.0
    return start + (target - start) * max(k, 0) / ramp


# ---- 5. the LLR controller: steps 1-4 every `interval` steps of the first `window` ----

def _opt(default, help):  # a config field and its --help (train.py's command line reads it)
    return field(default=default, metadata={"help": help})


@dataclass
class LLRConfig:
    interval: int = _opt(0, "recompute every this many steps; 0 = the run's steps // 80 (paper: 40 of 3,200)")
    ramp: int = _opt(-1, "steps to glide to a new multiplier; 0 = hard switch; -1 = interval // 2")
    window: float = _opt(0.2, "recompute only while step <= window * the run's steps, then freeze")
    r_min: float = _opt(1.0, "multiplier of the heaviest-tailed (smallest alpha) matrix")
    r_max: float = _opt(3.0, "multiplier of the lightest-tailed matrix (1B scripts use 5)")
    xmin_pos: float = _opt(2.0, "Hill tail starts at lambda_{floor(N / xmin_pos)}: 2 = median")
    embed_head: str = _opt("rmax", "'rmax': embedding and LM head get r_max (published); 'one': keep 1")
    mean_one: bool = _opt(False, "divide multipliers by their parameter-weighted mean (a control)")
    estimator: str = _opt("hill", "'hill': alpha of the whole spectrum (paper); 'farms': of square windows, "
                                  "shape-fair (arXiv 2506.06280)")

    def __post_init__(self):  # one ValueError, naming the first bad field
        rules = [("interval", self.interval >= 0, ">= 0"), ("ramp", self.ramp >= -1, ">= -1"),
                 ("window", 0 <= self.window <= 1, "in [0, 1]"), ("xmin_pos", self.xmin_pos > 1, "> 1"),
                 ("r_min", 0 < self.r_min <= self.r_max, f"in (0, r_max = {self.r_max}]"),
                 ("embed_head", self.embed_head in ("rmax", "one"), "'rmax' or 'one'"),
                 ("estimator", self.estimator in ("hill", "farms"), "'hill' or 'farms'")]
        for name, ok, need in rules:
            if not ok:
                raise ValueError(f"LLRConfig.{name} must be {need}, got {getattr(self, name)!r}")


class LLR:
    """Sets group['lr_scale'] = its layer's multiplier on every group of the optimizer(s), by name. Recomputes
    at the first step() and every `interval` steps while t <= window * total_steps (by default the paper's
    60M proportions at any length: every total_steps // 80 steps, ~17 times, ramp half an interval), then
    freezes; a ramp in flight finishes. Embedding and head get r_max (1 with embed_head='one'), vectors 1."""

    UNSET = (1.0, 1.0, 0)  # the segment of a vector, or of a matrix before its first multiplier: 1

    def __init__(self, model, optimizer, total_steps, cfg=None):
        self.cfg = cfg = cfg or LLRConfig()
        self.total_steps = total_steps
        self.interval = cfg.interval or max(1, total_steps // 80)
        self.ramp = cfg.ramp if cfg.ramp >= 0 else self.interval // 2
        self.optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        # the embedding and the linear layer that maps back to the vocabulary get the embed_head policy
        special = {i for i, role in roles(model).items() if role in ("embed", "head")}
        self.key_of, seen = _map_groups(model, self.optimizers, lambda n, p: n if p.ndim == 2 else None)
        self.measured = [(n, p) for n, p in seen if p.ndim == 2]  # embed/head are measured too
        self.special = [n for n, p in seen if id(p) in special]  # model order: the same sums on every rank
        self.analysed = [n for n, _ in self.measured if n not in self.special]
        self.segments = {}  # name -> (start, target, t0), switching's arguments
        self.alpha = {}  # name -> the last finite alpha, for logging
        self.computed_at = -1  # step of the last recompute; -1 = never assigned
        self.seconds = 0.0  # wall time spent inside step()
        self._warned = set()

    @torch.no_grad()
    def step(self, t):
        """Call at every step t, after backward, before opt.step(): {'alphas', 'multipliers'} or None."""
        clock, cfg, info = time.perf_counter(), self.cfg, None
        due = t % self.interval == 0 and t <= cfg.window * self.total_steps  # boundary included, as the paper's
        if self.computed_at < 0 or (due and t != self.computed_at):
            # 1, 2: {name: alpha of its spectrum}, NaN where degenerate; one shape's matrices as one stack
            spectrum = farms_esd if cfg.estimator == "farms" else esd
            alpha_of = lambda w: hill_alpha(spectrum(w), cfg.xmin_pos)  # (B, rows, cols) -> (B,)
            alpha = batched_over_ranks([(alpha_of, w) for _, w in self.measured])
            alpha = dict(zip([n for n, _ in self.measured], alpha))
            for name in [n for n, a in alpha.items() if not (math.isfinite(a) or n in self._warned)]:
                self._warned.add(name)  # once per matrix
                warnings.warn(f"llr: {name} has a degenerate spectrum (zero, low-rank, non-finite or flat) at "
                              f"step {t}; it keeps its multiplier ({self.segments.get(name, self.UNSET)[1]:g})")
            # 3: the map over the block matrices (not degenerate ones); embedding and head by policy
            targets = alpha_to_multipliers({n: alpha[n] for n in self.analysed}, cfg.r_min, cfg.r_max)
            targets |= {n: cfg.r_max if cfg.embed_head == "rmax" else 1.0 for n in self.special}
            if cfg.mean_one:  # same allocation, no extra total LR: sum(numel * m) / sum(numel) = 1
                sizes = {n: p.numel() for n, p in self.measured}
                mean = sum(sizes[n] * m for n, m in targets.items()) / sum(sizes[n] for n in targets)
                targets = {n: m / mean for n, m in targets.items()}
            # 4: each layer glides from its multiplier now to the target; the first assignment is hard
            for name, target in targets.items():
                now = switching(t, *self.segments.get(name, self.UNSET), self.ramp)
                self.segments[name] = (now if self.computed_at >= 0 else target, target, t)
            self.computed_at, self.alpha = t, {n: a for n, a in alpha.items() if math.isfinite(a)}
            info = {"alphas": dict(self.alpha),
                    "multipliers": {n: self.segments[n][1] for n, _ in self.measured if n in self.segments}}
        # 5: every group's lr_scale is its layer's multiplier at t; the loop sets lr = schedule(t) * lr_scale
        for group in _groups(self.optimizers):
            segment = self.segments.get(self.key_of[_first(group)], self.UNSET)
            group["lr_scale"] = switching(t, *segment, self.ramp)
        self.seconds += time.perf_counter() - clock
        return info

    def state_dict(self):  # plain python only, so it pickles into a checkpoint and loads with weights_only=True
        return {"segments": {n: list(s) for n, s in self.segments.items()}, "alphas": dict(self.alpha),
                "computed_at": self.computed_at}

    def load_state_dict(self, state):
        unknown = set(state["segments"]) - set(self.analysed) - set(self.special)
        if unknown:
            raise ValueError(f"LLR state has layers this model does not: {sorted(unknown)[:5]}")
        self.segments = {n: (float(s[0]), float(s[1]), int(s[2])) for n, s in state["segments"].items()}
        self.alpha, self.computed_at = dict(state["alphas"]), int(state["computed_at"])


# ---- Muon: orthogonalize, then the optimizer ----

def ns_dtype(u):  # Newton-Schulz runs in bfloat16 on CUDA (tensor cores), float32 elsewhere
    return torch.bfloat16 if u.is_cuda else torch.float32


def orthogonalize(u, steps=5, dtype=None):
    """Newton-Schulz approximation of the orthogonal factor U V^T of u = U S V^T (Keller Jordan's Muon). After
    X = u / (||u||_F + 1e-7) every singular value is in (0, 1]; each step applies the odd quintic p(s) = a s +
    b s^3 + c s^5 to all of them, X <- a X + (b A + c A A) X, A = X X^T. (3.4445, -4.7750, 2.0315) maximise
    the slope at 0 so tiny singular values grow fast, at the price of not converging to 1: after 5 steps they
    oscillate in roughly [0.5, 1.5], which trains as well as exact U V^T at a fraction of an SVD's cost.
    u: one matrix or a stack (..., rows, cols), each on its own."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = u.to(dtype or ns_dtype(u))
    tall = u.size(-2) > u.size(-1)
    if tall:
        X = X.mT  # iterate on the wide side: A = X X^T is then the smaller Gram
    # each matrix by its own norm (torch.optim.Muon clamps the norm at 1e-7 instead: the same unless u ~ 0)
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + 1e-7)
    shape, X = X.shape, X.reshape(-1, *X.shape[-2:]) if X.ndim > 2 else X  # a stack as one (B, m, n) batch
    fma = torch.addmm if X.ndim == 2 else torch.baddbmm  # beta * input + alpha * (m1 @ m2), one kernel
    for _ in range(steps):
        A = X @ X.mT
        B = fma(A, A, A, beta=b, alpha=c)  # b A + c A A
        X = fma(X, B, X, beta=a)  # a X + B X
    X = X.reshape(shape)
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2-D hidden matrices (one per group: per-layer lrs work).
    Same step as torch.optim.Muon:
        buf = lerp(buf, g, 1 - momentum); u = lerp(g, buf, momentum) if nesterov else buf
        p *= 1 - lr * weight_decay; p -= adjusted_lr * orthogonalize(u)
    adjust_lr 'original': lr * sqrt(max(1, rows / cols)) (Keller Jordan); 'match_rms_adamw': lr * 0.2 *
    sqrt(max(rows, cols)) (Moonlight), to reuse AdamW's lr and decay. Under torch.distributed a collective."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
                 adjust_lr="original"):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum, weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay, adjust_lr=adjust_lr))

    def add_param_group(self, group):
        super().add_param_group(group)  # fills in the defaults; also runs for the groups given to __init__
        group = self.param_groups[-1]
        shapes = [tuple(p.shape) for p in group["params"]]
        if any(len(s) != 2 for s in shapes) or group["adjust_lr"] not in ("original", "match_rms_adamw"):
            self.param_groups.pop()
            raise ValueError(f"Muon takes 2-D matrices and adjust_lr 'original' or 'match_rms_adamw'; group "
                             f"{group.get('name', 'unnamed')} has shapes {shapes} and adjust_lr "
                             f"{group['adjust_lr']!r}; give vectors and embeddings to AdamW")

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        todo = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        for group, p in todo:  # on every rank: cheap, and then every rank's state_dict is the whole one
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            self.state[p]["momentum_buffer"].lerp_(p.grad, 1 - group["momentum"])  # mu * buf + (1 - mu) * g
        dtype = ns_dtype(todo[0][1]) if todo else None
        for (group, p), update in zip(todo, gathered_over_ranks(self.direction, todo, dtype)):
            lr, wd, (rows, cols) = group["lr"], group["weight_decay"], p.shape
            scale = (math.sqrt(max(1, rows / cols)) if group["adjust_lr"] == "original"
                     else 0.2 * math.sqrt(max(rows, cols)))
            p.mul_(1 - lr * wd)  # decoupled weight decay with the unadjusted lr, as torch.optim.Muon
            p.add_(update.to(p.dtype), alpha=-lr * scale)
        return loss

    def direction(self, group, p):  # orthogonalize(u), u the (Nesterov) momentum: the update before lr
        buf, mu = self.state[p]["momentum_buffer"], group["momentum"]
        u = p.grad.lerp(buf, mu) if group["nesterov"] else buf  # out of place: p.grad stays as it was
        return orthogonalize(u, group["ns_steps"])


# ---- optimizer groups: which tensor each group holds, and its role (shared with lanton.py) ----

def param_groups(model, weight_decay=0.1):
    """One optimizer group per trainable tensor, named, so each can get its own lr; vectors do not decay."""
    return [{"params": [p], "name": n, "weight_decay": weight_decay if p.ndim >= 2 else 0.0}
            for n, p in model.named_parameters() if p.requires_grad]


def roles(model):
    """{id(param): role}: 'embed', 'head', 'hidden' (every other matrix) or 'vector'. The head is what the
    model's get_output_embeddings() returns (transformers' models and model.LLaMA have one; define it on a
    model of yours); embeddings are get_input_embeddings() and every nn.Embedding. A tied head is 'embed'."""
    role = {id(p): "hidden" if p.ndim == 2 else "vector" for p in model.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        role[id(head.weight)] = "head"
    embeds = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    embeds += [model.get_input_embeddings()] if hasattr(model, "get_input_embeddings") else []
    role |= {id(m.weight): "embed" for m in embeds if m is not None}
    return role


def _groups(optimizers):  # looked up afresh every step: optimizer.load_state_dict replaces the group dicts
    return [group for opt in optimizers for group in opt.param_groups]


def _first(group):  # a group is known by its first tensor, never by its position
    return id(group["params"][0]) if group["params"] else None


def _map_groups(model, optimizers, key):
    """({id of a group's first tensor: key}, [(name, param)] of every optimized tensor in model order), by
    tensor identity; key(name, param) -> the group's key, the same for all its tensors."""
    names = {id(p): n for n, p in model.named_parameters()}
    key_of, held = {}, set()
    for group in _groups(optimizers):
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(f"an optimizer holds a {tuple(p.shape)} tensor that is not in the model")
            held.add(id(p))
        keys = {key(names[id(p)], p) for p in group["params"]}
        if len(keys) > 1:
            members = ", ".join(names[id(p)] for p in group["params"])
            raise ValueError(f"one optimizer group holds parameters that need different lr multipliers "
                             f"({members}); use one group per parameter, e.g. llr.param_groups(model)")
        key_of[_first(group)] = keys.pop() if keys else None
    return key_of, [(n, p) for n, p in model.named_parameters() if id(p) in held]


# ---- measuring many matrices at once: one call per shape, the work shared over DDP ranks ----

def _world():  # (rank, world size) under torch.distributed, else (0, 1)
    ddp = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)


def share_of(rank, world, shapes):
    """The jobs ({index: shape}) of `rank` of `world`: round-robin in shape order (1/world of each shape)."""
    return sorted(shapes, key=lambda j: (tuple(shapes[j]), j))[rank::world]


@torch.no_grad()
def batched_over_ranks(jobs):
    """[fn(*tensors) for each job (fn, *tensors)] as floats, NaN for a None job; the jobs of one fn and shape go
    through fn together, as stacks (B, *shape). Under torch.distributed a collective, called on every rank with
    the same jobs: each rank does its share (share_of), and one all_reduce(SUM) hands everyone the same bits."""
    rank, world = _world()
    todo = [j for j, job in enumerate(jobs) if job]
    if not todo:
        return [math.nan] * len(jobs)
    batches = defaultdict(list)  # (fn, shape) -> indices of this rank's jobs
    for j in share_of(rank, world, {j: jobs[j][1].shape for j in todo}):
        batches[jobs[j][0], tuple(jobs[j][1].shape)].append(j)
    device = jobs[todo[0]][1].device
    values = torch.tensor([0.0 if job else math.nan for job in jobs], dtype=torch.float64, device=device)
    # one CPU thread: on a busy CPU threaded ops wait for their threads (~30 ms of spectra became seconds),
    # and one thread's bits do not depend on torch.get_num_threads()
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if device.type == "cpu" else threads)
    try:
        for (fn, shape), members in batches.items():
            per_chunk = max(1, 2**25 // math.prod(shape))  # at most ~256 MB of float64 tensors at a time
            for c in range(0, len(members), per_chunk):
                chunk = members[c:c + per_chunk]
                stacks = [torch.stack(ts) for ts in zip(*(jobs[j][1:] for j in chunk))]  # each (B, *shape)
                values[chunk] = fn(*stacks).to(values)
    finally:
        torch.set_num_threads(threads)
    if world > 1:
        dist.all_reduce(values)  # exactly one collective per call, on every rank; NaN + 0 stays NaN
    return values.tolist()  # the one host sync


def alphas(model, xmin_pos=2.0, estimator="hill"):
    """{name: Hill alpha} of every 2-D weight of any nn.Module (or iterable of (name, tensor)), NaN where
    degenerate: LLR.step's bits. Under torch.distributed a collective: call it on every rank."""
    if estimator not in ("hill", "farms"):
        raise ValueError(f"estimator must be 'hill' or 'farms', got {estimator!r}")
    named = model.named_parameters() if isinstance(model, nn.Module) else model
    matrices = {n: w for n, w in named if w.ndim == 2}
    spectrum = farms_esd if estimator == "farms" else esd
    alpha_of = lambda w: hill_alpha(spectrum(w), xmin_pos)  # (B, rows, cols) -> (B,), as in LLR.step
    return dict(zip(matrices, batched_over_ranks([(alpha_of, w) for w in matrices.values()])))


def gathered_over_ranks(fn, jobs, dtype):
    """[fn(*job) for job in jobs], tensors of `dtype` shaped as each job's last tensor, lazily in one process.
    Under torch.distributed a collective (the same jobs on every rank, as DDP gives): each rank computes its
    share (share_of) one job at a time, as one process does; one all_gather hands every rank all the bits."""
    rank, world = _world()
    if world == 1 or not jobs:
        return (fn(*job) for job in jobs)  # one result in memory at a time
    shapes = {j: job[-1].shape for j, job in enumerate(jobs)}
    shares = [share_of(r, world, shapes) for r in range(world)]
    numels = [[shapes[j].numel() for j in share] for share in shares]
    pieces = lambda flat, r: zip(shares[r], flat[:sum(numels[r])].split(numels[r]))  # rank r's (j, slice)
    mine = torch.empty(max(map(sum, numels)), dtype=dtype, device=jobs[0][-1].device)
    for j, out in pieces(mine, rank):
        out.view(shapes[j]).copy_(fn(*jobs[j]))
    everyone = mine.new_empty(world * len(mine))  # rank r's results, end to end, in row r of the view
    dist.all_gather_into_tensor(everyone, mine)  # the one collective, on every rank
    everyone = everyone.view(world, len(mine))
    results = dict(piece for r in range(world) for piece in pieces(everyone[r], r))
    return [results[j].view(shapes[j]) for j in range(len(jobs))]
