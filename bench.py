"""
Benchmarks. Every figure is measured by the run that prints it.

    python bench.py quality       # LLR against a tuned uniform LR, AdamW and Muon (hours on 2
                                  # cores; resumable)
    python bench.py cost          # time of the spectral diagnostic: ours against the official
                                  # route, and one LLR recompute beside busy processes
    python bench.py speed         # training throughput against transformers' LlamaForCausalLM;
                                  # Muon against torch.optim.Muon
    python bench.py all --quick   # all three with tiny settings, in under two minutes
    python bench.py gpu           # the README's 60M recipe on a CUDA GPU: tokens/s, MFU, peak
                                  # memory, uniform and LLR, eager and compiled (not in `all`)

Results go to results/ (JSON, markdown tables, PNG plots if matplotlib is installed).
"""

import argparse
import contextlib
import dataclasses
import gc
import glob
import hashlib
import json
import math
import os
import pathlib
import platform
import random
import signal
import statistics
import subprocess
import sys
import sysconfig
import threading
import time

import torch

try:
    import fcntl  # the run locks; POSIX only: elsewhere, run one benchmark process at a time
except ImportError:
    fcntl = None

import common
import lanton
import llr
import plot
import train
from cli import Parser, UsageError
from model import LLaMA, PRESETS, pad_vocab
from prepare_fineweb import build_corpus, get_tokenizer, list_shards

RESULTS = "results"
STDLIB = os.path.join("data", "stdlib")  # the benchmark's corpus, built on first use
BPE_VOCAB = 4096
# the same code and torch's, in a 4,096-token BPE
BPE = os.path.join("data", f"stdlib_torch_bpe{BPE_VOCAB}")

# ---- a corpus that does not repeat within a run: the Python standard library's own source ----


# The glob below reaches one level under the standard library's directory, and site-packages is one
# of those: its top-level modules are part of the corpus. These are the ones our machines held when
# the committed runs were made; any other package's module is left out, so that installing one does
# not change the corpus (RESULTS.md, protocol).
SITE_MODULES = {"_hypothesis_ftz_detector", "_hypothesis_globals", "_hypothesis_pytestplugin",
                "decorator", "isympy", "jsonpatch", "jsonpointer", "mypy_extensions", "pickleshare",
                "py", "pylab", "rfc3339_validator", "six", "typing_extensions", "typing_inspect",
                "xmltodict"}


def stdlib_files():
    """The .py files of the standard library's directory and of its direct subdirectories, tests
    excluded, and of site-packages only SITE_MODULES, in name order."""
    root = sysconfig.get_paths()["stdlib"]
    files = glob.glob(f"{root}/*.py") + glob.glob(f"{root}/*/*.py")
    site = os.path.join(root, "site-packages")
    return sorted(f for f in files if "/test" not in f[len(root):] and (
        os.path.dirname(f) != site or os.path.basename(f)[:-3] in SITE_MODULES))


def build_stdlib_corpus(data_dir):
    """Byte tokens of every .py file of the standard library (tests excluded), in a fixed shuffled
    order so that training does not walk the library alphabetically; every 20th file is
    validation."""
    files = stdlib_files()
    random.Random(0).shuffle(files)
    texts = (pathlib.Path(f).read_text("utf-8", "replace") for f in files)
    build_corpus(data_dir, "stdlib", texts, val_every=20)
    return data_dir


def build_bpe_corpus(data_dir, gpt2):
    """The paper's vocabulary share on a CPU: GPT-2's BPE cut to its first BPE_VOCAB - 1 ranks
    (still a BPE: every merge's parts rank lower) plus end-of-text, so embedding and head are half
    of tiny's parameters (58% at the paper's 60M). Over the source of the standard library and of
    the installed torch, shuffled, every 20th file validation: 30.7M training tokens at torch 2.13,
    three times what one epoch needs. gpt2: 'gpt2' (tiktoken downloads the ranks) or a copy of the
    ranks file."""
    import base64
    import tempfile
    if list_shards(data_dir, "train"):
        return data_dir
    files = stdlib_files()
    files += sorted(glob.glob(f"{os.path.dirname(torch.__file__)}/**/*.py", recursive=True))
    random.Random(0).shuffle(files)
    gpt2_ranks = get_tokenizer(gpt2)._mergeable_ranks
    ranks = sorted((r, b) for b, r in gpt2_ranks.items() if r < BPE_VOCAB - 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"gpt2_{BPE_VOCAB}.tiktoken")
        with open(path, "w") as f:
            f.writelines(f"{base64.b64encode(b).decode()} {r}\n" for r, b in ranks)
        texts = (pathlib.Path(f).read_text("utf-8", "replace") for f in files)
        build_corpus(data_dir, "stdlib_torch", texts, val_every=20, tokenizer=path)
    return data_dir


# ---- 1. quality: LLR against a properly tuned uniform learning rate ----
#
# Every finished run is one small JSON in results/runs/ (committed), named by a hash of what decides
# its result: the resolved training config, the data's bytes, and a fingerprint of the code's
# numerics. Change any of them and the run is redone; change nothing and the table is rebuilt from
# the files in seconds, on any machine.

# steps of 16 x 256 tokens: 5.1 tokens per parameter at tiny (1.09M), 5.5 at tiny_gqa (1.00M), 1.05
# at small (4.98M) and on the BPE corpus 5.1 at tiny (2.05M, half of them in embedding and head)
SIZES = {"tiny": 1360, "tiny_gqa": 1360, "small": 1280, "tiny_bpe": 2560}
GRIDS = {"lr": [5e-4, 1e-3, 2e-3, 4e-3], "muon_lr": [0.005, 0.01, 0.02, 0.04],
         "lanton": [0.01, 0.02, 0.04, 0.08],
         # LARS and LAMB step lr x ||w|| (baselines.py); blockwise's ratios put blocks at 4-10x lr
         "lars": [0.01, 0.02, 0.04, 0.08], "lamb": [0.005, 0.01, 0.02, 0.04],
         "blockwise": [2.5e-4, 5e-4, 1e-3, 2e-3]}
# settings that do not change a run's record (compile and the memory flags change its last bits)
NOT_IN_KEY = set(train.RUN_ONLY) - {"eval_interval", "eval_steps", "compile", "dtype", "loss_chunk",
                                    "checkpoint_blocks"}
# controls that enter a run's key only when set, so that adding one keys no run anew (llr_config's
# fields by their dotted name)
KEYED_IF_SET = {"embed_head_lr": 1.0, "norm_lr": 1.0, "loss_chunk": 0, "checkpoint_blocks": False,
                "blockwise": False, "llr.estimator": "hill"}
