"""
LLR: heavy-tail guided layerwise learning rates (arXiv 2605.22297), plus the Muon optimizer.
LANTON, the second paper's method, is in lanton.py and reuses the helpers here.

    import llr
    opt = torch.optim.AdamW(llr.param_groups(model, weight_decay=0.1), lr=6e-4)
    ctrl = llr.LLR(model, opt, total_steps=max_steps)           # or a list of optimizers
    for step in range(max_steps):
        ...                                                     # forward, backward
        info = ctrl.step(step)                                  # sets group['lr_scale'] everywhere
        for g in opt.param_groups:
            g['lr'] = base_lr(step) * g['lr_scale']
        opt.step()
        if info: print(llr.layer_table(info['alphas'], info['multipliers']))
    llr.alphas(model)                                           # {name: alpha}, any nn.Module's matrices

Every `interval` steps during the first `window` of training, each weight matrix's eigenvalue spectrum is
measured, its heavy tail summarised by the Hill estimator alpha, and alpha mapped linearly to a multiplier
in [r_min, r_max]: light tails (large alpha, "undertrained") get large multipliers, heavy tails small ones.
METHOD.md gives the details, and where this code departs from the official release.
"""

import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

# ---- 1. the spectrum of each weight matrix, and the Hill estimator of its heavy tail ----


def esd(weight):
    """Empirical spectral density of W^T W: the squared singular values of W, ascending, float32.
    Accepts one matrix (rows, cols) or a stack of same-shape matrices (B, rows, cols)."""
    if weight.ndim < 2:
        raise ValueError(f"esd needs a matrix, got shape {tuple(weight.shape)}")
    return _gram_eigs(weight).float()


def hill_alpha(eigs, xmin_pos=2.0):
    """PL_Alpha_Hill of one ascending spectrum (arXiv 2605.22297), with xmin at lambda_{floor(N/xmin_pos)},
    the median for xmin_pos=2:  alpha = 1 + n / (sum_{j>=i} ln lambda_j - n ln lambda_i),
    i = floor(N / xmin_pos), n = N - i. NaN for a degenerate spectrum (see _hill)."""
    return _hill(torch.as_tensor(eigs).double().sort().values[None], xmin_pos)[0].item()


def _gram_eigs(w, dtype=None):
    """Ascending eigenvalues of W^T W for a stack (..., rows, cols) as float64; NaN rows for non-finite W."""
    w = w.detach()
    finite = torch.isfinite(w).flatten(-2).all(-1)  # (...,) LAPACK may fail on NaN, so zero those out
    # float32 on CPU (alpha within ~1e-6 of float64's); float64 on CUDA, where a float32 matmul may be TF32
    dtype = dtype or (torch.float64 if w.is_cuda else torch.float32)
    w = w.masked_fill(~finite[..., None, None], 0).to(dtype)
    # the Gram matrix of the smaller side has the same nonzero eigenvalues, and eigvalsh on it beats svdvals
    gram = w.mT @ w if w.shape[-2] >= w.shape[-1] else w @ w.mT  # (..., N, N), N = min(rows, cols)
    eigs = torch.linalg.eigvalsh(gram).double().clamp_min(0)  # rounding can leave tiny negatives
    return eigs.masked_fill(~finite[..., None], float("nan"))


def _hill(eigs, xmin_pos=2.0):
    """hill_alpha over the last dim of a stack of ascending spectra; NaN marks a degenerate row."""
    eigs = eigs.double()
    N = eigs.shape[-1]
    i = int(N / xmin_pos)
    n = N - i
    tail = eigs[..., i:]  # the tail includes xmin = lambda_i itself
    xmin = tail[..., 0]
    spread = tail.log().sum(-1) - n * xmin.log()  # sum of ln(lambda_j / xmin) over the tail
    alpha = 1 + n / spread
    # degenerate: xmin at numerical zero (a zero or low-rank matrix, NaN input; float32 eigvalsh leaves null
    # eigenvalues up to ~3 eps * max), or a tail with no log spread (identity, orthogonal): a mean log ratio
    # under 1e-6 is float32 rounding noise, not shape
    tiny = 32 * torch.finfo(torch.float32).eps * eigs[..., -1]
    ok = (xmin > tiny) & (spread > n * 1e-6) & torch.isfinite(alpha)
    return torch.where(ok, alpha, float("nan"))


def nuclear_norm(x):
    """Sum of singular values of each matrix of a stack (LANTON's dual norm). In float64: a square root
    turns float32's ~1e-7 * max rounding of zero eigenvalues into ~3e-4 * max per zero singular value."""
    return _gram_eigs(x, torch.float64).sqrt().sum(-1)


