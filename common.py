"""
The plumbing around a training run, kept out of train.py so that the loop reads on its own: the processes
(one, or one per device under torchrun), checkpoints that resume a run exactly, metrics.jsonl and wandb,
the run's first record, the console's table of per-layer multipliers, and the signals that end a run
with a checkpoint.

    rank, world, device = compute_init(cfg)       # torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or one process
    save_checkpoint(out_dir, state, device, step=step)  # state: {key: obj with state_dict(), or a list}
    step = load_checkpoint(out_dir, state, cfg, meta, device, run_only)
"""

import dataclasses
import json
import os
import platform
import re
import signal
import threading
from contextlib import contextmanager, suppress

import numpy as np
import tiktoken
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from cli import UsageError

# ---- processes ----

def device_type(cfg):  # --device=auto: cuda where there is one
    return "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"


def uses_bf16(cfg, device_type):  # --dtype=auto: bfloat16 autocast on cuda, float32 on cpu
    return cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device_type == "cuda")


def compute_init(cfg):
    """Single process, or one process per device under torchrun (nccl on CUDA, gloo on CPU)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = device_type(cfg) == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda and local_rank >= torch.cuda.device_count():
        raise UsageError(f"process {local_rank} of this machine has no GPU of its own "
                         f"({torch.cuda.device_count()} visible); start at most one process per GPU "
                         "(torchrun --nproc_per_node), or pass --device=cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def wrap_ddp(model, device):
    """DDP over the process group, with the gradients as views into its all-reduce buckets: one copy of
    them in memory instead of two while they are zeroed in place, never set to None (train.py), and the same
    sums (nothing here keeps a gradient past its step). No buffer is broadcast before each forward: the only
    ones, RoPE's, are the same on every rank."""
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               gradient_as_bucket_view=True, broadcast_buffers=False)


def compute_cleanup(failed=False):
    """Leave the process group: after a barrier at the end of a run (gloo can abort if a peer tears down while
    another still talks), at once after an error. A process that failed alone must not wait in a barrier
    while its peers wait for it in another collective: it exits, and they fail with it (gloo at once; under
    nccl, torchrun stops them when it sees a process fail)."""
    if dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


def print0(*args):
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun sets RANK: the console shows one copy of each line
        print(*args, flush=True)


LAYER_TYPES = [("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"), ("gate", "gate_proj"),
               ("up", "up_proj"), ("down", "down_proj"), ("embed", "embed_tokens"), ("head", "lm_head")]


def layer_table(values, multipliers, label="alpha"):
    """The console's table at a recompute of a layerwise method: one row per layer type (q, k, v, ... from the
    parameter name), mean, min and max over depth of a per-layer measurement ({name: value}; `label`: LLR's
    alpha, LANTON's noise) and of the multiplier."""
    def stats(xs):  # mean, min and max over depth, or dashes where this type has no value
        if not xs:
            return f"{'-':>11} {'-':>7} {'-':>7}"
        return f"{sum(xs) / len(xs):11.3f} {min(xs):7.3f} {max(xs):7.3f}"

    kind = {n: next((t for t, key in LAYER_TYPES if key in n), "other") for n in [*values, *multipliers]}
    lines = [f"{'layer':<6} {'n':>3} | {label[:6] + ' mean':>11} {'min':>7} {'max':>7} | "
             f"{'mult mean':>11} {'min':>7} {'max':>7}"]
    for t in [t for t, _ in LAYER_TYPES] + ["other"]:
        a, m = ([float(v) for n, v in d.items() if kind[n] == t] for d in (values, multipliers))
        if a or m:
            lines.append(f"{t:<6} {max(len(a), len(m)):>3} | {stats(a)} | {stats(m)}")
    return "\n".join(lines)


# ---- checkpoints ----

