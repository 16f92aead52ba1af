"""
Train a LLaMA on CPU, one GPU, or many GPUs, with a uniform learning rate or with LLR.

    python train.py                                   # CPU demo: tiny model, embedded corpus
    python train.py --llr                             # the same with layerwise learning rates
    python train.py --preset=llama60m --data=data/fineweb_t5 --device=cuda   # shards: prepare_fineweb.py
    torchrun --standalone --nproc_per_node=8 train.py --preset=llama60m --data=data/fineweb_t5 --llr
"""

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from baselines import LAMB, LARS, blockwise_ratio
import cli
from cli import UsageError, nested, opt
from common import (Metrics, compute_cleanup, compute_init, device_type, layer_table, load_checkpoint,
                    peak_flops, print0, run_record, save_checkpoint, stop_signals, uses_bf16, wrap_ddp)
from lanton import LANTON, LANTONConfig
from llr import LLR, LLRConfig, Muon, alphas, param_groups, roles
from model import LLaMA, PRESETS, estimate_memory, pad_vocab
from prepare_fineweb import build_corpus, decode, list_shards, meta_tokenizer, read_meta, read_shard

# ---- config ----

@dataclass
class TrainConfig:  # each field: its default, its --help, and (where a --help section starts) the section
    preset: str = opt("tiny", "model size: a key of model.PRESETS", "model and data", choices=tuple(PRESETS))
    data: str = opt("", "directory of token shards; empty = the embedded pydoc corpus")
    seq_len: int = opt(256, "tokens per sequence")
    batch_size: int = opt(16, "sequences per micro-batch, per process")
    total_batch_tokens: int = opt(0, "tokens per optimizer step; 0 = one micro-batch on every process")
    seed: int = opt(1337, "model init")
    max_steps: int = opt(600, "length of the schedule", "optimization")
    optimizer: str = opt("adamw", "adamw | muon (hidden matrices on Muon, the rest on AdamW) | lars | lamb "
                                  "(every tensor; baselines.py)", choices=("adamw", "muon", "lars", "lamb"))
    lr: float = opt(4e-3, "AdamW (LARS, LAMB) peak learning rate (the CPU demo's tuned AdamW value: README)")
    min_lr_ratio: float = opt(0.1, "cosine decays to min_lr_ratio * lr")
    warmup_steps: int = opt(-1, "linear warmup; -1 = 10% of max_steps")
    beta1: float = opt(0.9, "AdamW first-moment decay")
    beta2: float = opt(0.95, "AdamW second-moment decay (the paper's code: torch's 0.999)")
    weight_decay: float = opt(0.1, "decoupled, on 2-D weights only")
    grad_clip: float = opt(1.0, "max global grad norm; 0 = no clipping")
    muon_lr: float = opt(0.02, "Muon peak learning rate")
    muon_adjust_lr: str = opt("original", "Muon step-size rule: original | match_rms_adamw",
                              choices=("original", "match_rms_adamw"))
    embed_head_lr: float = opt(1.0, "embedding and LM head at this multiple of --lr "
                                    "(a control; official: embed_lr)")
    norm_lr: float = opt(1.0, "norm gains (every 1-D tensor) at this multiple of their AdamW LR (a control)")
    blockwise: bool = opt(False, "AdamW with fixed LR ratios by block type (q, k 8; v, o 4; MLP 6; "
                                 "embedding, head 10), the paper's 'Sharpness' baseline (baselines.py)")
    llr: bool = opt(False, "layerwise learning rates from each matrix's heavy-tail alpha",
                    "LLR (arXiv 2605.22297); --llr_<field> sets that field of llr.LLRConfig")
    llr_config: LLRConfig = nested(LLRConfig, "llr")
    lanton: bool = opt(False, "LRs from each layer's gradient noise (with --llr: their product)",
                       "LANTON (arXiv 2510.14009); --lanton_<field> sets that field of lanton.LANTONConfig")
    lanton_config: LANTONConfig = nested(LANTONConfig, "lanton")
    out_dir: str = opt("", "run directory; empty = out/<preset>-<optimizer>[-llr][-lanton]", "run")
    device: str = opt("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    dtype: str = opt("auto", "auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16",
                     choices=("auto", "float32", "bfloat16"))
    compile: bool = opt(False, "torch.compile the model")
    loss_chunk: int = opt(0, "LM head and loss this many tokens at a time (never a batch of logits); 0 = off")
    checkpoint_blocks: bool = opt(False, "keep only each block's input and recompute the block in backward")
    dry_run: bool = opt(False, "print this run's estimated peak memory, and exit (a GPU's: --device=cuda)")
    eval_interval: int = opt(100, "evaluate and checkpoint every this many steps (and at the end)")
    eval_steps: int = opt(10, "validation batches per evaluation, in all (shared out over the processes)")
    log_interval: int = opt(10, "console line every this many steps")
    sample_tokens: int = opt(64, "length of the sample printed and logged at each evaluation; 0 = off")
    wandb: str = opt("", "also log to this Weights & Biases project (pip install wandb); empty = off")
    resume: bool = opt(False, "continue from out_dir/ckpt.pt")
    stop_after: int = opt(0, "end this invocation after this many steps, with a checkpoint; 0 = off")