# the official absolute cadence, whatever the run length
FIXED_CADENCE = llr.LLRConfig(interval=40, ramp=20)
RETRY = 30  # seconds between looks at runs another benchmark process holds


def start_over(out):
    """Remove what an earlier, unfinished run left in out (its checkpoint, metrics and times)."""
    for name in ("ckpt.pt", "metrics.jsonl", "seconds.jsonl"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


@contextlib.contextmanager
def claim(out):
    """Hold out's lock while making its run, so that benchmark processes running side by side never
    make the same run (the OS releases the lock of a process that dies). Yields False, without
    waiting, where another process holds it. (Without fcntl every claim succeeds.)"""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if fcntl is None:
        yield True
        return
    with open(out + ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True  # released when f closes


def save_json(path, obj, **kw):
    """Written aside, then renamed: an interrupted benchmark never leaves half a result."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, **kw)
    os.replace(path + ".tmp", path)


def sha(path_or_bytes):
    if isinstance(path_or_bytes, bytes):
        data = path_or_bytes
    else:
        data = pathlib.Path(path_or_bytes).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


class Stopped(BaseException):
    """SIGTERM or SIGINT (Ctrl-C): main() exits with 128 + signum. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT raise Stopped wherever the benchmark is. Inside train() its own handlers
    take over: the run ends at the end of its step, with a checkpoint, and finished() raises
    Stopped."""
    def stop(signum, frame):
        raise Stopped(signum)
    old = {}
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def finished(summary, cfg):
    """train()'s summary of a run that reached cfg.max_steps; a run a signal stopped raises Stopped,
    so that a cut-off run is never taken for a finished one (cached, or in the fingerprint)."""
    if summary["interrupted"]:
        raise Stopped(summary["interrupted"])
    assert summary["step"] == cfg.max_steps, f"train() stopped at step {summary['step']}"
    return summary


# train.py's defaults as the fingerprint runs take them, pinned: a run's key holds its own resolved
# settings, so a changed default (the demo's --lr) changes no recorded run and must not change the
# fingerprint either
FP_SETTINGS = dict(preset="tiny", seed=1337, lr=3e-3, min_lr_ratio=0.1, warmup_steps=-1, beta1=0.9,
                   beta2=0.95, weight_decay=0.1, grad_clip=1.0, muon_lr=0.02,
                   muon_adjust_lr="original", device="cpu")


def code_fingerprint():
    """Losses of a few short runs that go through every numeric path (model, AdamW, Muon, LLR with
    its ramps, LANTON), rounded to 5 digits so that another CPU's last-bit differences do not count.
    An edit that changes what training computes changes them, and with them every run's cache
    key."""
    import tempfile
    losses = []
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        docs = (f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 40 for i in range(40))
        build_corpus(data, "fp", docs, val_every=10)
        methods = [dict(llr=True, llr_config=llr.LLRConfig(interval=2, ramp=1, window=1.0)),
                   dict(optimizer="muon", lanton=True, llr=True,
                        llr_config=llr.LLRConfig(interval=3, ramp=0, window=1.0),
                        lanton_config=lanton.LANTONConfig(every=2))]
        for i, kw in enumerate(methods):
            cfg = train.TrainConfig(data=data, out_dir=os.path.join(tmp, str(i)), max_steps=8,
                                    batch_size=2, seq_len=32, eval_interval=0, eval_steps=2,
                                    log_interval=10**9, sample_tokens=0, **FP_SETTINGS, **kw)
            summary = finished(train.train(cfg), cfg)
            losses += [summary["train_loss"], summary["val_loss"]]
    return sha(json.dumps([float(f"{x:.5g}") for x in losses]).encode())


def command(cfg):
    """The train.py command that makes a run from scratch on a CPU machine (out_dir, console cadence
    and device left to the user; the benchmark itself always trains on the CPU)."""
    fresh = dataclasses.replace(cfg, out_dir="", log_interval=train.TrainConfig.log_interval,
                                device=train.TrainConfig.device)
    return train.command_line(fresh)


def run_records(out):
    """The records of out/metrics.jsonl, one of each kind per step. A run resumed after a hard kill
    logs again the steps that the killed invocation had logged past its checkpoint: the last word
    counts."""
    records = {}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for r in map(json.loads, f):
            kind = r.get("method") or next(k for k in ("val_loss", "loss", "start_step") if k in r)
            records[kind, r.get("step", r.get("start_step"))] = r  # in the place of the first
    return list(records.values())


def make_run(cfg, ctx, key, settings, out):
    """Train one run into out and return its record: settings, curves, alphas, multipliers, final
    loss. A run that a signal cut off keeps its checkpoint, and the next benchmark resumes it."""
    resume = os.path.exists(os.path.join(out, "ckpt.pt"))
    if not resume:
        start_over(out)  # what a run killed before its first checkpoint left
    print(f"run {key}{' (resumed)' * resume}: {command(cfg)}", flush=True)
    try:
        summary = train.train(dataclasses.replace(cfg, out_dir=out, resume=resume))
    except FloatingPointError as e:  # diverged: a result (a sweep's far edge), recorded as an infinite loss
        print(f"run {key} diverged: {e}", flush=True)
        summary = None
    if summary:  # each invocation's times, so that a resumed run's shares count all of them
        with open(os.path.join(out, "seconds.jsonl"), "a") as f:
            f.write(json.dumps({k: v for k, v in summary.items() if k.endswith("_seconds")}) + "\n")
        finished(summary, cfg)
    records = run_records(out)
    times = []
    if os.path.exists(os.path.join(out, "seconds.jsonl")):
        with open(os.path.join(out, "seconds.jsonl")) as f:
            times = [json.loads(line) for line in f]
    train_s = sum(t["train_seconds"] for t in times)
    if os.path.exists(os.path.join(out, "ckpt.pt")):  # keep metrics.jsonl, drop the weights
        os.remove(os.path.join(out, "ckpt.pt"))
    evals = [r for r in records if "val_loss" in r]
    return {"key": key, "command": command(cfg), "settings": settings, "data": ctx["data"],
            "code": ctx["code"], "tokens": cfg.max_steps * cfg.batch_size * cfg.seq_len,
            "params": records[0]["params"], "val": [(r["step"], r["val_loss"]) for r in evals],
            "train": [(r["step"], r["loss"]) for r in records
                      if "loss" in r and r["step"] % 10 == 0],
            "alphas": [{"step": r["step"], "alphas": r["alphas"]} for r in evals if "alphas" in r],
            "llr": [r for r in records if r.get("method") == "llr"],
            "lanton": [r for r in records if r.get("method") == "lanton"],
            "final_val": summary["val_loss"] if summary else math.inf,
            "diverged_at": None if summary else max(r["step"] for r in records if "loss" in r),
            "seconds": sum(r["ms"] for r in records if "loss" in r) / 1000,
            "device": records[0]["device"],
            "overhead": {m: sum(t[f"{m}_seconds"] for t in times) / max(train_s, 1e-9)
                         for m in ("llr", "lanton") if f"{m}_seconds" in (summary or {})}}


def unset(settings, prefix=""):
    """settings without NOT_IN_KEY's and without the KEYED_IF_SET controls left at their defaults."""
    keep = lambda k, v: not (k in NOT_IN_KEY or k in KEYED_IF_SET and v == KEYED_IF_SET[k])
    return {k: unset(v, f"{prefix}{k[:-len('_config')]}.") if isinstance(v, dict) else v
            for k, v in settings.items() if keep(prefix + k, v)}


def run_once(cfg, ctx):
    """One training run, cached in results/runs/<name>-<hash>.json so that an interrupted benchmark
    resumes where it stopped. None, at once, where another benchmark process is making it."""
    settings = unset(dataclasses.asdict(cfg))
    digest = sha(json.dumps([settings, ctx["data"], ctx["code"]], sort_keys=True).encode())
    method = ("-blockwise" * cfg.blockwise + "-llr" * cfg.llr + "-farms" * (cfg.llr_config.estimator == "farms")
              + "-lanton" * cfg.lanton)
    lr = cfg.muon_lr if cfg.optimizer == "muon" else cfg.lr
    preset = cfg.preset + "_bpe" * (cfg.data == BPE)
    key = f"{preset}-{cfg.optimizer}{method}-{lr:g}-s{cfg.seed}-{digest}"
    path, out = os.path.join(RESULTS, "runs", key + ".json"), os.path.join(RESULTS, "out", key)
    if not os.path.exists(path):
        with claim(out) as mine:
            if not mine:
                return None
            # another process may have finished it since the first look
            if not os.path.exists(path):
                save_json(path, make_run(cfg, ctx, key, settings, out))
    with open(path) as f:
        return json.load(f)


def run_all(cfgs, ctx):
    """{name: run} of {name: config}. Runs another benchmark process is making are left for later
    and looked at again every RETRY seconds, so that processes side by side on one study share its
    runs."""
    todo, done, waiting = dict(cfgs), {}, 0
    while todo:
        for k in list(todo):
            if (run := run_once(todo[k], ctx)) is not None:
                done[k] = run
                del todo[k]
        if todo:
            if len(todo) != waiting:
                waiting = len(todo)
                print(f"waiting for {waiting} run(s) that another benchmark process is making",
                      flush=True)
            time.sleep(RETRY)
    return done


def mean_se(xs):
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return statistics.mean(xs), se


def steps_to_reach(curve, target):
    """Step at which a validation curve first reaches target, linear between evaluations (None if
    never)."""
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if v1 <= target:
            return s1 if v0 == v1 else s0 + (s1 - s0) * min(1.0, (v0 - target) / (v0 - v1))
    return None


def tune(cfg, knob, grid, ctx, args):
    """Sweep one setting over a factor-2 grid (sweep_seeds seeds each), widening while the best sits
    on an edge (at most two more points); the best then gets all seeds. Seeds count up from
    cfg.seed. Returns (best, {value: runs})."""
    def runs(values, n):
        done = run_all({(v, s): dataclasses.replace(cfg, **{knob: v}, seed=cfg.seed + s)
                        for v in values for s in range(n)}, ctx)
        return {v: [done[v, s] for s in range(n)] for v in values}
    grid = sorted(grid)
    sweep = runs(grid, args.sweep_seeds)
    for _ in range(2):
        best = min(sweep, key=lambda v: statistics.mean(r["final_val"] for r in sweep[v]))
        edge = grid[0] / 2 if best == grid[0] else grid[-1] * 2 if best == grid[-1] else None
        if edge is None or len(grid) == 1:
            break
        grid = sorted(grid + [edge])
        sweep |= runs([edge], args.sweep_seeds)
    best = min(sweep, key=lambda v: statistics.mean(r["final_val"] for r in sweep[v]))
    sweep |= runs([best], args.seeds)
    return best, sweep


def studies(args):
    """The comparisons, in the order they run. Each tunes one knob of its base config over a grid,
    then runs every variant at the tuned value with every seed. A variant maps the tuned value to
    the settings it changes. The base config may use what earlier studies found (`needs`); 'vs'
    names the study whose tuned run it is compared with (itself by default)."""
    def base(size, data=STDLIB, **kw):
        steps = args.steps or SIZES[size if data == STDLIB else f"{size}_bpe"]
        return train.TrainConfig(preset=size, data=data, max_steps=steps,
                                 batch_size=args.batch_size, seq_len=args.seq_len,
                                 eval_interval=max(1, steps // 20), eval_steps=args.eval_steps,
                                 log_interval=10**9, compile=bool(args.compile), device="cpu", **kw)

    with_llr = lambda tuned, **kw: dict(llr=True, **kw)
    # the same allocation with no extra total LR
    mean_one = lambda tuned: with_llr(tuned, llr_config=llr.LLRConfig(mean_one=True))
    # uniform, but embedding and head at LLR's r_max: LLR's second rule alone
    embed_head = lambda tuned: dict(embed_head_lr=3.0)
    embed_head_one = lambda tuned: with_llr(tuned, llr_config=llr.LLRConfig(embed_head="one"))
    half = lambda tuned: with_llr(tuned, lr=tuned / 2)
    half_muon = lambda tuned: with_llr(tuned, muon_lr=tuned / 2)
    fixed_cadence = lambda tuned: with_llr(tuned, llr_config=FIXED_CADENCE)
    hard = lambda tuned: with_llr(tuned, llr_config=llr.LLRConfig(ramp=0))
    farms = lambda tuned: with_llr(tuned, llr_config=llr.LLRConfig(estimator="farms"))
    farms_mean_one = lambda tuned: with_llr(tuned, llr_config=llr.LLRConfig(estimator="farms", mean_one=True))

    def baselines(parent, base, blockwise_variants={}):
        """The paper's layerwise baselines, each with its own LR sweep, read against parent's runs."""
        for method, changes, variants in (("LARS", dict(optimizer="lars"), {}),
                                          ("LAMB", dict(optimizer="lamb"), {}),
                                          ("blockwise", dict(blockwise=True), blockwise_variants)):
            yield dict(name=f"{parent}-{method.lower()}", method=method, needs=[parent], knob="lr",
                       base=lambda found, changes=changes: dataclasses.replace(base(found), **changes),
                       grid=GRIDS[method.lower()], variants=variants, vs=parent)

    demo = lambda found: train.TrainConfig(log_interval=10**9, device="cpu")
    yield dict(name="demo", base=demo, knob="lr", grid=GRIDS["lr"],
               variants={"LLR": with_llr,
                         "uniform at lr=1e-3 (under-tuned)": lambda tuned: dict(lr=1e-3),
                         "LLR at lr=1e-3 (under-tuned)": lambda tuned: with_llr(tuned, lr=1e-3),
                         "LLR with FARMS": farms, "LLR with FARMS, multipliers of mean 1": farms_mean_one,
                         # blockwise's norm gains (1x its base LR, 16x below the others' 4e-3) alone
                         "uniform, norm gains at 1/16 of the LR": lambda tuned: dict(norm_lr=1 / 16)})
    # and blockwise with its norm gains at uniform's 4e-3 (16x its tuned 2.5e-4); blockwise with one
    # ratio, the MLP's 6, for every matrix (embedding and head at 10, norm gains at 1, as blockwise)
    yield from baselines("demo", demo, {
        "blockwise, norm gains at 16x": lambda tuned: dict(norm_lr=16.0),
        "blockwise, every matrix at 6x": lambda tuned: dict(blockwise=False, lr=6 * tuned,
                                                            embed_head_lr=10 / 6, norm_lr=1 / 6)})
    yield dict(name="tiny-adamw", base=lambda found: base("tiny"), knob="lr", grid=GRIDS["lr"],
               variants={"LLR": with_llr, "LLR, fixed cadence 40/20": fixed_cadence,
                         "LLR, hard switching": hard,
                         "uniform at 3x LR": lambda tuned: dict(lr=3 * tuned),
                         "uniform, embed/head at 3x": embed_head,
                         "uniform at half the LR (under-tuned)": lambda tuned: dict(lr=tuned / 2),
                         "LLR with FARMS": farms})
    yield from baselines("tiny-adamw", lambda found: base("tiny"))
    yield dict(name="tiny-muon", needs=["tiny-adamw"],
               base=lambda found: base("tiny", optimizer="muon", lr=found["tiny-adamw"]),
               knob="muon_lr", grid=GRIDS["muon_lr"],
               variants={"LLR": with_llr, "LLR, embed/head at 1x": embed_head_one,
                         "LLR, multipliers of mean 1": mean_one, "LLR with FARMS": farms})
    yield dict(name="small-adamw", base=lambda found: base("small"), knob="lr", grid=GRIDS["lr"],
               variants={"LLR": with_llr, "LLR at half the LR": half,
                         "LLR, multipliers of mean 1": mean_one,
                         "LLR, fixed cadence 40/20": fixed_cadence})
    yield dict(name="tiny-adamw-official",
               base=lambda found: base("tiny", beta2=0.999, grad_clip=0.0), knob="lr",
               grid=GRIDS["lr"],
               variants={"LLR": with_llr, "LLR at half the LR": half,
                         "LLR, multipliers of mean 1": mean_one})
    yield dict(name="tiny-lanton", needs=["tiny-adamw", "tiny-muon"],
               base=lambda found: base("tiny", optimizer="muon", lanton=True,
                                       lr=found["tiny-adamw"]),
               knob="muon_lr", grid=GRIDS["lanton"], variants={}, vs="tiny-muon", method="LANTON")
    yield dict(name="tiny_gqa-adamw", needs=["tiny-adamw"], base=lambda found: base("tiny_gqa"),
               knob="lr", grid=lambda found: [found["tiny-adamw"]], variants={"LLR": with_llr})
    yield dict(name="small-muon", needs=["small-adamw"],
               base=lambda found: base("small", optimizer="muon", lr=found["small-adamw"]),
               knob="muon_lr", grid=GRIDS["muon_lr"],
               variants={"LLR": with_llr, "LLR at half the LR": half_muon,
                         "LLR, multipliers of mean 1": mean_one})
    yield dict(name="tiny_bpe-adamw", base=lambda found: base("tiny", data=BPE), knob="lr",
               grid=GRIDS["lr"],
               variants={"LLR": with_llr, "LLR, embed/head at 1x": embed_head_one,
                         "uniform, embed/head at 3x": embed_head,
                         "LLR, multipliers of mean 1": mean_one, "LLR with FARMS": farms})


# in the order they run (no config is built until a study runs)
STUDY_NAMES = [study["name"] for study in studies(None)]


def quality(args):
    build_stdlib_corpus(STDLIB)
    demo_data = os.path.join(os.path.dirname(os.path.abspath(train.__file__)), "data", "pydoc")
    train.build_embedded_corpus(demo_data)
    code = code_fingerprint()
    print(f"code fingerprint {code}, data {STDLIB} and {demo_data}", flush=True)
    # each corpus's shard hashes and the code's fingerprint: what every run's key holds
    contexts = {}

    def context(data_dir):
        if data_dir not in contexts:
            shards = list_shards(data_dir, "val") + list_shards(data_dir, "train")
            contexts[data_dir] = {"data": [sha(f) for f in shards], "code": code}
        return contexts[data_dir]

    plan = list(studies(args))
    needed = set(args.studies)
    for study in reversed(plan):  # what the wanted studies build on runs first
        if study["name"] in needed:
            needed |= set(study.get("needs", ()))
    found, results, rows, table = {}, {}, [], []
    for study in (study for study in plan if study["name"] in needed):
        name, knob = study["name"], study["knob"]
        cfg = study["base"](found)
        if cfg.data == BPE:
            build_bpe_corpus(BPE, args.gpt2)
        ctx = context(cfg.data or demo_data)
        grid = study["grid"](found) if callable(study["grid"]) else study["grid"]
        if args.quick:
            cfg = dataclasses.replace(cfg, max_steps=16, batch_size=4, seq_len=32, eval_interval=4,
                                      eval_steps=2, compile=False, sample_tokens=0)
            grid = grid[1:3] or grid
        best, sweep = tune(cfg, knob, grid, ctx, args)
        found[name] = best
        tuned = dataclasses.replace(cfg, **{knob: best})
        method = study.get("method", "uniform")
        variants = {f"{method} (tuned)": sweep[best]}
        results[name] = variants
        # a study built on needs its tuned value and runs, not its variants
        if name not in args.studies:
            continue
        cfgs = {(label, s): dataclasses.replace(tuned, **changes(best), seed=cfg.seed + s)
                for label, changes in study["variants"].items() for s in range(args.seeds)}
        done = run_all(cfgs, ctx)
        for label in study["variants"]:
            variants[label] = [done[label, s] for s in range(args.seeds)]
        ref_runs = next(iter(results[study.get("vs", name)].values()))
        ref_mean, ref_se = mean_se([r["final_val"] for r in ref_runs])
        per_param = ref_runs[0]["tokens"] / ref_runs[0]["params"]
        info = (f"{cfg.preset}, {cfg.max_steps} x {cfg.batch_size * cfg.seq_len} tokens "
                f"({per_param:.1f}/param)")
        for value in sorted(sweep):
            mean, se = mean_se([r["final_val"] for r in sweep[value]])
            seeds = len(sweep[value])
            table.append(f"| {name} | {method} sweep, {seeds} seed(s) | {knob}={value:g} | {mean:.4f}"
                         + (f" ± {se:.4f}" if seeds > 1 else "") + " | | | |")
        for label, runs in variants.items():
            rows.append(row(name, label, runs, ref_runs, ref_mean, ref_se, cfg.max_steps, info))
            table.append(table_line(rows[-1], runs, runs is ref_runs))
        vs = study.get("vs")  # a study compared with another's tuned runs draws them too
        plot_study(name, {f"{vs}: uniform (tuned)": ref_runs, **variants} if vs else variants)
    header = ["| study | run | peak LR | final val loss (mean ± s.e.) "
              "| vs tuned uniform (> 2 s.e.?) | speedup | LR-method time |",
              "|---|---|---|---|---|---|---|"]
    setup = {"seeds": args.seeds, "sweep_seeds": args.sweep_seeds, "batch_size": args.batch_size,
             "seq_len": args.seq_len, "eval_steps": args.eval_steps, "compile": args.compile,
             "code": code}
    return {"rows": rows, "table": "\n".join(header + table), "tuned": found, "setup": setup}


def row(study, label, runs, ref_runs, ref_mean, ref_se, max_steps, info):
    """A variant's result against its study's tuned uniform runs: the mean final loss and its s.e.,
    the difference and whether it exceeds 2 s.e., the speedup to the reference's loss, the LR
    methods' time. The speedup compares the steps at which the two seed-mean validation curves first
    reach the reference's final loss: max_steps for the reference, unless its curve dips below that
    loss earlier (validation loss can rise and fall late in training)."""
    finals = [r["final_val"] for r in runs]
    mean, se = mean_se(finals)
    is_ref = runs is ref_runs
    diff_se = math.sqrt(se**2 + ref_se**2)
    seed_mean = lambda rs: [(s, statistics.mean(r["val"][i][1] for r in rs))
                            for i, (s, _) in enumerate(rs[0]["val"])]
    reach = steps_to_reach(seed_mean(runs), ref_mean)
    ref_reach = steps_to_reach(seed_mean(ref_runs), ref_mean) or max_steps
    settings = runs[0]["settings"]
    return {"study": study, "variant": label,
            "setting": {k: settings[k] for k in ("lr", "muon_lr")}, "mean": mean, "se": se,
            "diff": mean - ref_mean,
            "significant": abs(mean - ref_mean) > 2 * diff_se,
            "speedup": ref_reach / reach if reach and not is_ref else None,
            "overhead": statistics.mean(sum(r["overhead"].values()) for r in runs),
            "seeds": len(runs), "finals": finals, "info": info,
            "commands": [r["command"] for r in runs]}


def table_line(result, runs, is_ref):
    """The markdown table's line of a variant's row."""
    settings, mean, speedup = runs[0]["settings"], result["mean"], result["speedup"]
    lr = f"lr={settings['lr']:g}"
    if settings["optimizer"] == "muon":
        lr += f", muon_lr={settings['muon_lr']:g}"
    significant = "yes" if result["significant"] else "no"
    verdict = "reference" if is_ref else f"{result['diff']:+.4f} ({significant})"
    gain = "%.2fx" % speedup if speedup else "" if is_ref else "< 1x"
    return (f"| {result['study']} | {result['variant']}, {len(runs)} seeds | {lr} | {mean:.4f} ± "
            f"{result['se']:.4f} | {verdict} | {gain} | {100 * result['overhead']:.1f}% |")


def plot_study(name, variants):
    """With plot.py's functions: the seed-mean loss curves of every variant
    (results/curves_<study>.png), and how each matrix's alpha moved in the first seed of the tuned
    run and of LLR, with LLR's multipliers (results/heatmap_<study>.png). A run file without alphas
    at its evaluations shows LLR's own records."""
    if not (plt := plot.pyplot()):
        return
    mean = lambda runs, key: [(s, statistics.mean(r[key][i][1] for r in runs))
                              for i, (s, _) in enumerate(runs[0][key])]
    curves = [{"name": f"{label} ({len(runs)} seeds)",
               "tokens_per_step": runs[0]["tokens"] // runs[0]["settings"]["max_steps"],
               "train": mean(runs, "train"), "val": mean(runs, "val")}
              for label, runs in variants.items()]
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    plot.draw_losses(ax, curves)
    # from a quarter of the run on
    quarter = [v for c in curves for s, v in c["val"] if s >= c["val"][-1][0] / 4]
    ax.set(ylim=(min(quarter) - 0.02, max(quarter) + 0.02), title=f"{name} (mean over seeds)")
    fig.savefig(os.path.join(RESULTS, f"curves_{name}.png"), dpi=120)
    plt.close(fig)
    shown = [{"name": label, "alphas": runs[0]["alphas"] or runs[0]["llr"], "llr": runs[0]["llr"],
              "lanton": runs[0]["lanton"]}
             for label, runs in variants.items()
             if label.endswith("(tuned)") or label in ("LLR", "LLR with FARMS")]
    shown = [r for r in shown if r["alphas"]]
    if shown:
        height = 0.09 * len(shown[0]["alphas"][0]["alphas"]) * len(shown) + 2 * len(shown)
        fig = plt.figure(figsize=(12, height), layout="constrained")
        for sub, run in zip(fig.subfigures(len(shown), 1, squeeze=False)[:, 0], shown):
            plot.draw_run(sub, run)
        fig.savefig(os.path.join(RESULTS, f"heatmap_{name}.png"), dpi=120)
        plt.close(fig)


# ---- 2. cost of the spectral diagnostic ----


def official_alphas(weights, xmin_pos=2.0):
    """The official route: one float32 svdvals per matrix in a Python loop, then Hill at the
    median."""
    out = []
    for w in weights:
        eigs = torch.linalg.svdvals(w.float()).pow(2).sort().values
        out.append(llr.hill_alpha(eigs, xmin_pos))
    return out


def hidden_shapes(preset):
    """(name, shape) of the hidden matrices of a preset (no embedding, no head), without allocating
    them."""
    with torch.device("meta"):
        return [(n, tuple(p.shape)) for n, p in LLaMA(PRESETS[preset]).named_parameters()
                if p.ndim == 2 and "embed" not in n and "lm_head" not in n]


# a CPU burner: torch matmuls on 2 threads until killed or past its deadline (argv[1] seconds)
BURN = """import sys, time, torch
torch.set_num_threads(2)
a, end = torch.randn(512, 512), time.monotonic() + float(sys.argv[1])
print("burning", flush=True)
while time.monotonic() < end:
    a @ a
"""


@contextlib.contextmanager
def busy_cpu(n, deadline=600):
    """n CPU-burning processes beside this one, each in a process group of its own, killed when the
    block ends however it ends (and ending by themselves at the deadline should this process die).
    Yields their pids once all of them burn."""
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BURN, str(deadline)],
                                          stdout=subprocess.PIPE, text=True,
                                          start_new_session=True))
        for p in procs:
            p.stdout.readline()  # "burning" (or nothing, if it died)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            p.stdout.close()


