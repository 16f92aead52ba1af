"""
Train a LLaMA on CPU, one GPU, or many GPUs, with a uniform learning rate or with LLR.

    python train.py                                   # CPU demo: tiny model, embedded corpus
    python train.py --llr                             # the same with layerwise learning rates
    python train.py --preset=llama60m --data=data/fineweb10B --device=cuda
    torchrun --standalone --nproc_per_node=8 train.py --preset=llama60m --data=data/fineweb10B --llr
"""

import argparse
import dataclasses
import inspect
import json
import math
import os
import pickle
import platform
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import tiktoken
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from lanton import LANTON, LANTONConfig
from llr import LLR, LLRConfig, Muon, alphas, layer_table, param_groups, roles
from model import LLaMA, PRESETS, pad_vocab
# the shard format and the tokenizers, also importable from here (train.read_shard, train.get_tokenizer, ...)
from prepare_fineweb import (Parser, UsageError, build_corpus, get_tokenizer, list_shards,  # noqa: F401
                             read_meta, read_shard, write_shard)

# ---- data: the embedded corpus and the loader ----
# (the shard format and tokenizers are prepare_fineweb.py's)


def build_embedded_corpus(data_dir):
    """Python's own documentation (pydoc_data ships with CPython) as byte tokens: works offline anywhere."""
    from pydoc_data.topics import topics
    build_corpus(data_dir, "pydoc", (topics[k] for k in sorted(topics)), val_every=10)


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
            if self.world * B * T + 1 > len(self.tokens):
                raise ValueError(f"{self.files[self.shard]} holds {len(self.tokens)} tokens, "
                                 f"fewer than one step needs ({self.world * B * T + 1}); "
                                 "lower --batch_size or --seq_len")
        start = self.pos + self.rank * B * T
        buf = torch.from_numpy(self.tokens[start : start + B * T + 1].astype(np.int64))
        self.pos += self.world * B * T
        return buf[:-1].view(B, T), buf[1:].view(B, T)

    def state_dict(self):
        return {"shard": self.shard, "pos": self.pos}

    def load_state_dict(self, state):
        self.shard, self.pos = state["shard"], state["pos"]
        self.tokens = read_shard(self.files[self.shard])


def open_data(cfg, world):
    """The run's shards (the embedded corpus, built once under data/, if --data is empty), checked up
    front so that a bad directory or a too-short shard fails now, not at the first step or evaluation."""
    data_dir = cfg.data or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pydoc")
    if not cfg.data:
        build_embedded_corpus(data_dir)
    meta = read_meta(data_dir)
    train_files, val_files = list_shards(data_dir, "train"), list_shards(data_dir, "val")
    if not (train_files and val_files):
        raise UsageError(f"{data_dir} needs *_train_*.bin and *_val_*.bin shards; "
                         "make them with prepare_fineweb.py")
    need = world * cfg.batch_size * cfg.seq_len + 1  # one step of every process, and its last target
    for path in train_files + val_files:  # headers only: shards are memory-mapped
        try:
            n = len(read_shard(path))
        except ValueError as e:
            raise UsageError(str(e)) from None
        if n < need:
            raise UsageError(f"{path} holds {n} tokens, fewer than one step needs ({need}); "
                             "lower --batch_size or --seq_len")
    return data_dir, meta, train_files, val_files


def sample_tokenizer(meta):
    """The data's tokenizer, to print samples with; None (and a note) if it cannot be loaded, e.g.
    GPT-2 shards offline: training never needed the ranks file, so it goes on without samples."""
    try:
        return get_tokenizer(meta["tokenizer"])
    except Exception as e:
        print(f"no samples: cannot load tokenizer {meta['tokenizer']!r} ({str(e).splitlines()[0][:120]})",
              flush=True)
        return None


# ---- config and command line ----