def _world():  # (rank, world size) under torch.distributed, else (0, 1)
    ddp = dist.is_available() and dist.is_initialized()
    return (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)


def share_of(rank, world, shapes):
    """The jobs ({index: shape}) that `rank` of `world` does: round-robin in shape order, so each rank gets
    about 1/world of every shape's work, in runs of one shape that batch well. The same on every rank."""
    return sorted(shapes, key=lambda j: (tuple(shapes[j]), j))[rank::world]


@torch.no_grad()
def batched_over_ranks(jobs):
    """[fn(*tensors) for each job (fn, *tensors)] as floats, NaN for a None job. The jobs of one fn and shape go
    through fn together, as stacks (B, *shape). Under torch.distributed a collective, called on every rank with
    the same jobs: each rank does every world-th job (round-robin in shape order, so the work is balanced) and
    leaves zeros elsewhere; one all_reduce(SUM) hands everyone the same bits."""
    rank, world = _world()
    todo = [j for j, job in enumerate(jobs) if job]
    if not todo:
        return [math.nan] * len(jobs)
    batches = defaultdict(list)  # (fn, shape) -> indices of this rank's jobs
    for j in share_of(rank, world, {j: jobs[j][1].shape for j in todo}):
        batches[jobs[j][0], tuple(jobs[j][1].shape)].append(j)
    device = jobs[todo[0]][1].device
    values = torch.tensor([0.0 if job else math.nan for job in jobs], dtype=torch.float64, device=device)
    # one CPU thread: on a busy CPU every threaded op waits for its threads to be scheduled, which turns ~30 ms
    # of spectra into seconds; one thread's bits also do not depend on torch.get_num_threads()
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


def farms_esd(weight, windows=9):
    """FARMS (Hu et al., arXiv 2506.06280): the spectrum of a matrix without its aspect-ratio bias. Square
    submatrices of side min(rows, cols) // 2 at `windows` evenly spaced offsets per dimension (windows**2 in
    all, overlapping), their squared singular values pooled into one ascending spectrum, float32. A random
    matrix then has the same Hill alpha whatever its shape (~2.11 at any aspect ratio; the plain esd's is
    ~2.1 square, ~3.1 at 1:2.75). One matrix or a stack (B, rows, cols) -> (windows**2 * side,) or (B, ...)."""
    if weight.ndim < 2:
        raise ValueError(f"farms_esd needs a matrix, got shape {tuple(weight.shape)}")
    return _farms_eigs(weight, windows).float()