def recompute_seconds(preset, reps, estimator="hill"):
    """Median seconds of one LLR recompute (alphas of every matrix, then the map) of a freshly
    initialised preset, as train.py's controller makes it."""
    model = LLaMA(PRESETS[preset])
    opt = torch.optim.AdamW(llr.param_groups(model, 0.1))
    times = []
    for _ in range(reps):
        ctrl = llr.LLR(model, opt, total_steps=1000, cfg=llr.LLRConfig(estimator=estimator))
        t0 = time.perf_counter()
        ctrl.step(0)  # a new controller recomputes at its first step
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def recompute_under_load(presets, reps):
    """One LLR recompute on the CPU as it is, then with two processes burning 2 threads each beside
    it: the spectra run on one thread, so that a busy CPU slows them no more than it must."""
    rows = {}
    for preset in presets:
        recompute_seconds(preset, 1)  # warm up
        quiet = recompute_seconds(preset, reps)
        with busy_cpu(2):
            busy = recompute_seconds(preset, reps)
        rows[preset] = {"quiet_ms": 1000 * quiet, "busy_ms": 1000 * busy, "ratio": busy / quiet}
        print(f"one LLR recompute of {preset}: {1000 * quiet:.1f} ms as the CPU is, "
              f"{1000 * busy:.1f} ms beside two busy processes ({busy / quiet:.2f}x)", flush=True)
    return rows