@dataclass
class TrainConfig:
    # model and data
    preset: str = "tiny"              # model size: a key of model.PRESETS
    data: str = ""                    # directory of token shards; empty = the embedded pydoc corpus
    seq_len: int = 256                # tokens per sequence
    batch_size: int = 16              # sequences per micro-batch, per process
    total_batch_tokens: int = 0       # tokens per optimizer step; 0 = one micro-batch on every process
    seed: int = 1337                  # model init
    # optimization
    max_steps: int = 600              # length of the schedule
    optimizer: str = "adamw"          # adamw | muon (hidden matrices on Muon, the rest on AdamW)
    lr: float = 4e-3                  # AdamW peak learning rate (the CPU demo's tuned value: README, Results)
    min_lr_ratio: float = 0.1         # cosine decays to min_lr_ratio * lr
    warmup_steps: int = -1            # linear warmup; -1 = 10% of max_steps
    beta1: float = 0.9                # AdamW first-moment decay
    beta2: float = 0.95               # AdamW second-moment decay (the paper's code: torch's 0.999)
    weight_decay: float = 0.1         # decoupled, on 2-D weights only
    grad_clip: float = 1.0            # max global grad norm; 0 = no clipping
    muon_lr: float = 0.02             # Muon peak learning rate
    muon_adjust_lr: str = "original"  # Muon step-size rule: original | match_rms_adamw
    embed_head_lr: float = 1.0        # embedding and LM head at this multiple of --lr (a control; official: embed_lr)
    # LLR (arXiv 2605.22297); --llr_<field> sets that field of llr.LLRConfig
    llr: bool = False                 # layerwise learning rates from each matrix's heavy-tail alpha
    llr_config: LLRConfig = field(default_factory=LLRConfig)
    # LANTON (arXiv 2510.14009); --lanton_<field> sets that field of lanton.LANTONConfig
    lanton: bool = False              # LRs from each layer's gradient noise (with --llr: their product)
    lanton_config: LANTONConfig = field(default_factory=LANTONConfig)
    # run
    out_dir: str = ""                 # run directory; empty = out/<preset>-<optimizer>[-llr][-lanton]
    device: str = "auto"              # auto | cpu | cuda
    dtype: str = "auto"               # auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16
    compile: bool = False             # torch.compile the model
    eval_interval: int = 100          # evaluate and checkpoint every this many steps (and at the end)
    eval_steps: int = 10              # validation batches per evaluation
    log_interval: int = 10            # console line every this many steps
    sample_tokens: int = 64           # length of the sample printed and logged at each evaluation; 0 = off
    wandb: str = ""                   # also log to this Weights & Biases project (pip install wandb); empty = off
    resume: bool = False              # continue from out_dir/ckpt.pt
    stop_after: int = 0               # end this invocation after this many steps, with a checkpoint; 0 = off


# --llr_interval=40 sets cfg.llr_config.interval
NESTED = {"llr": "llr_config", "lanton": "lanton_config"}
CHOICES = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16"),
           "optimizer": ("adamw", "muon"), "muon_adjust_lr": ("original", "match_rms_adamw"),
           "preset": tuple(PRESETS)}


def field_docs(cls):
    """{field: (section, comment)} read from a config dataclass's source: a comment line opens a section,
    a field's trailing comment is its help. The config stays one readable block and --help cannot drift
    from it."""
    section, docs = "", {}
    for line in inspect.getsource(cls).splitlines()[2:]:
        code, _, comment = (x.strip() for x in line.partition("#"))
        if code.startswith("def "):
            break
        if not code:
            section = comment or section
        elif m := re.match(r"(\w+)\s*:", code):
            docs[m[1]] = (section, comment)
    return docs


def parse_bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"takes true or false, got {text!r}")


def build_parser():
    """argparse options generated from TrainConfig and the nested method configs, grouped by the
    config's sections."""
    p = Parser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
               allow_abbrev=False)
    sections, docs = {}, field_docs(TrainConfig)

    def add(name, typ, default, section, comment):
        group = sections.get(section) or sections.setdefault(section, p.add_argument_group(section))
        kw = dict(type=parse_bool, nargs="?", const=True, metavar="BOOL") if typ is bool else dict(type=typ)
        if typ is not bool and name not in CHOICES:
            kw["metavar"] = typ.__name__.upper()
        group.add_argument(f"--{name}", default=argparse.SUPPRESS, choices=CHOICES.get(name),
                           help=f"{comment} (default: {default!r})".replace("%", "%%"), **kw)

    for f in dataclasses.fields(TrainConfig):
        if f.name in NESTED.values():
            prefix = next(k for k, v in NESTED.items() if v == f.name)
            sub, sub_docs = f.default_factory(), field_docs(type(f.default_factory()))
            for g in dataclasses.fields(sub):
                add(f"{prefix}_{g.name}", g.type, getattr(sub, g.name), docs[f.name][0], sub_docs[g.name][1])
        else:
            add(f.name, f.type, f.default, *docs[f.name])
    return p