def _farms_eigs(w, windows=9):
    rows, cols = w.shape[-2:]
    side = max(1, min(rows, cols) // 2)  # FARMS's LLaMA runs: 2000 of 4096
    starts = lambda n: sorted({round(i * (n - side) / max(1, windows - 1)) for i in range(windows)})
    subs = torch.stack([w[..., r:r + side, c:c + side] for r in starts(rows) for c in starts(cols)], -3)
    return _gram_eigs(subs).flatten(-2).sort(-1).values  # (..., windows**2 * side), pooled


ESTIMATORS = ("hill", "farms")  # 'hill': the whole spectrum; 'farms': square windows


def alphas(model, xmin_pos=2.0, estimator="hill"):
    """{name: Hill alpha} of every 2-D weight of any nn.Module (or of an iterable of (name, tensor)), NaN
    where degenerate; a transposed layout (GPT-2's Conv1D stores (in, out)) has the same eigenvalues, so
    the same alpha. estimator 'hill' fits the whole spectrum (the paper), 'farms' the pooled spectrum of
    square windows (farms_esd). Under torch.distributed a collective (batched_over_ranks): call it on
    every rank."""
    named = model.named_parameters() if isinstance(model, nn.Module) else model
    matrices = {n: w for n, w in named if w.ndim == 2}
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be 'hill' or 'farms', got {estimator!r}")
    spectrum = _farms_eigs if estimator == "farms" else _gram_eigs
    alpha = lambda stack: _hill(spectrum(stack), xmin_pos)  # (B, rows, cols) -> (B,)
    return dict(zip(matrices, batched_over_ranks([(alpha, w) for w in matrices.values()])))


# ---- 2. alpha -> a learning-rate multiplier per matrix ----


def alpha_to_multipliers(alphas, r_min=1.0, r_max=3.0):
    """The paper's linear map m = r_min + (r_max - r_min) * (a - a_min) / (a_max - a_min), keyed by name.
    Non-finite alphas stay out of the min/max and of the result; all equal -> r_max, as the official code."""
    alphas = {k: a for k, a in alphas.items() if math.isfinite(a)}
    if not alphas:
        return {}
    lo, hi = min(alphas.values()), max(alphas.values())
    if hi == lo:
        return {k: float(r_max) for k in alphas}
    return {k: r_min + (r_max - r_min) * (a - lo) / (hi - lo) for k, a in alphas.items()}


# ---- 3. when multipliers change: the LLR controller, with soft and hard switching ----


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

    def __post_init__(self):
        rules = [(self.interval >= 0, f"interval must be >= 0 (0 = total_steps // 80), got {self.interval}"),
                 (self.ramp >= -1, f"ramp must be >= 0, or -1 for half the interval, got {self.ramp}"),
                 (0 <= self.window <= 1, f"window must be in [0, 1], got {self.window}"),
                 (0 < self.r_min <= self.r_max,
                  f"need 0 < r_min <= r_max, got r_min={self.r_min}, r_max={self.r_max}"),
                 (self.xmin_pos > 1, f"xmin_pos must be > 1, got {self.xmin_pos}"),
                 (self.embed_head in ("rmax", "one"),
                  f"embed_head must be 'rmax' or 'one', got {self.embed_head!r}"),
                 (self.estimator in ESTIMATORS,
                  f"estimator must be 'hill' or 'farms', got {self.estimator!r}")]
        for ok, msg in rules:  # one ValueError, naming the first bad field
            if not ok:
                raise ValueError(msg)


class LLR:
    """Sets group['lr_scale'] = this layer's multiplier on every group of the given optimizer(s).

    Cadence: recompute at the first step() and every `interval` steps while step <= window * total_steps
    (by default the paper's 60M proportions at any length: every total//80 steps, ~17 recomputes, ramp half).
    Schedule of one analysed matrix: a piecewise-linear, continuous multiplier m(s). A recompute at step t
    with target m* places a knot at t: m(t) is unchanged (the value the previous segment gives at t,
    mid-ramp or settled), then m(t + k) = m(t) + (m* - m(t)) * min(1, k / ramp), so the target is reached
    exactly at step t + ramp. ramp = 0 is hard switching: m(t) = m*. The first assignment (the first call
    of step(), normally step 0) is always hard: there is no earlier lr to glide from. After the window no
    recomputes happen; a ramp in flight still finishes. Embedding and head get r_max (or 1 with
    embed_head='one') from the first assignment on; vectors 1. A degenerate spectrum keeps the layer's
    previous segment (multiplier 1 if it never had one)."""

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
        self.segments = {}  # name -> [start, target, t0]: the multiplier's current linear piece
        self.alphas = {}  # the last finite alphas, for logging
        self.computed_at = -1  # step of the last recompute; -1 = never assigned
        self.seconds = 0.0  # wall time spent inside step()
        self._warned = set()

    def multiplier(self, key, step):
        """The multiplier of a group key at `step`: the linear piece m(s) of the class docstring."""
        if key not in self.segments:  # vectors, and every layer before the first assignment
            return 1.0
        start, target, t0 = self.segments[key]
        k, ramp = step - t0, self.ramp
        if ramp == 0 or k >= ramp:
            return target  # exactly, not start + (target - start) * 1.0
        return start + (target - start) * max(k, 0) / ramp

    def _measure(self):
        """{name: alpha}, NaN where degenerate, by llr.alphas: the same route as train.py's logged alphas."""
        return alphas(self.measured, self.cfg.xmin_pos, self.cfg.estimator)

    @torch.no_grad()
    def _recompute(self, step):
        alphas = self._measure()
        for name, a in alphas.items():
            if not math.isfinite(a) and name not in self._warned:
                self._warned.add(name)
                kept = self.segments[name][1] if name in self.segments else 1.0
                warnings.warn(f"llr: {name} has a degenerate spectrum (zero, low-rank, non-finite or flat) "
                              f"at step {step}; it keeps its multiplier ({kept:g}) "
                              "and stays out of the alpha min/max")
        targets = alpha_to_multipliers({n: alphas[n] for n in self.analysed}, self.cfg.r_min, self.cfg.r_max)
        targets |= {n: self.cfg.r_max if self.cfg.embed_head == "rmax" else 1.0 for n in self.special}
        # same allocation, no extra total LR: sum(numel * m) / sum(numel) = 1 over the matrices
        if self.cfg.mean_one:
            sizes = {n: p.numel() for n, p in self.measured}
            mean = sum(sizes[n] * m for n, m in targets.items()) / sum(sizes[n] for n in targets)
            targets = {n: m / mean for n, m in targets.items()}
        for name, target in targets.items():
            # glide from wherever the layer is now; the very first assignment is hard
            start = self.multiplier(name, step) if self.computed_at >= 0 else target
            self.segments[name] = [start, target, step]
        self.computed_at = step
        self.alphas = {n: a for n, a in alphas.items() if math.isfinite(a)}
        return {"alphas": dict(self.alphas),
                "multipliers": {n: self.segments[n][1] for n, _ in self.measured if n in self.segments}}

    def step(self, step):
        """Call once per training step, before the optimizer step. Returns the new alphas and target
        multipliers on steps that recomputed, else None."""
        t0 = time.perf_counter()
        # boundary included, as the paper's code
        in_window = step % self.interval == 0 and step <= self.cfg.window * self.total_steps
        recompute = self.computed_at < 0 or (in_window and step != self.computed_at)
        info = self._recompute(step) if recompute else None
        for group in _groups(self.optimizers):
            group["lr_scale"] = self.multiplier(self.key_of[_first(group)], step)
        self.seconds += time.perf_counter() - t0
        return info

    def state_dict(self):
        # plain python only, so it pickles into a checkpoint and loads with weights_only=True
        return {"segments": {n: list(s) for n, s in self.segments.items()}, "alphas": dict(self.alphas),
                "computed_at": self.computed_at}

    def load_state_dict(self, state):
        unknown = set(state["segments"]) - set(self.analysed) - set(self.special)
        if unknown:
            raise ValueError(f"LLR state has layers this model does not: {sorted(unknown)[:5]}")
        self.segments = {n: [float(s[0]), float(s[1]), int(s[2])] for n, s in state["segments"].items()}
        self.alphas = dict(state["alphas"])
        self.computed_at = int(state["computed_at"])


# ---- optimizer groups: which tensor each group holds, and its role (shared with lanton.py) ----


def param_groups(model, weight_decay=0.1):
    """One optimizer group per trainable tensor, named, so each matrix can get its own lr.
    Matrices (ndim >= 2) decay, vectors (norm gains, biases) do not."""
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


def _groups(optimizers):
    # looked up afresh every step: optimizer.load_state_dict replaces the group dicts
    return [group for opt in optimizers for group in opt.param_groups]


def _first(group):  # a group is known by its first tensor, never by its position
    return id(group["params"][0]) if group["params"] else None


def _map_groups(model, optimizers, key):
    """Map every optimizer group to one multiplier key, by tensor identity (never by position).
    key(name, param) -> the group's key; a group whose tensors need different keys is an error. Returns
    ({id of a group's first tensor: key}, [(name, param)] of every optimized tensor in model order)."""
    names = {id(p): n for n, p in model.named_parameters()}
    key_of, held = {}, set()
    for group in _groups(optimizers):
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(f"an optimizer holds a parameter of shape {tuple(p.shape)} "
                                 "that is not in the model")
            held.add(id(p))
        keys = {key(names[id(p)], p) for p in group["params"]}
        if len(keys) > 1:
            members = ", ".join(names[id(p)] for p in group["params"])
            raise ValueError(f"one optimizer group holds parameters that need different lr multipliers "
                             f"({members}); use one group per parameter, e.g. llr.param_groups(model)")
        key_of[_first(group)] = keys.pop() if keys else None
    return key_of, [(n, p) for n, p in model.named_parameters() if id(p) in held]


# ---- console table ----

LAYER_TYPES = [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"), ("gate", "gate_proj"),
               ("up", "up_proj"), ("down", "down_proj"), ("embed", "embed_tokens"), ("head", "lm_head")]


def layer_table(alphas, multipliers, label="alpha"):
    """One row per layer type (q, k, v, ... from the parameter name): mean, min and max over depth of a
    per-layer statistic (`label`: alpha here, the noise for LANTON) and of the multiplier."""
    def kind(name):
        return next((t for t, key in LAYER_TYPES if key in name), "other")

    def stats(xs):  # mean, min and max over depth, or dashes where this type has no value
        if not xs:
            return f"{'-':>11} {'-':>7} {'-':>7}"
        return f"{sum(xs) / len(xs):11.3f} {min(xs):7.3f} {max(xs):7.3f}"

    lines = [f"{'layer':<6} {'n':>3} | {label[:6] + ' mean':>11} {'min':>7} {'max':>7} | "
             f"{'mult mean':>11} {'min':>7} {'max':>7}"]
    for t in [t for t, _ in LAYER_TYPES] + ["other"]:
        a, m = ([float(v) for n, v in values.items() if kind(n) == t] for values in (alphas, multipliers))
        if a or m:
            lines.append(f"{t:<6} {max(len(a), len(m)):>3} | {stats(a)} | {stats(m)}")
    return "\n".join(lines)


# ---- Muon ----


def ns_dtype(u):  # Newton-Schulz runs in bfloat16 on CUDA (tensor cores), float32 elsewhere
    return torch.bfloat16 if u.is_cuda else torch.float32


def orthogonalize(u, steps=5, dtype=None):
    """Newton-Schulz approximation of the orthogonal factor U V^T of u = U S V^T (Keller Jordan's Muon).
    After X = u / (||u||_F + 1e-7) every singular value is in (0, 1]; each step applies the odd quintic
    p(s) = a s + b s^3 + c s^5 to all of them at once, X <- a X + (b A + c A A) X, A = X X^T. The
    coefficients (3.4445, -4.7750, 2.0315) maximise the slope at 0 (a = 3.4) so tiny singular values grow
    fast, at the price of not converging to 1: after 5 steps they oscillate in roughly [0.5, 1.5], which
    trains as well as exact U V^T at a fraction of the cost of an SVD. u: one matrix or a stack (..., rows,
    cols), each orthogonalised on its own. In bfloat16 on CUDA (tensor cores), float32 elsewhere."""
    a, b, c = 3.4445, -4.7750, 2.0315
    dtype = dtype or ns_dtype(u)
    X = u.to(dtype)
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
    """MomentUm Orthogonalized by Newton-schulz, for 2-D hidden matrices (one per group is normal,
    so per-layer learning rates work). Same step as torch.optim.Muon:
        buf = lerp(buf, g, 1 - momentum); u = lerp(g, buf, momentum) if nesterov else buf
        p *= 1 - lr * weight_decay; p -= adjusted_lr * orthogonalize(u)
    adjust_lr 'original': lr * sqrt(max(1, rows / cols)) (Keller Jordan); 'match_rms_adamw':
    lr * 0.2 * sqrt(max(rows, cols)) (Moonlight), which lets Muon reuse AdamW's lr and weight decay.
    Under torch.distributed step() is a collective: each rank orthogonalises its share of the matrices and
    every rank applies the same bits, those a single process would compute."""

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
                 adjust_lr="original"):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0, "
                             f"got {lr}, {momentum}, {weight_decay}")
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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        todo = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        for group, p in todo:  # on every rank: cheap, and then every rank's state_dict is the whole one
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            self.state[p]["momentum_buffer"].lerp_(p.grad, 1 - group["momentum"])  # mu * buf + (1 - mu) * g
        for (group, p), update in zip(todo, self._orthogonalized(todo)):
            lr, wd = group["lr"], group["weight_decay"]
            rows, cols = p.shape
            scale = (math.sqrt(max(1, rows / cols)) if group["adjust_lr"] == "original"
                     else 0.2 * math.sqrt(max(rows, cols)))
            p.mul_(1 - lr * wd)  # decoupled weight decay with the unadjusted lr, as torch.optim.Muon
            p.add_(update.to(p.dtype), alpha=-lr * scale)
        return loss

    def _orthogonalize(self, group, p):
        buf, mu = self.state[p]["momentum_buffer"], group["momentum"]
        u = p.grad.lerp(buf, mu) if group["nesterov"] else buf  # out of place: p.grad stays as it was
        return orthogonalize(u, group["ns_steps"])

    def _orthogonalized(self, todo):
        """Each matrix's update, in todo's order. One process: one at a time. Under torch.distributed (the same
        todo on every rank, as DDP gives) each rank orthogonalises its share (share_of, as batched_over_ranks)
        one matrix at a time, as a single process would, and one all_gather hands every rank everyone's bits."""
        rank, world = _world()
        if world == 1 or not todo:
            return (self._orthogonalize(*job) for job in todo)  # lazily: one update in memory at a time
        shapes = {j: p.shape for j, (_, p) in enumerate(todo)}
        shares = [share_of(r, world, shapes) for r in range(world)]
        numels = [[shapes[j].numel() for j in share] for share in shares]
        pieces = lambda flat, r: zip(shares[r], flat[:sum(numels[r])].split(numels[r]))  # rank r's (j, slice)
        mine = torch.empty(max(map(sum, numels)), dtype=ns_dtype(todo[0][1]), device=todo[0][1].device)
        for j, out in pieces(mine, rank):
            out.view(shapes[j]).copy_(self._orthogonalize(*todo[j]))
        everyone = mine.new_empty(world * len(mine))  # rank r's updates, end to end, in row r of the view
        dist.all_gather_into_tensor(everyone, mine)  # the step's one collective, on every rank
        everyone = everyone.view(world, len(mine))
        updates = dict(piece for r in range(world) for piece in pieces(everyone[r], r))
        return [updates[j].view(shapes[j]) for j in range(len(todo))]