def cost(args):
    rows = {}
    for preset in args.cost_presets:
        shapes = hidden_shapes(preset)
        if args.quick:
            shapes = shapes[: 7 * 2]  # two blocks
        gen = torch.Generator().manual_seed(0)
        weights = {n.replace(".", "_"): torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02)
                   for n, s in shapes}
        holder = torch.nn.ParameterDict(weights)
        ctrl = llr.LLR(holder, torch.optim.SGD(llr.param_groups(holder), lr=1.0), total_steps=1)
        t0 = time.perf_counter()
        # the controller's own route: batched by shape, Gram + eigvalsh
        ours = list(ctrl.step(0)["alphas"].values())
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = official_alphas(list(holder.values()))
        t_ref = time.perf_counter() - t0
        rel = max(abs(a - b) / abs(b) for a, b in zip(ours, ref))
        rows[preset] = {"matrices": len(shapes), "ours_s": t_ours, "official_s": t_ref,
                        "ratio": t_ref / t_ours, "max_rel_diff": rel}
        print(f"ESD + Hill alpha of {len(shapes)} matrices of {preset}: ours {t_ours:.2f}s, "
              f"official {t_ref:.2f}s, {t_ref / t_ours:.1f}x faster, alphas agree to {rel:.1e}",
              flush=True)
    rows["llr_recompute_under_load"] = recompute_under_load(args.recompute_presets, args.reps)
    rows["farms_recompute"] = {}
    for preset in args.recompute_presets:  # the shape-fair alpha: 81 windows a matrix
        hill, farms = (recompute_seconds(preset, args.reps, e) for e in ("hill", "farms"))
        rows["farms_recompute"][preset] = {"hill_ms": 1000 * hill, "farms_ms": 1000 * farms,
                                           "ratio": farms / hill}
        print(f"one LLR recompute of {preset}: {1000 * hill:.1f} ms with the plain alpha, "
              f"{1000 * farms:.1f} ms with FARMS ({farms / hill:.1f}x)", flush=True)
    # one recompute inside a real training run of the CPU preset, and its share of training time
    # (LANTON's too)
    steps = 40 if args.quick else 200
    for method, kw in (("llr", {"llr": True}), ("lanton", {"lanton": True, "optimizer": "muon"})):
        out = os.path.join(RESULTS, "out", f"cost-{method}-{steps}")
        start_over(out)
        small = {"batch_size": 4, "seq_len": 64} if args.quick else {}
        cfg = train.TrainConfig(out_dir=out, max_steps=steps, eval_interval=0,
                                log_interval=10**9, **kw, **small)
        summary = finished(train.train(cfg), cfg)
        lines = open(os.path.join(out, "metrics.jsonl"))
        n = len([line for line in lines if f'"method": "{method}"' in line])
        seconds, fraction = summary[f"{method}_seconds"], summary[f"{method}_fraction"]
        rows[f"train_tiny_{method}"] = {"steps": steps, "refreshes": n, "seconds": seconds,
                                        "train_s": summary["train_seconds"],
                                        "per_refresh_s": seconds / max(1, n), "fraction": fraction}
        print(f"tiny, {steps} steps with --{method}{' (Muon)' if method == 'lanton' else ''}: "
              f"{n} refreshes, {seconds / max(1, n) * 1000:.1f} ms each, "
              f"{100 * fraction:.2f}% of training time", flush=True)
    return rows