def parse_args(argv):
    given = vars(build_parser().parse_args(argv))
    cfg, nested = TrainConfig(), {attr: {} for attr in NESTED.values()}
    for key, value in given.items():
        prefix = key.split("_")[0]
        if prefix in NESTED and key != prefix:
            nested[NESTED[prefix]][key[len(prefix) + 1:]] = value
        else:
            setattr(cfg, key, value)
    for attr, kw in nested.items():  # rebuilt so the nested config validates its own values
        try:
            setattr(cfg, attr, dataclasses.replace(getattr(cfg, attr), **kw))
        except ValueError as e:
            raise UsageError(str(e)) from None
    return cfg


def command_line(cfg):
    """The inverse of parse_args: the train.py command of a config, naming each setting off its default."""
    args, default = [], TrainConfig()
    for f in dataclasses.fields(cfg):
        value, prefix = getattr(cfg, f.name), next((k for k, a in NESTED.items() if a == f.name), None)
        if prefix:  # a nested config: --llr_interval=17
            sub, sub_default = value, getattr(default, f.name)
            args += [f"--{prefix}_{g.name}={getattr(sub, g.name)}" for g in dataclasses.fields(sub)
                     if getattr(sub, g.name) != getattr(sub_default, g.name)]
        elif value != getattr(default, f.name):
            args.append(f"--{f.name}" if value is True else f"--{f.name}={value}")
    return shlex.join(["python", "train.py", *args])


def check_config(cfg):
    """Reject bad values early with a message naming the key and what is allowed."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise UsageError(f"--{key}={getattr(cfg, key)} is not allowed; "
                             f"choose one of {', '.join(allowed)}")
    for key in ("max_steps", "batch_size", "seq_len", "eval_steps", "log_interval"):
        if getattr(cfg, key) <= 0:
            raise UsageError(f"--{key} must be positive, got {getattr(cfg, key)}")
    for key in ("total_batch_tokens", "weight_decay", "grad_clip", "eval_interval", "stop_after",
                "sample_tokens"):
        if getattr(cfg, key) < 0:
            raise UsageError(f"--{key} must be >= 0, got {getattr(cfg, key)}")
    if not (cfg.lr > 0 and cfg.muon_lr > 0 and cfg.embed_head_lr > 0):
        raise UsageError("--lr, --muon_lr and --embed_head_lr must be positive")
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise UsageError(f"--beta1 and --beta2 must be in [0, 1), got {cfg.beta1}, {cfg.beta2}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise UsageError(f"--min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    if cfg.warmup_steps >= cfg.max_steps:
        raise UsageError(f"--warmup_steps={cfg.warmup_steps} must be smaller than "
                         f"--max_steps={cfg.max_steps}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device=cuda but no CUDA device is available; use --device=cpu")
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UsageError(f"--wandb={cfg.wandb} needs the wandb package: pip install wandb, "
                             "or leave --wandb out") from None
    if cfg.data and not os.path.isdir(cfg.data):
        raise UsageError(f"--data={cfg.data} is not a directory; make shards with prepare_fineweb.py "
                         "or leave --data out")


def step_tokens(cfg, world):
    """Tokens per optimizer step, and the gradient accumulation steps that make them up."""
    per_step = cfg.batch_size * cfg.seq_len * world  # one micro-batch on every process
    total = cfg.total_batch_tokens or per_step
    if total % per_step:
        raise UsageError(f"--total_batch_tokens={total} must be a multiple of "
                         f"batch_size*seq_len*processes={per_step}")
    return total, total // per_step


def resolve(cfg):
    """The config as logged and checkpointed (warmup_steps and out_dir resolved), checked against
    out_dir's contents."""
    check_config(cfg)
    warmup = cfg.warmup_steps if cfg.warmup_steps >= 0 else cfg.max_steps // 10
    out_dir = cfg.out_dir or os.path.join("out", f"{cfg.preset}-{cfg.optimizer}"
                                          + "-llr" * cfg.llr + "-lanton" * cfg.lanton)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if cfg.resume and not os.path.exists(ckpt_path):
        raise UsageError(f"--resume but {ckpt_path} does not exist; drop --resume to start a new run")
    if not cfg.resume and (os.path.exists(ckpt_path)
                           or os.path.exists(os.path.join(out_dir, "metrics.jsonl"))):
        raise UsageError(f"{out_dir} already holds a run; pass --resume to continue it, or another --out_dir")
    return dataclasses.replace(cfg, out_dir=out_dir, warmup_steps=warmup)