# settings a resumed run may change (a run out of memory resumes with --checkpoint_blocks); every other
# setting must match its checkpoint's
RUN_ONLY = ("resume", "stop_after", "eval_interval", "eval_steps", "log_interval", "compile", "device",
            "dtype", "out_dir", "sample_tokens", "wandb", "dry_run", "loss_chunk", "checkpoint_blocks")


def check_config(cfg):
    """Reject bad values early, with a message naming the key and what is allowed."""
    cli.check_choices(cfg)
    for key in ("max_steps", "batch_size", "seq_len", "eval_steps", "log_interval", "lr", "muon_lr",
                "embed_head_lr", "norm_lr"):
        if not 0 < getattr(cfg, key) < math.inf:  # NaN too
            raise UsageError(f"--{key} must be positive and finite, got {getattr(cfg, key)}")
    for key in ("total_batch_tokens", "weight_decay", "grad_clip", "eval_interval", "stop_after",
                "sample_tokens", "loss_chunk"):
        if not 0 <= getattr(cfg, key) < math.inf:  # NaN too
            raise UsageError(f"--{key} must be >= 0 and finite, got {getattr(cfg, key)}")
    if not 0 <= cfg.seed < 2**64:  # what torch.manual_seed takes
        raise UsageError(f"--seed must be in [0, 2**64), got {cfg.seed}")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise UsageError(f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1}, {cfg.beta2}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise UsageError(f"--min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if cfg.warmup_steps < -1:
        raise UsageError(f"--warmup_steps must be >= 0, or -1 for 10% of --max_steps, "
                         f"got {cfg.warmup_steps}")
    if cfg.warmup_steps >= cfg.max_steps:
        raise UsageError(f"--warmup_steps={cfg.warmup_steps} must be smaller than "
                         f"--max_steps={cfg.max_steps}")
    if cfg.blockwise and (cfg.optimizer != "adamw" or cfg.llr or cfg.lanton or cfg.embed_head_lr != 1):
        raise UsageError("--blockwise sets every group's LR ratio itself, with AdamW: drop --optimizer, "
                         "--llr, --lanton and --embed_head_lr")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda but no CUDA device is available; use --device=cpu")
    if cfg.data and not os.path.isdir(cfg.data):
        raise UsageError(f"--data={cfg.data} is not a directory; make shards with prepare_fineweb.py "
                         "or leave --data out")
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError(f"--wandb={cfg.wandb} needs the wandb package: pip install wandb, "
                             "or leave --wandb out") from None


def resolve(cfg):
    """The config as logged and checkpointed (warmup_steps and out_dir filled in), checked against out_dir."""
    check_config(cfg)
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else cfg.max_steps // 10
    out_dir = cfg.out_dir or os.path.join("out", f"{cfg.preset}-{cfg.optimizer}"
                                          + "-llr" * cfg.llr + "-lanton" * cfg.lanton)
    ckpt_path, metrics_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "metrics.jsonl")
    if cfg.resume and not os.path.exists(ckpt_path):
        raise UsageError(f"--resume but {ckpt_path} does not exist; drop --resume to start a new run")
    if not cfg.resume and (os.path.exists(ckpt_path) or os.path.exists(metrics_path)):
        raise UsageError(f"{out_dir} already holds a run; pass --resume to continue it, or another --out_dir")
    return dataclasses.replace(cfg, out_dir=out_dir, warmup_steps=warmup)


