"""
Benchmarks. Every figure is measured by the run that prints it.

    python bench.py quality          # LLR against a tuned uniform LR, AdamW and Muon (hours on 2 cores; resumable)
    python bench.py cost             # time of the spectral diagnostic: ours against the official route
    python bench.py speed            # training throughput against transformers' LlamaForCausalLM; Muon against torch.optim.Muon
    python bench.py all --quick      # all three with tiny settings, in under two minutes

Results go to results/ (JSON, markdown tables, PNG plots if matplotlib is installed).
"""

import argparse
import dataclasses
import glob
import json
import math
import os
import pathlib
import platform
import random
import statistics
import sysconfig
import time

import numpy as np
import torch

import llr
import train as T
from model import LLaMA, PRESETS, ModelConfig

RESULTS = "results"

# ---- a corpus that does not repeat within a run: the Python standard library's own source ----


def build_stdlib_corpus(data_dir):
    """Byte tokens of every .py file of the standard library (tests excluded), in a fixed shuffled order
    so that training does not walk the library alphabetically; every 20th file is validation."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in glob.glob(f"{root}/*.py") + glob.glob(f"{root}/*/*.py") if "/test" not in f)
    random.Random(0).shuffle(files)
    T.build_byte_corpus(data_dir, "stdlib", (pathlib.Path(f).read_text("utf-8", "replace") for f in files), val_every=20)
    return data_dir


# ---- 1. quality: LLR against a properly tuned uniform learning rate ----


def start_over(out):
    """Remove what an earlier, unfinished run left in out (its checkpoint and metrics)."""
    for name in ("ckpt.pt", "metrics.jsonl"):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def save_json(path, obj):
    """Written aside, then renamed: an interrupted benchmark never leaves half a result."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def run_once(key, cfg):
    """One training run, cached as results/runs/<key>.json so an interrupted benchmark resumes where it stopped."""
    path = os.path.join(RESULTS, "runs", key + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    out = os.path.join(RESULTS, "out", key)
    start_over(out)  # a run cut off before it finished starts over
    summary = T.train(dataclasses.replace(cfg, out_dir=out))
    if summary["step"] != cfg.max_steps:  # SIGTERM or Ctrl-C stops train() early: never cache a cut-off run
        raise SystemExit(f"run {key} stopped at step {summary['step']} of {cfg.max_steps}; run the benchmark again to redo it")
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    result = {"key": key, "val": [(r["step"], r["val_loss"]) for r in records if "val_loss" in r],
              "llr": [r for r in records if r.get("method") == "llr"], "lanton": [r for r in records if r.get("method") == "lanton"],
              "final_val": summary["val_loss"], "seconds": summary["train_seconds"],
              "overhead": {m: summary[f"{m}_fraction"] for m in ("llr", "lanton") if f"{m}_fraction" in summary}}
    os.remove(os.path.join(out, "ckpt.pt"))  # keep metrics.jsonl, drop the weights
    save_json(path, result)
    return result


def track_llr(key, cfg, every):
    """Alpha of every matrix and the multiplier in force, every `every` steps of one LLR run. The run is
    repeated in pieces (stop with a checkpoint, resume), which gives the same bits as the run made in
    one go (checked against it here), so the heatmap shows the very run of the quality table."""
    path = os.path.join(RESULTS, "runs", key + "-track.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    out = os.path.join(RESULTS, "out", key + "-track")
    start_over(out)
    records = []
    for start in range(0, cfg.max_steps, every):
        s = T.train(dataclasses.replace(cfg, out_dir=out, stop_after=every, resume=start > 0))
        model = s["model"]
        ctrl = llr.LLR(model, torch.optim.SGD(llr.param_groups(model), lr=0.0), cfg.max_steps, cfg.llr_config)
        ctrl.load_state_dict(torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)["llr"])
        records.append({"step": s["step"], "alphas": ctrl._measure(),
                        "multipliers": {n: ctrl.multiplier(n, s["step"]) for n in ctrl.analysed}})
    first = next(json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"method": "llr"' in line)
    result = {"records": [first] + records, "final_val": s["val_loss"], "same_bits": s["val_loss"] == run_once(key, cfg)["final_val"]}
    os.remove(os.path.join(out, "ckpt.pt"))
    save_json(path, result)
    return result


def mean_se(xs):
    return statistics.mean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def steps_to_reach(curve, target):
    """First evaluated step whose validation loss is at or below target (None if never)."""
    return next((s for s, v in curve if v <= target), None)


def quality(args):
    data = build_stdlib_corpus(os.path.join("data", "stdlib"))
    base = T.TrainConfig(data=data, max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                         eval_interval=max(1, args.steps // 16), eval_steps=args.eval_steps, log_interval=10**9)
    rows, table = [], []
    for size in args.sizes:
        for opt in args.optimizers:
            lr_key = "lr" if opt == "adamw" else "muon_lr"
            grid = args.adamw_grid if opt == "adamw" else args.muon_grid

            def runs(variant, lr, seeds=args.seeds, **kw):
                cfg = dataclasses.replace(base, preset=size, optimizer=opt, **{lr_key: lr}, **kw)
                return [run_once(f"{size}-{opt}-{variant}-{lr:g}-s{seed}-{args.steps}", dataclasses.replace(cfg, seed=seed))
                        for seed in range(seeds)]

            # sweep the uniform peak LR (on the first sweep_seeds seeds); widen the grid while the best sits on its edge
            grid = sorted(grid)
            sweep = {lr: runs("uniform", lr, args.sweep_seeds) for lr in grid}
            while True:
                best = min(sweep, key=lambda lr: mean_se([r["final_val"] for r in sweep[lr]])[0])
                edge = grid[0] / 2 if best == grid[0] else grid[-1] * 2 if best == grid[-1] else None
                if edge is None or len(grid) >= len(args.adamw_grid) + 2:
                    break
                grid = sorted(grid + [edge])
                sweep[edge] = runs("uniform", edge, args.sweep_seeds)
            sweep[best] = runs("uniform", best)  # all seeds at the chosen LR
            variants, lr_of = {"uniform (best LR)": sweep[best]}, {}
            variants["LLR soft"] = runs("llr", best, llr=True)
            if opt in args.ablations:
                variants["LLR hard"] = runs("llr-hard", best, llr=True, llr_config=llr.LLRConfig(ramp=0))
                for r_max in (1.5, 5.0):
                    variants[f"LLR r_max={r_max:g}"] = runs(f"llr-rmax{r_max:g}", best, llr=True, llr_config=llr.LLRConfig(r_max=r_max))
                variants[f"uniform at {llr.LLRConfig().r_max:g}x LR"] = runs("uniform", best * llr.LLRConfig().r_max)
                lr_of[f"uniform at {llr.LLRConfig().r_max:g}x LR"] = best * llr.LLRConfig().r_max
            if opt == "muon":
                variants["LANTON"] = runs("lanton", best, lanton=True)
            ref_mean, ref_se = mean_se([r["final_val"] for r in sweep[best]])
            for lr in grid:
                m, se = mean_se([r["final_val"] for r in sweep[lr]])
                table.append(f"| {size} | {opt} | uniform sweep, {len(sweep[lr])} seed(s) | {lr:g} | {m:.4f} ± {se:.4f} | | | |")
            for name, rs in variants.items():
                finals = [r["final_val"] for r in rs]
                m, se = mean_se(finals)
                diff_se = math.sqrt(se**2 + ref_se**2) if len(rs) > 1 else float("nan")
                curve = [(s, statistics.mean(r["val"][i][1] for r in rs)) for i, (s, _) in enumerate(rs[0]["val"])]  # mean over seeds
                reach = steps_to_reach(curve, ref_mean)
                speedup = args.steps / reach if reach and rs is not sweep[best] else None
                overhead = statistics.mean(sum(r["overhead"].values()) for r in rs)
                lr = lr_of.get(name, best)
                rows.append({"size": size, "optimizer": opt, "variant": name, "lr": lr, "mean": m, "se": se,
                             "diff": m - ref_mean, "significant": abs(m - ref_mean) > 2 * diff_se, "speedup": speedup,
                             "overhead": overhead, "seeds": len(rs), "finals": finals})
                sig = "yes" if rows[-1]["significant"] else "no"
                table.append(f"| {size} | {opt} | {name}, {len(rs)} seeds | {lr:g} | {m:.4f} ± {se:.4f} | {m - ref_mean:+.4f} ({sig}) | "
                             f"{'%.2fx' % speedup if speedup else 'reference' if rs is sweep[best] else '< 1x'} | {100 * overhead:.1f}% |")
            plot_curves(size, opt, variants)
            if opt not in args.ablations:
                continue
            track = track_llr(f"{size}-{opt}-llr-{best:g}-s0-{args.steps}", dataclasses.replace(
                base, preset=size, optimizer=opt, **{lr_key: best}, llr=True, seed=0), every=base.eval_interval)
            next(r for r in rows[-len(variants):] if r["variant"] == "LLR soft")["track_same_bits"] = track["same_bits"]
            plot_heatmap(size, opt, track["records"])
    header = ["| size | optimizer | run | peak LR | final val loss (mean ± s.e.) | vs best uniform (> 2 s.e.?) | speedup | LR-method time |",
              "|---|---|---|---|---|---|---|---|"]
    return {"rows": rows, "table": "\n".join(header + table),
            "setup": {"sizes": args.sizes, "steps": args.steps, "seeds": args.seeds, "sweep_seeds": args.sweep_seeds,
                      "batch_size": args.batch_size, "seq_len": args.seq_len, "eval_every": base.eval_interval, "eval_steps": args.eval_steps}}


def _pyplot():
    """matplotlib's pyplot without a display, or None when matplotlib (an optional extra) is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def plot_curves(size, opt, variants):
    """Seed-mean validation curves of every variant, from a quarter of the run on (earlier losses would flatten the rest)."""
    if not (plt := _pyplot()):
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rs in variants.items():
        steps = [s for s, _ in rs[0]["val"]]
        mean = np.mean([[v for _, v in r["val"]] for r in rs], axis=0)
        ax.plot(steps[len(steps) // 4:], mean[len(steps) // 4:], label=name)
    ax.set(xlabel="step", ylabel="validation loss", title=f"{size}, {opt} (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"curves_{size}_{opt}.png"), dpi=120)
    plt.close(fig)


def plot_heatmap(size, opt, records):
    """Alpha and multiplier of every analysed matrix (rows: q..down by depth) at each record (columns)."""
    if not (plt := _pyplot()):
        return
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    names = sorted((n for n in records[0]["alphas"] if any(o in n for o in order)),
                   key=lambda n: (next(i for i, o in enumerate(order) if o in n), int(n.split(".")[1])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.18 * len(names) + 1.5))
    for ax, key in zip(axes, ("alphas", "multipliers")):
        grid = np.array([[r[key][n] for r in records] for n in names])
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        ticks = range(0, len(records), max(1, len(records) // 8))
        ax.set(title=key, xlabel="step", xticks=ticks, xticklabels=[records[i]["step"] for i in ticks])
        ax.set_yticks(range(len(names)), [n.replace("layers.", "").replace(".weight", "").replace("self_attn.", "").replace("mlp.", "")
                                          for n in names], fontsize=6)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"heatmap_{size}_{opt}.png"), dpi=120)
    plt.close(fig)


# ---- 2. cost of the spectral diagnostic ----


def official_alphas(weights, xmin_pos=2.0):
    """The official route: one float32 svdvals per matrix in a Python loop, then Hill at the median."""
    out = []
    for w in weights:
        eigs = torch.linalg.svdvals(w.float()).pow(2).sort().values
        out.append(llr.hill_alpha(eigs, xmin_pos))
    return out


def cost(args):
    rows = {}
    for preset in args.cost_presets:
        cfg = PRESETS[preset]
        with torch.device("meta"):
            shapes = [(n, tuple(p.shape)) for n, p in LLaMA(cfg).named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
        if args.quick:
            shapes = shapes[: 7 * 2]  # two blocks
        gen = torch.Generator().manual_seed(0)
        holder = torch.nn.ParameterDict({n.replace(".", "_"): torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for n, s in shapes})
        ctrl = llr.LLR(holder, torch.optim.SGD(llr.param_groups(holder), lr=1.0), total_steps=1)
        t0 = time.perf_counter()
        ours = list(ctrl.step(0)["alphas"].values())  # the controller's own route: batched by shape, Gram + eigvalsh
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = official_alphas(list(holder.values()))
        t_ref = time.perf_counter() - t0
        rel = max(abs(a - b) / abs(b) for a, b in zip(ours, ref))
        rows[preset] = {"matrices": len(shapes), "ours_s": t_ours, "official_s": t_ref, "ratio": t_ref / t_ours, "max_rel_diff": rel}
        print(f"ESD + Hill alpha of {len(shapes)} matrices of {preset}: ours {t_ours:.2f}s, official {t_ref:.2f}s, "
              f"{t_ref / t_ours:.1f}x faster, alphas agree to {rel:.1e}", flush=True)
    # one recompute inside a real training run of the CPU preset, and its share of training time (LANTON's too)
    steps = 40 if args.quick else 200
    for method, kw in (("llr", {"llr": True}), ("lanton", {"lanton": True, "optimizer": "muon"})):
        out = os.path.join(RESULTS, "out", f"cost-{method}-{steps}")
        start_over(out)
        s = T.train(T.TrainConfig(out_dir=out, max_steps=steps, eval_interval=0, log_interval=10**9, **kw,
                                  **({"batch_size": 4, "seq_len": 64} if args.quick else {})))
        n = len([line for line in open(os.path.join(out, "metrics.jsonl")) if f'"method": "{method}"' in line])
        rows[f"train_tiny_{method}"] = {"steps": steps, "refreshes": n, "seconds": s[f"{method}_seconds"], "train_s": s["train_seconds"],
                                        "per_refresh_s": s[f"{method}_seconds"] / max(1, n), "fraction": s[f"{method}_fraction"]}
        print(f"tiny, {steps} steps with --{method}{' (Muon)' if method == 'lanton' else ''}: {n} refreshes, "
              f"{s[f'{method}_seconds'] / max(1, n) * 1000:.1f} ms each, {100 * s[f'{method}_fraction']:.2f}% of training time", flush=True)
    return rows


# ---- 3. speed: our model against transformers' LlamaForCausalLM, our Muon against torch.optim.Muon ----


def hf_twin(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM
    hc = LlamaConfig(hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                     num_key_value_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_seq_len,
                     rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                     attention_bias=False, mlp_bias=False)
    hc._attn_implementation = "sdpa"
    return LlamaForCausalLM(hc)


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
        import transformers  # noqa: F401  (requirements-bench.txt)
    except ImportError:
        print("transformers is not installed (pip install -r requirements-bench.txt): model comparison skipped", flush=True)
        args.speed_presets = []
    for preset in args.speed_presets:
        cfg = dataclasses.replace(PRESETS[preset], max_seq_len=args.seq_len)
        torch.manual_seed(0)
        ours, hf = LLaMA(cfg), hf_twin(cfg)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
        x = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len))
        opt_o, opt_h = torch.optim.AdamW(ours.parameters()), torch.optim.AdamW(hf.parameters())

        def step(model, opt, hf_api):
            loss = model(input_ids=x, labels=x).loss if hf_api else model(x, x)[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        fns = {"ours": lambda: step(ours, opt_o, False), "transformers": lambda: step(hf, opt_h, True)}
        timed_alternately(fns, 2)  # warm up
        t = timed_alternately(fns, args.reps)
        tok = args.batch_size * args.seq_len
        rows[preset] = {"ours_tok_s": tok / t["ours"], "hf_tok_s": tok / t["transformers"], "ratio": t["transformers"] / t["ours"],
                        "threads": torch.get_num_threads(), "batch": [args.batch_size, args.seq_len]}
        print(f"{preset} train step, {args.batch_size}x{args.seq_len} tokens, float32, {torch.get_num_threads()} threads: ours "
              f"{tok / t['ours'] / 1000:.1f}k tok/s, transformers {tok / t['transformers'] / 1000:.1f}k tok/s, ratio {rows[preset]['ratio']:.2f}x", flush=True)
    # Muon: one optimizer step over the hidden matrices of a preset, ours against torch.optim.Muon
    with torch.device("meta"):
        shapes = [tuple(p.shape) for n, p in LLaMA(PRESETS[args.muon_preset]).named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    ps = [[torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes] for _ in range(2)]
    for group in ps:
        for p in group:
            p.grad = torch.randn_like(p)
    opts = {"ours": llr.Muon([{"params": [p]} for p in ps[0]], lr=0.02),
            "torch.optim.Muon": torch.optim.Muon(ps[1], lr=0.02, weight_decay=0.0, adjust_lr_fn="original")}
    t = timed_alternately({k: o.step for k, o in opts.items()}, args.reps)
    rows["muon"] = {"preset": args.muon_preset, "matrices": len(shapes), **{f"{k}_ms": 1000 * v for k, v in t.items()}}
    print(f"Muon step over the {len(shapes)} hidden matrices of {args.muon_preset}: ours {1000 * t['ours']:.1f} ms, "
          f"torch.optim.Muon {1000 * t['torch.optim.Muon']:.1f} ms", flush=True)
    return rows


# ---- command line ----


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["quality", "cost", "speed", "all"])
    p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test (under two minutes)")
    p.add_argument("--sizes", default="tiny,small", help="model presets for the quality comparison")
    p.add_argument("--optimizers", default="adamw,muon")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sweep_seeds", type=int, default=1, help="seeds per LR of the uniform sweep (the chosen LR always gets --seeds)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--ablations", default="adamw", help="optimizers that get the ablations (hard switching, r_max, uniform at r_max x LR) and the alpha heatmap; '' for none")
    args = p.parse_args(argv)
    args.sizes, args.optimizers, args.ablations = args.sizes.split(","), args.optimizers.split(","), args.ablations.split(",")
    args.batch_size, args.seq_len, args.eval_steps, args.reps = 16, 128, 16, 5
    args.adamw_grid, args.muon_grid = [5e-4, 1e-3, 2e-3, 4e-3], [0.005, 0.01, 0.02, 0.04]
    args.cost_presets, args.speed_presets, args.muon_preset = ["llama60m", "llama1b"], ["tiny", "small"], "tiny"
    global RESULTS
    RESULTS = os.path.join("results", "quick") if args.quick else "results"  # quick results never mix with real ones
    if args.quick:  # everything small
        args.sizes, args.seeds, args.sweep_seeds, args.steps, args.batch_size, args.seq_len, args.eval_steps, args.reps = ["tiny"], 2, 1, 24, 4, 64, 2, 2
        args.adamw_grid, args.muon_grid = [2e-3, 4e-3], [0.01, 0.02]
        args.cost_presets, args.speed_presets, args.muon_preset = ["llama60m"], ["tiny"], "tiny"
    os.makedirs(RESULTS, exist_ok=True)
    env = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version()}
    report = {"env": env}
    for name, fn in (("cost", cost), ("speed", speed), ("quality", quality)):
        if args.what in (name, "all"):
            report[name] = fn(args)
            if name == "quality":
                print(report[name]["table"])
            fname = name if name != "quality" else f"quality_{'-'.join(args.sizes)}"  # one file per size set
            with open(os.path.join(RESULTS, f"{fname}.json"), "w") as f:
                json.dump({"env": env, **({name: report[name]})}, f, indent=1)
    return report


if __name__ == "__main__":
    main()