# ---- distributed, schedule, checkpoints ----


def compute_init(cfg):
    """Single process, or one process per device under torchrun (nccl on CUDA, gloo on CPU)."""
    rank, world, local = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                          int(os.environ.get("LOCAL_RANK", 0)))
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def print0(*args):
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun sets RANK: the console shows one copy of each line
        print(*args, flush=True)


def compute_cleanup():
    if dist.is_initialized():
        dist.barrier()  # gloo can abort if a peer tears down while another still talks
        dist.destroy_process_group()


def lr_mult(step, cfg):
    """Linear warmup to 1, then cosine to min_lr_ratio; every group's lr is peak * this * lr_scale."""
    warmup = cfg.warmup_steps  # resolved: never -1 here
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizers(model, cfg, fused):
    """One param group per tensor (param_groups) so layerwise multipliers can act on each matrix."""
    groups = param_groups(model, cfg.weight_decay)
    # hidden matrices go to Muon; embedding, head and vectors to AdamW (the rule LLR uses too)
    role = roles(model)
    muon = [g for g in groups if role[id(g["params"][0])] == "hidden"] if cfg.optimizer == "muon" else []
    adamw = [g for g in groups if not any(g is m for m in muon)]
    covered = [id(p) for g in muon + adamw for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters()), \
        "every parameter in exactly one group"
    # each group's peak lr: the optimizer's, or embedding and head at --embed_head_lr times AdamW's
    for g in adamw:
        g["initial_lr"] = cfg.lr * (cfg.embed_head_lr if role[id(g["params"][0])] in ("embed", "head") else 1)
    for g in muon:
        g["initial_lr"] = cfg.muon_lr
    opts = [torch.optim.AdamW(adamw, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]
    if muon:
        opts.append(Muon(muon, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, adjust_lr=cfg.muon_adjust_lr))
    return opts


def save_checkpoint(path, state, **info):
    """state: {key: an object with state_dict(), or a list of them}; info: plain values (step, config, ...).
    With load_checkpoint, the one place that knows a checkpoint's layout."""
    ckpt = {k: [o.state_dict() for o in v] if isinstance(v, list) else v.state_dict()
            for k, v in state.items()}
    tmp = path + ".tmp"
    torch.save({**ckpt, "rng": rng_state(), **info}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken ckpt.pt


def load_checkpoint(path, state, cfg, meta, device):
    """Restore every object of state (keyed as save_checkpoint saved them) and the RNGs; returns the step.
    The run must go on with the same settings (RUN_ONLY aside) and shards of the same tokenizer."""
    try:
        ckpt = torch.load(path, map_location=device)
    except pickle.UnpicklingError:
        raise UsageError(f"{path} was written by an older train.py (numpy RNG state, loads only with "
                         "weights_only=False); finish it with that version, or start a new run in "
                         "another --out_dir") from None
    if ckpt["meta"]["tokenizer"] != meta["tokenizer"]:
        raise UsageError(f"--data holds {meta['tokenizer']} tokens but {path} was trained on "
                         f"{ckpt['meta']['tokenizer']} tokens; point --data at shards of the same tokenizer")
    diff = [f"--{k}={ckpt['config'].get(k)} (now {v})" for k, v in dataclasses.asdict(cfg).items()
            if k not in RUN_ONLY and ckpt["config"].get(k) != v]
    if diff:
        raise UsageError(f"{path} was trained with other settings: {', '.join(diff)}; pass the same ones")
    for key, obj in state.items():
        for o, saved in zip(obj, ckpt[key]) if isinstance(obj, list) else [(obj, ckpt[key])]:
            o.load_state_dict(saved)
    set_rng_state(ckpt["rng"])
    return ckpt["step"]


def rng_state():
    # tensors and plain numbers only, so that torch.load(path) loads a checkpoint with its default
    # weights_only=True
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# settings a resumed run may change; every other setting must match its checkpoint's
RUN_ONLY = ("resume", "stop_after", "eval_interval", "eval_steps", "log_interval", "compile", "device",
            "out_dir", "sample_tokens", "wandb")


class Metrics:
    """out_dir/metrics.jsonl, one JSON record a line, written by rank 0 only, and with --wandb the numbers of
    every record with a step to a wandb run (each invocation one run; a resumed run's share a group). A run
    that fails before its first step calls close(discard=True) to take back what it wrote: its lines, and
    out_dir if it made it (no checkpoint exists yet, and another run's files are never touched)."""

    def __init__(self, cfg, master):
        out_dir = cfg.out_dir
        self.out_dir, self.path, self.file, self.wandb = out_dir, os.path.join(out_dir, "metrics.jsonl"), None, None
        if master and cfg.wandb:
            import wandb
            name = os.path.basename(os.path.abspath(out_dir))
            self.wandb = wandb.init(project=cfg.wandb, name=name, group=name, config=dataclasses.asdict(cfg))
        if master:
            self.made_dir = not os.path.isdir(out_dir)
            self.size = os.path.getsize(self.path) if os.path.exists(self.path) else None
            os.makedirs(out_dir, exist_ok=True)
            self.file = open(self.path, "a" if cfg.resume else "w")  # a resume appends

    def write(self, record):
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.wandb and "step" in record:  # the numbers, flattened: alphas/<matrix>, llr/multipliers/<matrix>
            flat, prefix = {}, f"{record['method']}/" if "method" in record else ""
            for key, value in record.items():
                for name, x in value.items() if isinstance(value, dict) else [("", value)]:
                    if key != "step" and isinstance(x, (int, float)):
                        flat[prefix + (f"{key}/{name}" if name else key)] = x
            self.wandb.log(flat, step=record["step"])

    def close(self, failed=False, discard=False):
        if not self.file or self.file.closed:
            return
        self.file.close()
        if discard:
            if self.size is None:
                os.remove(self.path)
            else:
                os.truncate(self.path, self.size)  # a resume appends: cut back to what was there
            if self.made_dir and not os.listdir(self.out_dir):
                os.rmdir(self.out_dir)
        if self.wandb:
            self.wandb.finish(exit_code=int(failed))  # wandb shows a failed run as failed


@contextmanager
def stop_signals():
    """SIGTERM (preemption) and SIGINT (Ctrl-C) are noted in the yielded list instead of raised, so
    that the loop finishes its step, writes a checkpoint and exits. (Signals reach only the main thread.)"""
    caught, old = [], {}

    def note(signum, frame):
        caught.append(signum)

    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def cpu_name():
    """The CPU's model name where Linux tells it (platform.processor() there is just 'x86_64')."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def run_record(cfg, model, device, world, step, meta):
    """The first line of metrics.jsonl (and of each resume): what runs, on what, from which step."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "tiktoken": tiktoken.__version__}
    return {"config": dataclasses.asdict(cfg), "model": dataclasses.asdict(model.cfg), "versions": versions,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "world_size": world, "params": model.num_params(), "start_step": step, "data": meta}


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense bf16


def peak_flops(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def decode(enc, ids):
    """Text of token ids. An id from the vocabulary's padding (never in the data, but an untrained model
    samples them) shows as U+FFFD; so do bytes that are not UTF-8."""
    pieces = (enc.decode_single_token_bytes(t) if t < enc.n_vocab else "\ufffd".encode() for t in ids)
    return b"".join(pieces).decode("utf-8", errors="replace")


def sample_text(model, enc, n_tokens, seed, amp):
    """n_tokens sampled from the start of a document (end-of-text, as before every document of the
    shards), with a generator of its own: the same random stream at every evaluation, and the training
    RNG untouched."""
    device = model.lm_head.weight.device
    idx = torch.tensor([[enc.eot_token]], device=device)
    with amp:
        out = model.generate(idx, n_tokens, temperature=0.8, top_k=50,
                             generator=torch.Generator(device=device).manual_seed(seed))
    return decode(enc, out[0, 1:].tolist())

# ---- the training loop ----


def estimate_loss(fwd, files, cfg, rank, world, device, amp):
    """Mean loss over eval_steps batches from the start of a split, averaged over processes."""
    loader, loss = Loader(files, cfg.batch_size, cfg.seq_len, rank, world), torch.zeros((), device=device)
    with torch.no_grad():
        for _ in range(cfg.eval_steps):
            x, y = loader.next_batch()
            with amp:
                loss += fwd(x.to(device), y.to(device))[1].float() / cfg.eval_steps
    if world > 1:
        dist.all_reduce(loss)
    return loss.item() / world


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


def train(cfg):
    cfg = resolve(cfg)
    rank, world, device = compute_init(cfg)
    master = rank == 0
    torch.manual_seed(cfg.seed)
    out_dir, ckpt_path = cfg.out_dir, os.path.join(cfg.out_dir, "ckpt.pt")
    B, T = cfg.batch_size, cfg.seq_len
    total, accum = step_tokens(cfg, world)
    data_dir, meta, train_files, val_files = open_data(cfg, world)
    train_loader = Loader(train_files, B, T, rank, world)

    # model, optimizers and the layerwise methods (each writes group['lr_scale']); `model` is the bare module
    mcfg = dataclasses.replace(PRESETS[cfg.preset], vocab_size=pad_vocab(meta["vocab_size"]), max_seq_len=T)
    model = LLaMA(mcfg).to(device)
    opts, controllers = build_optimizers(model, cfg, fused=device.type == "cuda"), {}
    if cfg.llr:
        controllers["llr"] = LLR(model, opts, cfg.max_steps, cfg.llr_config)
    if cfg.lanton:
        controllers["lanton"] = LANTON(model, opts, cfg.lanton_config)
    state = {"model": model, "optimizers": opts, **controllers, "loader": train_loader}
    step = load_checkpoint(ckpt_path, state, cfg, meta, device) if cfg.resume else 0
    fwd = torch.compile(model) if cfg.compile else model
    if world > 1:
        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    flops_peak = peak_flops(device)

    print0(f"{cfg.preset}: {model.num_params() / 1e6:.2f}M parameters | "
           f"{cfg.optimizer}{' + LLR' * cfg.llr}{' + LANTON' * cfg.lanton} | {device} x{world} | "
           f"{total} tokens/step ({accum} accumulation) | data {data_dir} ({meta['tokenizer']})")
    enc = sample_tokenizer(meta) if master and cfg.sample_tokens else None
    seconds = {"alphas": 0.0, **({"samples": 0.0} if enc else {})}  # what evaluations add to training, timed

    def evaluate():
        """Validation loss, the Hill alpha of every matrix and (rank 0) a sample; the last two timed as
        overhead."""
        model.eval()
        record = {"step": step, "val_loss": estimate_loss(fwd, val_files, cfg, rank, world, device, amp)}
        model.train()
        t0 = time.perf_counter()
        spectra = alphas(model)  # for every run, LLR or not (a collective under DDP)
        record["alphas"] = {n: a if math.isfinite(a) else None for n, a in spectra.items()}
        t1 = time.perf_counter()
        seconds["alphas"] += t1 - t0
        if enc:
            record["sample"] = sample_text(model, enc, cfg.sample_tokens, cfg.seed, amp)
            seconds["samples"] += time.perf_counter() - t1
        return record

    metrics = Metrics(cfg, master)
    metrics.write(run_record(cfg, model, device, world, step, meta))
    start, stopping, train_time, val_loss, loss_val = step, False, 0.0, None, None
    with stop_signals() as signalled:
        try:
            while True:
                at_interval = cfg.eval_interval > 0 and step % cfg.eval_interval == 0
                last_step = (step == cfg.max_steps or stopping
                             or (cfg.stop_after > 0 and step - start == cfg.stop_after))
                # evaluate at every interval and at the end, but not again at the step a run resumes from
                if step == cfg.max_steps or (at_interval and not (cfg.resume and step == start)):
                    record = evaluate()
                    val_loss = record["val_loss"]
                    print0(f"step {step}/{cfg.max_steps} | val loss {val_loss:.4f}"
                           + (f" | sample {record['sample']!r}" if enc else ""))
                    metrics.write(record)
                # checkpoint at every interval and on the way out
                if master and step > start and (at_interval or last_step):
                    save_checkpoint(ckpt_path, state, step=step, config=dataclasses.asdict(cfg), meta=meta,
                                    model_config=dataclasses.asdict(mcfg))  # for sample.py, export_hf.py
                if last_step:
                    break

                t0 = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                for micro in range(accum):
                    x, y = (t.to(device, non_blocking=True) for t in train_loader.next_batch())
                    if world > 1:  # all-reduce gradients only on the last micro-batch
                        fwd.require_backward_grad_sync = micro == accum - 1
                    with amp:
                        loss = fwd(x, y)[1] / accum
                    loss_sum += loss.detach().float()
                    loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                # one collective a step: the mean loss over processes, and whether any of them was signalled
                red = torch.stack([loss_sum, norm.float(),
                                   torch.tensor(float(bool(signalled)), device=device)])
                if world > 1:
                    dist.all_reduce(red)
                loss_val, norm_val, stopping = red[0].item() / world, red[1].item() / world, red[2].item() > 0
                if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
                    raise FloatingPointError(f"non-finite loss {loss_val} or grad norm {norm_val} "
                                             f"at step {step}; the last good checkpoint in {out_dir} "
                                             "is kept; try a lower --lr")
                # the one place where learning rates are set: the schedule x each layerwise method's lr_scale
                mult = lr_mult(step, cfg)
                for opt in opts:
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"] * mult
                for method, controller in controllers.items():
                    info = controller.step(step)  # writes group['lr_scale'] on every group
                    if info:
                        metrics.write({"step": step, "method": method, **info})
                        print0(layer_table(*info.values(), label=next(iter(info))))
                    for opt in opts:
                        for group in opt.param_groups:
                            group["lr"] *= group["lr_scale"]
                for opt in opts:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                train_time += dt
                step += 1
                lr0 = cfg.lr * mult  # the base learning rate of this step
                metrics.write({"step": step, "loss": loss_val, "lr": lr0, "grad_norm": norm_val,
                               "ms": 1000 * dt})
                if step % cfg.log_interval == 0 or step == cfg.max_steps:
                    mfu = (f" | mfu {100 * model.estimate_mfu(total / world / dt, T, flops_peak):.1f}%"
                           if flops_peak else "")
                    print0(f"step {step}/{cfg.max_steps} | loss {loss_val:.4f} | lr {lr0:.2e} | "
                           f"norm {norm_val:.2f} | {1000 * dt:.0f} ms | {total / dt / 1000:.1f}k tok/s{mfu}")
        except BaseException:
            metrics.close(failed=True, discard=step == start)  # failed before its first step: leave out_dir as we found it
            raise
        finally:
            metrics.close()
            compute_cleanup()

    seconds = {m: c.seconds for m, c in controllers.items()} | seconds
    return summarize(step, loss_val, val_loss, train_time, seconds, out_dir,
                     interrupted=signalled[0] if signalled else None, model=model)


def main(argv=None):
    try:
        return_code = 0
        summary = train(parse_args(sys.argv[1:] if argv is None else argv))
        if summary["interrupted"]:  # the shell's convention for death by signal
            return_code = 128 + summary["interrupted"]
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return_code = 2
    except FloatingPointError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return_code = 1
    return return_code


if __name__ == "__main__":
    sys.exit(main())