# ---- 3. speed: our model against transformers' Llama, our Muon against torch.optim.Muon ----


def hf_twin(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM
    hf_cfg = LlamaConfig(hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size,
                         max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                         rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                         attention_bias=False, mlp_bias=False)
    hf_cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(hf_cfg)


def timed_alternately(fns, reps):
    """Median seconds of each function, run in turn so that machine noise hits both alike."""
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(args):
    rows = {}
    try:
        import transformers  # noqa: F401  (requirements-dev.txt)
    except ImportError:
        print("transformers is not installed (pip install -r requirements-dev.txt): "
              "model comparison skipped", flush=True)
        args.speed_presets = []
    for preset in args.speed_presets:
        cfg = dataclasses.replace(PRESETS[preset], max_seq_len=args.seq_len)
        torch.manual_seed(0)
        ours, hf = LLaMA(cfg), hf_twin(cfg)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
        x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len))
        opt_ours, opt_hf = torch.optim.AdamW(ours.parameters()), torch.optim.AdamW(hf.parameters())

        def step(model, opt, hf_api):
            loss = model(input_ids=x, labels=x).loss if hf_api else model(x, x)[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns = {"ours": lambda: step(ours, opt_ours, False),
               "transformers": lambda: step(hf, opt_hf, True)}
        if args.compile:  # what --compile buys (the same weights, through torch.compile)
            compiled = torch.compile(ours)
            fns["ours, compiled"] = lambda: step(compiled, opt_ours, False)
        timed_alternately(fns, 2)  # warm up (and compile)
        t = timed_alternately(fns, args.reps)
        tok = args.batch_size * args.seq_len
        rows[preset] = {"ours_tok_s": tok / t["ours"], "hf_tok_s": tok / t["transformers"],
                        "ratio": t["transformers"] / t["ours"], "threads": torch.get_num_threads(),
                        "batch": [args.batch_size, args.seq_len]}
        note = ""
        if args.compile:
            rows[preset] |= {"compiled_tok_s": tok / t["ours, compiled"],
                             "compile_speedup": t["ours"] / t["ours, compiled"]}
            note = (f", ours compiled {tok / t['ours, compiled'] / 1000:.1f}k tok/s "
                    f"({rows[preset]['compile_speedup']:.2f}x eager)")
        print(f"{preset} train step, {args.batch_size}x{args.seq_len} tokens, float32, "
              f"{torch.get_num_threads()} threads: ours {tok / t['ours'] / 1000:.1f}k tok/s, "
              f"transformers {tok / t['transformers'] / 1000:.1f}k tok/s, "
              f"ratio {rows[preset]['ratio']:.2f}x{note}", flush=True)
    # Muon: one optimizer step over the hidden matrices of a preset, ours against torch.optim.Muon
    shapes = [s for _, s in hidden_shapes(args.muon_preset)]
    params = [[torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes] for _ in range(2)]
    for group in params:
        for p in group:
            p.grad = torch.randn_like(p)
    opts = {"ours": llr.Muon([{"params": [p]} for p in params[0]], lr=0.02),
            "torch.optim.Muon": torch.optim.Muon(params[1], lr=0.02, weight_decay=0.0,
                                                 adjust_lr_fn="original")}
    t = timed_alternately({k: o.step for k, o in opts.items()}, args.reps)
    rows["muon"] = {"preset": args.muon_preset, "matrices": len(shapes),
                    **{f"{k}_ms": 1000 * v for k, v in t.items()}}
    print(f"Muon step over the {len(shapes)} hidden matrices of {args.muon_preset}: ours "
          f"{1000 * t['ours']:.1f} ms, torch.optim.Muon {1000 * t['torch.optim.Muon']:.1f} ms",
          flush=True)
    return rows


# ---- 4. gpu: the README's 60M recipe on this machine's GPU ----

T5_VOCAB = pad_vocab(32100)  # the recipe's data: T5's 32,100 tokens, padded as train.py pads them
RECIPE_STEPS = 3200  # the recipe's run length, which sets LLR's cadence: a recompute every 40 steps


class RandomTokens:
    """Micro-batches of uniformly random tokens on the CPU, handed over as train.Loader hands them:
    no data to prepare, and the same copy to the device every step as a real run."""

    def __init__(self, batch_size, seq_len, vocab, n=8):
        g = torch.Generator().manual_seed(0)
        self.batches = [torch.randint(0, vocab, (2, batch_size, seq_len), generator=g)
                        for _ in range(n)]
        self.i = 0

    def next_batch(self):
        self.i += 1
        return tuple(self.batches[self.i % len(self.batches)])  # inputs, targets


def gpu_step(preset, batch_size, seq_len, device, use_llr=False, compile=False, vocab=T5_VOCAB):
    """(model, step): step() runs one optimizer step of the recipe on device and returns its loss:
    one micro-batch of random tokens through train.py's own pieces (its model, optimizers and LLR;
    forward and backward in bf16 autocast on CUDA), in its loop's order."""
    cfg = train.TrainConfig(preset=preset, batch_size=batch_size, seq_len=seq_len,
                            max_steps=RECIPE_STEPS, warmup_steps=RECIPE_STEPS // 10, lr=6e-4, llr=use_llr,
                            device=device.type)
    torch.manual_seed(cfg.seed)
    model_cfg = dataclasses.replace(PRESETS[preset], vocab_size=vocab, max_seq_len=seq_len)
    model = LLaMA(model_cfg).to(device)
    opts = train.build_optimizers(model, cfg, fused=device.type == "cuda")
    methods = train.layerwise_methods(model, opts, cfg)
    wrapped = torch.compile(model) if compile else model
    bf16 = common.uses_bf16(cfg, device.type)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    data, t = RandomTokens(batch_size, seq_len, vocab), [0]

    def step():
        loss = train.forward_backward(wrapped, data, 1, 1, device, amp)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        loss = loss.item()  # the loop's host sync, before the layerwise methods
        train.set_lrs(t[0], cfg, opts, methods)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        t[0] += 1
        return loss
    return model, step


def timed(step, warmup, steps, device):
    """Seconds of `steps` calls of step() after `warmup` untimed ones (compilation, the optimizer's
    first state), and the peak bytes allocated on the GPU from the first call on."""
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    torch.cuda.synchronize(device)
    assert all(map(math.isfinite, losses)), "a non-finite loss"
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device)