def step_tokens(cfg, world):
    """Tokens per optimizer step, and the gradient accumulation steps that make them up."""
    per_step = cfg.batch_size * cfg.seq_len * world  # one micro-batch on every process
    total = cfg.total_batch_tokens or per_step
    if total % per_step:
        raise UsageError(f"--total_batch_tokens={total} must be a multiple of "
                         f"batch_size*seq_len*processes={per_step}")
    return total, total // per_step


# ---- data: the embedded corpus and the loader (the shard format is prepare_fineweb.py's) ----

def build_embedded_corpus(data_dir):
    """Python's own documentation (pydoc_data ships with CPython) as byte tokens: works offline anywhere."""
    from pydoc_data.topics import topics
    build_corpus(data_dir, "pydoc", (topics[k] for k in sorted(topics)), val_every=10)


def open_data(cfg, world):
    """The run's shards (--data, or the embedded corpus, built once under data/), checked up front: a bad
    directory or a shard too short for one step fails now, not at the first step or evaluation."""
    data_dir = cfg.data or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pydoc")
    if not cfg.data:
        build_embedded_corpus(data_dir)
    train_files, val_files = list_shards(data_dir, "train"), list_shards(data_dir, "val")
    if not (train_files and val_files):
        raise UsageError(f"{data_dir} needs *_train_*.bin and *_val_*.bin shards; make them with "
                         "prepare_fineweb.py")
    need = world * cfg.batch_size * cfg.seq_len + 1  # one step of every process, and its last target
    for path in train_files + val_files:  # headers only: shards are memory-mapped
        try:
            n = len(read_shard(path))
        except ValueError as e:
            raise UsageError(str(e)) from None
        if n < need:
            raise UsageError(f"{path} holds {n} tokens, fewer than one step needs ({need}); "
                             "lower --batch_size or --seq_len")
    return data_dir, read_meta(data_dir), train_files, val_files