def rng_state(device):
    """The RNGs this process draws from: CPU, numpy, and on CUDA its own device's (a --device=cpu run never
    touches CUDA). Bytes and numbers, not tensors, so that torch.load's map_location moves none of them and
    its default weights_only=True loads them."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state().numpy().tobytes(),
            "numpy": [keys.astype(np.uint32).tobytes(), int(pos), int(has_gauss), float(cached)],
            "cuda": torch.cuda.get_rng_state(device).numpy().tobytes() if device.type == "cuda" else None}


def set_rng_state(rng, device):
    """rng_state's inverse, on whatever device this run resumes on. Under DDP every rank restores rank 0's
    states: every rank seeds the same (torch.manual_seed seeds every GPU) and draws the same, so rank 0's are
    every rank's; each rank sets its own device's generator only."""
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # a CPU ByteTensor, as torch asks
    torch.set_rng_state(as_tensor(rng["torch"]))
    keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state(("MT19937", np.frombuffer(keys, dtype=np.uint32).copy(), pos, has_gauss, cached))
    if device.type == "cuda" and rng["cuda"] is not None:  # a run begun on CPU keeps its CUDA seed
        torch.cuda.set_rng_state(as_tensor(rng["cuda"]), device)


# an optimizer's choice of kernel: that of the device it runs on, not of the one a checkpoint was written on
IMPLEMENTATION = ("fused", "foreach", "capturable")


def load_state(obj, saved):
    """obj.load_state_dict(saved); an optimizer keeps the implementation it was built with. The flags are
    set before loading, as they decide where the loaded state goes (fused AdamW's step count on the GPU)."""
    if isinstance(obj, torch.optim.Optimizer) and len(saved["param_groups"]) == len(obj.param_groups):
        groups = [{**s, **{k: g[k] for k in IMPLEMENTATION if k in g}}
                  for s, g in zip(saved["param_groups"], obj.param_groups)]
        saved = {**saved, "param_groups": groups}  # (other counts: load_state_dict says what is wrong)
    obj.load_state_dict(saved)


def save_checkpoint(out_dir, state, device, **info):
    """out_dir/ckpt.pt of state ({key: an object with state_dict(), or a list of them}), the RNGs of this
    process on device, and info (plain values: step, config, ...). With load_checkpoint, the one place that
    knows a checkpoint's layout."""
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = {k: [o.state_dict() for o in v] if isinstance(v, list) else v.state_dict()
            for k, v in state.items()}
    ckpt["rng"] = rng_state(device)
    try:
        torch.save({**ckpt, **info}, path + ".tmp")
    except BaseException:  # a full disk: the last checkpoint stays, and the space the partial one took is freed
        with suppress(OSError):
            os.remove(path + ".tmp")
        raise
    os.replace(path + ".tmp", path)  # a crash mid-write never leaves a broken ckpt.pt


def load_checkpoint(out_dir, state, cfg, meta, device, run_only):
    """Restore every object of state and the RNGs from out_dir/ckpt.pt, and return the step. The run must go
    on with the same settings (those in run_only aside) and shards of the same tokenizer; on any device."""
    path = os.path.join(out_dir, "ckpt.pt")
    ckpt = torch.load(path, map_location=device)
    if ckpt["meta"]["tokenizer"] != meta["tokenizer"]:
        raise UsageError(f"--data holds {meta['tokenizer']} tokens but {path} was trained on "
                         f"{ckpt['meta']['tokenizer']} tokens; point --data at shards of the same tokenizer")
    diff = [f"--{k}={ckpt['config'].get(k)} (now {v})" for k, v in dataclasses.asdict(cfg).items()
            if k not in run_only and ckpt["config"].get(k) != v]
    if diff:
        raise UsageError(f"{path} was trained with other settings: {', '.join(diff)}; pass the same ones")
    for key, obj in state.items():
        for o, saved in zip(obj, ckpt[key]) if isinstance(obj, list) else [(obj, ckpt[key])]:
            load_state(o, saved)
    set_rng_state(ckpt["rng"], device)
    written_on = "cpu" if ckpt["rng"]["cuda"] is None else "cuda"
    if uses_bf16(cfg, written_on) != uses_bf16(cfg, device.type):
        here, there = ("bfloat16", "float32") if uses_bf16(cfg, device.type) else ("float32", "bfloat16")
        print0(f"note: {path} was written on another kind of device; --dtype=auto trains in {here} here, "
               f"in {there} there (pass --dtype={there} to keep it)")
    return ckpt["step"]


# ---- logs ----

class Metrics:
    """out_dir/metrics.jsonl, one JSON record a line, written by rank 0 only, and with --wandb the numbers of
    every record with a step to a wandb run (each invocation one run; a resumed run's share a group). A run
    that fails before its first step calls close(discard=True) to take back what it wrote: its lines, and
    out_dir if it made it (no checkpoint exists yet, and another run's files are never touched)."""

    def __init__(self, cfg, master):
        self.out_dir, self.path = cfg.out_dir, os.path.join(cfg.out_dir, "metrics.jsonl")
        self.file, self.wandb = None, None
        if master and cfg.wandb:
            import wandb
            name = os.path.basename(os.path.abspath(cfg.out_dir))
            self.wandb = wandb.init(project=cfg.wandb, name=name, group=name, config=dataclasses.asdict(cfg))
        if master:
            self.made_dir = not os.path.isdir(cfg.out_dir)
            self.size = os.path.getsize(self.path) if os.path.exists(self.path) else None
            os.makedirs(cfg.out_dir, exist_ok=True)
            self.file = open(self.path, "a" if cfg.resume else "w")  # a resume appends

    def write(self, record):
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.wandb and "step" in record:  # the numbers, flattened: alphas/<name>, llr/multipliers/<name>
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


# dense bf16 tensor-core FLOP/s of the GPUs people rent (datasheets print twice these, "with sparsity"),
# matched in this order on torch.cuda.get_device_name; a GPU not listed (A10G, L40, H800, ...) has no MFU
PEAK_FLOPS = [
    (r"\bH100\b.*\bPCIe\b", 756e12),       # 'NVIDIA H100 PCIe'
    (r"\bH100 NVL\b", 835e12),             # 'NVIDIA H100 NVL'
    (r"\bH100\b.*\b(SXM|HBM3)\b", 989e12),  # 'NVIDIA H100 80GB HBM3': the SXM part
    (r"\bH200 NVL\b", 835e12),             # 'NVIDIA H200 NVL'
    (r"\bG?H200\b", 989e12),               # 'NVIDIA H200', 'NVIDIA GH200 480GB'
    (r"\bB200\b", 2250e12),                # 'NVIDIA B200'
    (r"\bA100\b", 312e12),                 # 'NVIDIA A100-SXM4-80GB', 'NVIDIA A100-PCIE-40GB', ...
    (r"\bA10$", 125e12),                   # 'NVIDIA A10' (not the A10G)
    (r"\bL40S$", 362e12),                  # 'NVIDIA L40S'
    (r"\bL4$", 121e12),                    # 'NVIDIA L4'
    (r"\bRTX 4090$", 165e12),              # 'NVIDIA GeForce RTX 4090' (fp32 accumulate)
]


def peak_flops(device):
    """The GPU's dense bf16 FLOP/s, for the console's MFU; None on CPU and on GPUs not in PEAK_FLOPS."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((flops for pattern, flops in PEAK_FLOPS if re.search(pattern, name)), None)


# ---- signals ----

@contextmanager
def stop_signals():
    """SIGTERM (preemption) and SIGINT (Ctrl-C) are noted in the yielded list instead of raised, so that
    the loop finishes its step, writes a checkpoint and exits. (Signals reach only the main thread.)"""
    caught, old = [], {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
               for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