def gpu(args):
    """Tokens/s, MFU and peak memory of the README's recipe on this machine's GPU (llama60m, T5's
    vocabulary, 1024-token sequences, 32 a micro-batch or half as many until they fit), uniform AdamW
    and with LLR, eager and (--compile=1) compiled. LLR recomputes every 40 steps, as in the first
    20% of the recipe's run."""
    device, T = torch.device("cuda"), 1024
    name, peak = torch.cuda.get_device_name(device), common.peak_flops(device)
    steps, warmup, batch_size = (10, 2, 4) if args.quick else (args.steps or 300, 10, 32)
    with torch.device("meta"):  # its FLOPs a token, nothing allocated
        shape = LLaMA(dataclasses.replace(PRESETS["llama60m"], vocab_size=T5_VOCAB, max_seq_len=T))
    rows = []
    for use_llr in (False, True):
        for compile in (False, True)[:1 + args.compile]:
            variant = f"{'LLR' if use_llr else 'uniform'} AdamW, {'compiled' if compile else 'eager'}"
            while True:
                try:
                    step = gpu_step("llama60m", batch_size, T, device, use_llr, compile)[1]
                    seconds, peak_bytes = timed(step, warmup, steps, device)
                    break
                except torch.cuda.OutOfMemoryError:
                    if batch_size == 1:
                        raise
                    print(f"{variant}: out of memory at {batch_size} sequences a micro-batch, "
                          f"trying {batch_size // 2}", flush=True)
                    batch_size //= 2
                finally:  # this variant's model, optimizer state and compiled code leave the GPU
                    step = None
                    torch._dynamo.reset()
                    gc.collect()
                    torch.cuda.empty_cache()
            tok_s = steps * batch_size * T / seconds
            mfu = peak and shape.estimate_mfu(tok_s, T, peak)
            rows.append({"variant": variant, "llr": use_llr, "compile": compile,
                         "batch": [batch_size, T], "tok_s": tok_s, "mfu": mfu,
                         "peak_gb": peak_bytes / 1e9})
            print(f"{variant}: {tok_s / 1000:.1f}k tok/s" + (f", MFU {100 * mfu:.1f}%" if peak else "")
                  + f", peak {peak_bytes / 1e9:.2f} GB", flush=True)
    table = [f"{name}: llama60m with T5's vocabulary ({shape.num_params() / 1e6:.1f}M parameters), "
             f"bf16 autocast, {steps} steps timed after {warmup}"
             + ("" if peak else "; no MFU: this GPU is not in common.PEAK_FLOPS"), "",
             "| variant | micro-batch | tokens/s | MFU | peak memory |", "|---|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['batch'][0]} x {T} | {r['tok_s'] / 1000:.1f}k | "
              + (f"{100 * r['mfu']:.1f}%" if peak else "-") + f" | {r['peak_gb']:.2f} GB |"
              for r in rows]
    return {"device": name, "peak_flops": peak, "steps": steps, "warmup": warmup, "rows": rows,
            "table": "\n".join(table)}