class Loader:
    """Sequential batches from a split's shards. Rank r reads the r-th B*T slice of every world*B*T window,
    so one process with k accumulation steps sees exactly what k processes see in one step."""

    def __init__(self, files, B, T, rank=0, world=1):
        self.files, self.B, self.T, self.rank, self.world = files, B, T, rank, world
        self.shard, self.pos = 0, 0  # pos: start of the current window, the same on every rank
        self.tokens = read_shard(files[0])

    def next_batch(self):
        B, T = self.B, self.T
        if self.pos + self.world * B * T + 1 > len(self.tokens):  # window would run off the shard
            self.shard, self.pos = (self.shard + 1) % len(self.files), 0
            self.tokens = read_shard(self.files[self.shard])
        start = self.pos + self.rank * B * T
        buf = torch.from_numpy(self.tokens[start : start + B * T + 1].astype(np.int64))
        self.pos += self.world * B * T
        return buf[:-1].view(B, T), buf[1:].view(B, T)  # inputs and their next tokens, (B, T) each

    def state_dict(self):
        return {"shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state):
        self.shard, self.pos = state["shard"], state["pos"]
        self.tokens = read_shard(self.files[self.shard])


# ---- building blocks: optimizers, the layerwise methods, the schedule ----

def build_optimizers(model, cfg, fused):
    """One param group per tensor (param_groups), so that layerwise multipliers can act on each matrix."""
    groups, role = param_groups(model, cfg.weight_decay), roles(model)
    # hidden matrices go to Muon; embedding, head and vectors to AdamW (the rule LLR uses too)
    muon = [g for g in groups if role[id(g["params"][0])] == "hidden"] if cfg.optimizer == "muon" else []
    adamw = [g for g in groups if not any(g is m for m in muon)]
    covered = [id(p) for g in muon + adamw for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters()), "every parameter in one group"
    # each group's peak lr: the optimizer's, or embedding and head at --embed_head_lr times AdamW's,
    # or --blockwise's ratio; norm gains then times --norm_lr
    for g in adamw:
        r = role[id(g["params"][0])]
        g["initial_lr"] = (cfg.lr * (blockwise_ratio(g["name"], r) if cfg.blockwise else
                                     cfg.embed_head_lr if r in ("embed", "head") else 1)
                           * (cfg.norm_lr if r == "vector" else 1))
    for g in muon:
        g["initial_lr"] = cfg.muon_lr
    if cfg.optimizer in ("lars", "lamb"):  # every tensor, as the paper's code
        return [(LARS if cfg.optimizer == "lars" else LAMB)(adamw, lr=cfg.lr)]
    opts = [torch.optim.AdamW(adamw, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]
    if muon:
        opts.append(Muon(muon, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, adjust_lr=cfg.muon_adjust_lr))
    return opts


def layerwise_methods(model, opts, cfg):
    """{name: controller} of the methods switched on; each one's step() writes group['lr_scale']."""
    methods = {"llr": LLR(model, opts, cfg.max_steps, cfg.llr_config)} if cfg.llr else {}
    if cfg.lanton:
        methods["lanton"] = LANTON(model, opts, cfg.lanton_config)
    return methods


def lr_mult(step, cfg):
    """Linear warmup to 1, then cosine to min_lr_ratio; every group's lr is peak * this * lr_scale."""
    warmup = cfg.warmup_steps  # resolved: never -1 here
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lrs(step, cfg, opts, methods):
    """The one place where learning rates are set: the schedule x each layerwise method's lr_scale.
    Returns {method: info} of the methods that recomputed at this step (per layer a measurement,
    LLR's alpha or LANTON's noise, and a multiplier)."""
    groups = [g for optimizer in opts for g in optimizer.param_groups]
    mult = lr_mult(step, cfg)
    for group in groups:
        group["lr"] = group["initial_lr"] * mult
    infos = {}
    for name, method in methods.items():
        if info := method.step(step):  # writes group['lr_scale'] on every group
            infos[name] = info
        for group in groups:
            group["lr"] *= group["lr_scale"]
    return infos


# ---- evaluation ----

def sample_tokenizer(meta):
    """The data's tokenizer, to print samples with; None (and a note) if it cannot be loaded, e.g. GPT-2
    shards offline: training never needed the ranks file, so it goes on without samples."""
    try:
        return meta_tokenizer(meta)
    except Exception as e:
        print(f"no samples: cannot load tokenizer {meta['tokenizer']!r} ({str(e).splitlines()[0][:120]})",
              flush=True)
        return None


def evaluate(step, model, wrapped, files, cfg, rank, world, amp, enc, seconds):
    """The validation loss (the mean over the first eval_steps batches of the split, dealt out to the
    processes in turn: the same batches whatever their number), the Hill alpha of every matrix and, with a
    tokenizer, a sample; the last two timed into seconds, as what evaluations add to training. Prints its
    line, returns its record."""
    device = model.lm_head.weight.device
    loader, loss = Loader(files, cfg.batch_size, cfg.seq_len), torch.zeros((), device=device)
    model.eval()
    with torch.no_grad():
        for i in range(cfg.eval_steps):
            x, y = loader.next_batch()  # every process reads every batch (cheap), and runs its own share
            if i % world == rank:
                with amp:
                    loss += wrapped(x.to(device), y.to(device))[1].float() / cfg.eval_steps
    if world > 1:
        dist.all_reduce(loss)
    model.train()
    record, t0 = {"step": step, "val_loss": loss.item()}, time.perf_counter()
    alpha = alphas(model, estimator=cfg.llr_config.estimator)  # every run, LLR or not (a collective)
    record["alphas"] = {n: a if math.isfinite(a) else None for n, a in alpha.items()}
    t1 = time.perf_counter()
    seconds["alphas"] += t1 - t0
    if enc:  # from the start of a document, with a generator of its own: the training RNG stays untouched
        start = torch.tensor([[enc.eot_token]], device=device)
        with amp:
            out = model.generate(start, cfg.sample_tokens, temperature=0.8, top_k=50,
                                 generator=torch.Generator(device=device).manual_seed(cfg.seed))
        record["sample"] = decode(enc, out[0, 1:].tolist())
        seconds["samples"] += time.perf_counter() - t1
    print0(f"step {step}/{cfg.max_steps} | val loss {record['val_loss']:.4f}"
           + (f" | sample {record['sample']!r}" if enc else ""))
    return record


def summarize(step, train_loss, val_loss, train_time, seconds, out_dir, **info):
    """train()'s return value and last console line: the losses, and the time inside the layerwise
    methods and what evaluations add (alphas, samples), also as shares of the training time."""
    share = {what: s / max(train_time, 1e-9) for what, s in seconds.items()}
    summary = {"step": step, "train_loss": train_loss, "val_loss": val_loss, "train_seconds": train_time,
               "out_dir": out_dir, **info}
    summary |= {f"{w}_seconds": s for w, s in seconds.items()}
    summary |= {f"{w}_fraction": f for w, f in share.items()}
    overhead = "".join(f", {w} {seconds[w]:.2f}s ({100 * share[w]:.1f}%)" for w in seconds)
    print0(f"done at step {step}: val loss {val_loss if val_loss is None else round(val_loss, 4)}, "
           f"{train_time:.1f}s training{overhead}; checkpoint in {out_dir}")
    return summary


# ---- the training loop ----

def forward_backward(wrapped, loader, accum, world, device, amp):
    """The gradient of one optimizer step, summed over accum micro-batches; returns the summed loss."""
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = (t.to(device, non_blocking=True) for t in loader.next_batch())
        if world > 1:  # all-reduce gradients only on the last micro-batch
            wrapped.require_backward_grad_sync = micro == accum - 1
        with amp:
            loss = wrapped(x, y)[1] / accum
        loss_sum += loss.detach().float()
        loss.backward()
    return loss_sum


def train(cfg):
    cfg = resolve(cfg)
    rank, world, device = compute_init(cfg)
    torch.manual_seed(cfg.seed)
    total, accum = step_tokens(cfg, world)
    data_dir, meta, train_files, val_files = open_data(cfg, world)
    loader = Loader(train_files, cfg.batch_size, cfg.seq_len, rank, world)

    # `model` is the bare module (checkpointed, analysed); `wrapped` the one the steps run through
    model_cfg = dataclasses.replace(PRESETS[cfg.preset], vocab_size=pad_vocab(meta["vocab_size"]),
                                    max_seq_len=cfg.seq_len)
    model = LLaMA(model_cfg, cfg.loss_chunk, cfg.checkpoint_blocks).to(device)
    opts = build_optimizers(model, cfg, fused=device.type == "cuda")
    methods = layerwise_methods(model, opts, cfg)
    state = {"model": model, "optimizers": opts, **methods, "loader": loader}
    step = load_checkpoint(cfg.out_dir, state, cfg, meta, device, RUN_ONLY) if cfg.resume else 0
    wrapped = torch.compile(model) if cfg.compile else model
    if world > 1:
        wrapped = wrap_ddp(wrapped, device)
    bf16 = uses_bf16(cfg, device.type)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    peak = peak_flops(device)

    print0(f"{cfg.preset}: {model.num_params() / 1e6:.2f}M parameters | "
           f"{cfg.optimizer}{' + LLR' * cfg.llr}{' + LANTON' * cfg.lanton} | {device} x{world} | "
           f"{total} tokens/step ({accum} accumulation) | data {data_dir} ({meta['tokenizer']})"
           + (" | no MFU: this GPU is not in common.PEAK_FLOPS" * (device.type == "cuda" and not peak)))
    enc = sample_tokenizer(meta) if rank == 0 and cfg.sample_tokens else None
    seconds = {"alphas": 0.0, **({"samples": 0.0} if enc else {})}  # what evaluations add to training
    metrics = Metrics(cfg, rank == 0)
    metrics.write(run_record(cfg, model, device, world, step, meta))
    start, stopping, train_time, val_loss, train_loss = step, False, 0.0, None, None
    with stop_signals() as signalled:
        try:
            while True:
                at_interval = cfg.eval_interval > 0 and step % cfg.eval_interval == 0
                last_step = (step == cfg.max_steps or stopping
                             or (cfg.stop_after > 0 and step - start == cfg.stop_after))
                # evaluate at every interval and at the end, but not again at the step a run resumes from
                if step == cfg.max_steps or (at_interval and not (cfg.resume and step == start)):
                    record = evaluate(step, model, wrapped, val_files, cfg, rank, world, amp, enc, seconds)
                    metrics.write(record)
                    val_loss = record["val_loss"]
                # checkpoint at every interval and on the way out
                if rank == 0 and step > start and (at_interval or last_step):
                    save_checkpoint(cfg.out_dir, state, device, step=step, meta=meta,
                                    config=dataclasses.asdict(cfg),
                                    model_config=dataclasses.asdict(model_cfg))  # for sample.py, export_hf.py
                if last_step:
                    break

                t0 = time.perf_counter()
                loss_sum = forward_backward(wrapped, loader, accum, world, device, amp)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                # one collective a step: mean loss and norm over processes, and whether any was signalled
                flag = torch.tensor(float(bool(signalled)), device=device)
                reduced = torch.stack([loss_sum, norm.float(), flag])
                if world > 1:
                    dist.all_reduce(reduced)
                train_loss, grad_norm = reduced[0].item() / world, reduced[1].item() / world
                stopping = reduced[2].item() > 0
                if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
                    raise FloatingPointError(f"non-finite loss {train_loss} or grad norm {grad_norm} at step "
                                             f"{step}; the last good checkpoint in {cfg.out_dir} is kept; "
                                             "try a lower --lr")

                for name, info in set_lrs(step, cfg, opts, methods).items():
                    metrics.write({"step": step, "method": name, **info})
                    label, key = ("alpha", "alphas") if name == "llr" else ("noise", "noise")
                    print0(layer_table(info[key], info["multipliers"], label=label))
                for optimizer in opts:
                    optimizer.step()
                    # DDP: zeroed in place, grads stay views into its buckets (no second copy; common.wrap_ddp)
                    optimizer.zero_grad(set_to_none=world == 1)
                if device.type == "cuda":
                    torch.cuda.synchronize()  # so that dt times the step, not its launch
                dt = time.perf_counter() - t0
                train_time += dt
                lr = cfg.lr * lr_mult(step, cfg)  # this step's base learning rate
                step += 1
                metrics.write({"step": step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                               "ms": 1000 * dt})
                if step % cfg.log_interval == 0 or step == cfg.max_steps:
                    mfu = peak and model.estimate_mfu(total / world / dt, cfg.seq_len, peak)
                    print0(f"step {step}/{cfg.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                           f"norm {grad_norm:.2f} | {1000 * dt:.0f} ms | {total / dt / 1000:.1f}k tok/s"
                           + (f" | mfu {100 * mfu:.1f}%" if peak else ""))
        except BaseException:
            metrics.close(failed=True, discard=step == start)  # failed before its first step: out_dir as it was
            compute_cleanup(failed=True)
            raise
        metrics.close()
        compute_cleanup()
    seconds = {m: c.seconds for m, c in methods.items()} | seconds
    return summarize(step, train_loss, val_loss, train_time, seconds, cfg.out_dir,
                     interrupted=signalled[0] if signalled else None, model=model)


# ---- command line ----

def memory_report(cfg):
    """--dry_run: model.estimate_memory of this run by part, per process (each rank's is the same; under
    torchrun, with DDP's re-bucketing)."""
    check_config(dataclasses.replace(cfg, device="cpu"))  # planning a GPU run needs no GPU
    vocab = pad_vocab(read_meta(cfg.data)["vocab_size"]) if cfg.data else PRESETS[cfg.preset].vocab_size
    model_cfg = dataclasses.replace(PRESETS[cfg.preset], vocab_size=vocab, max_seq_len=cfg.seq_len)
    bf16, ddp = uses_bf16(cfg, device_type(cfg)), int(os.environ.get("WORLD_SIZE", 1)) > 1  # as compute_init
    parts = estimate_memory(model_cfg, cfg.batch_size, cfg.seq_len, bf16, cfg.optimizer, cfg.loss_chunk,
                            cfg.checkpoint_blocks, cfg.lanton, ddp)
    head = (f"{cfg.preset} (vocabulary {vocab}), {cfg.batch_size} x {cfg.seq_len} tokens a micro-batch, "
            f"{'bfloat16 autocast' if bf16 else 'float32'}, {cfg.optimizer}{' + LANTON' * cfg.lanton}"
            f"{' under DDP' * ddp}: estimated peak memory a process")
    rows = [f"  {part:<20}{n / 1e9:8.2f} GB" for part, n in parts.items()]
    note = ("(total: the first four rows, plus the largest moment: a forward's end (activations, bf16 weight\n"
            "copies, loss in forward), a backward's start (activations, the copies not recomputed, the larger of\n"
            "logits and loss and a recomputed block) or DDP's re-bucketing; an estimate from the config: a GPU\n"
            "adds CUDA context, fragmentation)")
    return "\n".join([head, *rows, note])


def parse_args(argv):
    return cli.parse(TrainConfig, argv, prog="train.py", description=__doc__)


def command_line(cfg):  # the inverse of parse_args, as bench.py records it with every run
    return cli.command_line(cfg, "train.py")


def main(argv=None):
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        if cfg.dry_run:
            print0(memory_report(cfg))  # once under torchrun
            return 0
        summary = train(cfg)
    except (UsageError, FloatingPointError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    return 128 + summary["interrupted"] if summary["interrupted"] else 0  # the shell's death-by-signal code


if __name__ == "__main__":
    sys.exit(main())