# ---- command line ----


def names(allowed):
    """argparse type: a comma-separated list, each item one of allowed (a typo is an error, not
    silently ignored)."""
    def parse(text):
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad) or 'empty list'}; "
                                             f"choose from {', '.join(allowed)}")
        return items
    return parse


def main(argv=None):
    p = Parser(prog="bench.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["quality", "cost", "speed", "all", "gpu"])
    p.add_argument("--quick", action="store_true",
                   help="tiny settings, for a smoke test (under two minutes)")
    p.add_argument("--studies", type=names(STUDY_NAMES), default=STUDY_NAMES,
                   help=f"comparisons to report: {','.join(STUDY_NAMES)}")
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds of the tuned run and of every variant")
    p.add_argument("--sweep_seeds", type=int, default=1,
                   help="seeds per value of the sweep (the chosen value always gets --seeds)")
    p.add_argument("--steps", type=int, default=0,
                   help="steps of every benchmark run; 0 = the size's own (5 tokens/param at tiny; "
                        "gpu: 300 timed)")
    p.add_argument("--compile", type=int, default=1, choices=[0, 1],
                   help="torch.compile the benchmark runs (not the demo's); gpu: time the compiled "
                        "step too")
    p.add_argument("--gpt2", default="gpt2",
                   help="GPT-2's BPE ranks for the tiny_bpe corpus: gpt2 (tiktoken downloads them) "
                        "or a copy of the ranks file (PATH.tiktoken)")
    try:
        args = p.parse_args(argv)
        for key, least in (("seeds", 1), ("sweep_seeds", 1), ("steps", 0)):
            if getattr(args, key) < least:
                p.error(f"--{key} must be >= {least}, got {getattr(args, key)}")
        if args.what == "gpu" and not torch.cuda.is_available():
            raise UsageError("the gpu section needs a CUDA GPU, and torch sees none here; "
                             "run it on a GPU machine")
    except UsageError as e:  # one line and exit status 2, like every script here
        print(f"bench.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    args.batch_size, args.seq_len, args.eval_steps, args.reps = 16, 256, 16, 5
    args.cost_presets, args.speed_presets = ["llama60m", "llama1b"], ["tiny", "small"]
    args.muon_preset, args.recompute_presets = "tiny", ["tiny", "small"]
    global RESULTS
    # quick results never mix with real ones
    RESULTS = os.path.join("results", "quick") if args.quick else "results"
    if args.quick:  # everything small
        args.seeds, args.sweep_seeds, args.reps, args.compile = 2, 1, 2, 0
        quick = ("tiny-adamw", "tiny-muon", "tiny-lanton")
        args.studies = [s for s in args.studies if s in quick] or args.studies
        args.cost_presets, args.speed_presets, args.muon_preset = ["llama60m"], ["tiny"], "tiny"
        args.recompute_presets = ["tiny"]
    with stop_on_signals():
        try:
            return sections(args)
        except Stopped as e:  # one line, and the shell's death-by-signal status
            print(f"bench.py: stopped by {signal.Signals(e.signum).name}; finished runs are cached "
                  "and a cut-off run resumes from its checkpoint: run the same command to go on",
                  file=sys.stderr, flush=True)
            raise SystemExit(128 + e.signum) from None


def sections(args):
    """The sections args.what names, each saved to RESULTS as it ends; the report of all of them."""
    os.makedirs(RESULTS, exist_ok=True)
    env = {"cpu": common.cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version()}
    report = {"env": env}
    for name, fn in (("cost", cost), ("speed", speed), ("quality", quality), ("gpu", gpu)):
        if args.what == name or args.what == "all" and name != "gpu":  # `all`: the CPU's sections
            report[name] = fn(args)
            if name in ("quality", "gpu"):
                print(report[name]["table"])
            if name == "quality":
                # one file per study, so that benchmarks of different studies may run side by side
                for study in args.studies:
                    rows = [r for r in report[name]["rows"] if r["study"] == study]
                    save_json(os.path.join(RESULTS, f"quality_{study}.json"),
                              {"env": env, "setup": report[name]["setup"], "rows": rows}, indent=1)
            else:
                save_json(os.path.join(RESULTS, f"{name}.json"), {"env": env, name: report[name]},
                          indent=1)
    return report


if __name__ == "__main__":
    main()
