"""
Tests of bench.py's own machinery (the benchmark itself runs in miniature in test_train.py's smoke test).

    python -m pytest -q test_bench.py
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
import llr
import train
from model import LLaMA, PRESETS
from conftest import run, started, wait_for_line

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(bench.fcntl is None, reason="no fcntl (Windows): no locks")
def test_a_run_held_by_another_process_is_left_to_it(tmp_path):
    out = str(tmp_path / "out" / "run")
    with bench.claim(out) as first:
        with bench.claim(out) as second:  # another open file: flock conflicts as across processes
            assert first and not second
    with bench.claim(out) as again:  # released when its holder is done
        assert again


def test_without_fcntl_every_claim_succeeds(tmp_path, monkeypatch):  # Windows: one process at a time
    monkeypatch.setattr(bench, "fcntl", None)
    out = str(tmp_path / "out" / "run")
    with bench.claim(out) as first, bench.claim(out) as second:
        assert first and second


@pytest.mark.parametrize("argv", [["--seeds=0"], ["--sweep_seeds=0"], ["--steps=-1"], ["--compile=2"], ["--studies=tiny-adamx"]])
def test_bad_flags_are_one_line_before_any_work(argv, capsys, monkeypatch):
    """A flag out of its range is one line naming it and exit status 2, before any section starts."""
    monkeypatch.setattr(bench, "sections", lambda args: pytest.fail("bad flags reached the benchmark"))
    with pytest.raises(SystemExit) as e:
        bench.main(["quality", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("bench.py: error:") and len(err.strip().splitlines()) == 1, err
    assert argv[0].split("=")[0] in err, err


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(0, 3.0), (10, 2.0), (20, 1.0)]
    assert bench.steps_to_reach(curve, 1.5) == 15 and bench.steps_to_reach(curve, 0.5) is None


def test_runs_another_process_holds_are_made_by_it_and_read_last(monkeypatch):
    looks, held = [], {"b": 2}  # "b" is another process's until its third look

    def run_once(cfg, ctx):
        looks.append(cfg)
        if held.get(cfg):
            held[cfg] -= 1
            return None
        return cfg.upper()
    monkeypatch.setattr(bench, "run_once", run_once)
    monkeypatch.setattr(bench, "RETRY", 0)
    assert bench.run_all({1: "a", 2: "b", 3: "c"}, ctx=None) == {1: "A", 2: "B", 3: "C"}
    assert looks == ["a", "b", "c", "b", "b"]


@pytest.mark.deadline(600)  # torch.compile on CPU: about half a minute here
def test_speed_times_the_compiled_step_beside_the_eager_one():
    import argparse
    args = argparse.Namespace(speed_presets=["tiny"], seq_len=16, batch_size=2, compile=1, reps=1, muon_preset="tiny")
    row = bench.speed(args)["tiny"]
    assert row["compiled_tok_s"] > 0 and row["compile_speedup"] == pytest.approx(row["compiled_tok_s"] / row["ours_tok_s"])


def test_the_stdlib_corpus_ignores_packages_installed_later(tmp_path, monkeypatch):
    """The corpus is the library and its direct subdirectories, tests excluded; of site-packages only
    the modules the committed runs saw, so that installing a package changes nothing."""
    for name in ("a.py", "json/b.py", "json/deep/c.py", "test/t.py", "site-packages/six.py",
                 "site-packages/jupyter.py", "site-packages/pkg/d.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    monkeypatch.setattr(bench.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    found = [os.path.relpath(f, tmp_path) for f in bench.stdlib_files()]
    assert found == ["a.py", "json/b.py", "site-packages/six.py"]


# ---- the documents' numbers are the committed runs' numbers ----

def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def committed():
    """results/quality_*.json by study, and every committed run file by (command, code)."""
    import glob
    studies = {}
    for path in sorted(glob.glob("results/quality_*.json")):
        with open(path) as f:
            report = json.load(f)
        studies[path[len("results/quality_"):-len(".json")]] = report
    runs = {}
    for path in glob.glob("results/runs/*.json"):
        with open(path) as f:
            run = json.load(f)
        runs.setdefault((run["command"], run["code"]), []).append(run)
    return studies, runs


def test_every_quality_row_is_its_run_files():
    """Each row of results/quality_*.json: its final losses are those of committed run files made by
    the code it names, and its mean, s.e., difference and significance follow from them."""
    studies, runs = committed()
    assert studies
    for name, report in studies.items():
        code, rows = report["setup"]["code"], report["rows"]
        vs = next(s.get("vs", name) for s in bench.studies(None) if s["name"] == name)
        ref = studies[vs]["rows"][0]  # the tuned runs it is compared with
        for row in rows:
            finals = [min((r["final_val"] for r in runs[cmd, code]), key=lambda v: abs(v - f))
                      for cmd, f in zip(row["commands"], row["finals"])]
            assert finals == row["finals"], (name, row["variant"])
            mean, se = bench.mean_se(finals)
            assert (round(mean, 10), round(se, 10)) == (round(row["mean"], 10), round(row["se"], 10))
            if row is not ref:
                assert abs(row["diff"] - (mean - ref["mean"])) < 1e-9, (name, row["variant"])
                assert row["significant"] == (abs(row["diff"]) > 2 * (se**2 + ref["se"]**2) ** 0.5)


def study_tables(path):
    """{study: [the cells of each line]} of the first table under each '### `study`' heading."""
    tables, study = {}, None
    with open(path) as f:
        for line in f:
            if line.startswith("### `"):
                study = line.split("`")[1]
            elif line.startswith("## "):
                study = None
            elif study and line.startswith("|") and not line.startswith("|---"):
                tables.setdefault(study, []).append(cells(line))
            elif study in tables and not line.strip():
                study = None  # the table ended
    return tables


OTHER_STUDY = re.compile(r"\(`([\w-]+)`\)$")  # a table line that shows another study's row or sweep


def test_demo_blockwise_variants_change_only_what_their_labels_say():
    """The two rows that ask why blockwise wins in demo, as initial LRs per tensor at its tuned 2.5e-4:
    norm gains at 16x changes the norm gains alone; every matrix at 6x changes the hidden matrices alone,
    to the MLP's 6x, and keeps embedding, head and norm gains where blockwise has them."""
    study = next(s for s in bench.studies(None) if s["name"] == "demo-blockwise")
    blockwise = dataclasses.replace(study["base"]({}), lr=2.5e-4)
    model = LLaMA(dataclasses.replace(PRESETS["tiny"], vocab_size=320))
    role = {n: llr.roles(model)[id(p)] for n, p in model.named_parameters()}
    names = {id(p): n for n, p in model.named_parameters()}

    def peaks(cfg):
        return {names[id(g["params"][0])]: g["initial_lr"]
                for o in train.build_optimizers(model, cfg, fused=False) for g in o.param_groups}
    base = peaks(blockwise)
    for label, want in [("blockwise, norm gains at 16x", lambda n: base[n] * (16 if role[n] == "vector" else 1)),
                        ("blockwise, every matrix at 6x", lambda n: 1.5e-3 if role[n] == "hidden" else base[n])]:
        got = peaks(dataclasses.replace(blockwise, **study["variants"][label](2.5e-4)))
        assert got.keys() == base.keys()
        assert all(got[n] == pytest.approx(want(n), rel=1e-12) for n in base), label
    assert {role[n] for n in base if base[n] == pytest.approx(2.5e-4)} == {"vector"}


def test_results_tables_are_the_quality_files():
    """Every study table of RESULTS.md shows its quality file's rows: mean ± s.e., difference and
    significance, speedup, the LR methods' time; each sweep value's loss is a committed run's."""
    studies, runs = committed()
    by_command = {cmd: rs for (cmd, _), rs in runs.items()}
    checked = 0
    for name, table in study_tables("RESULTS.md").items():
        rows = {r["variant"]: r for r in studies[name]["rows"]} if name in studies else {}
        for line in table[1:]:
            label = line[0].rsplit(", ", 1)[0]
            if "running" in line or "queued" in line:
                continue
            if " sweep, seed" in line[0]:  # values / losses of single runs at seed 1337
                # a baseline's own sweep names its study: "LARS sweep, seed 1337 (`demo-lars`)"
                swept = other.group(1) if (other := OTHER_STUDY.search(line[0])) else name
                swept_rows = {r["variant"]: r for r in studies[swept]["rows"]}
                ref = swept_rows[next(v for v in swept_rows if v.endswith("(tuned)"))]
                knob = "muon_lr" if "muon_lr" in table[0][1] else "lr"
                tuned = by_command[ref["commands"][0]][0]["settings"]
                for value, loss in zip(line[1].split(" / "), line[2].split(" / ")):
                    want = {**tuned, knob: float(value)}
                    found = [r["final_val"] for rs in runs.values() for r in rs
                             if r["settings"] == want and r["code"] == studies[swept]["setup"]["code"]]
                    assert f"{found[0]:.4f}" == loss, (name, value)
                    checked += 1
                continue
            if other := OTHER_STUDY.search(line[0]):  # a row of another study: "LARS (tuned), 3 seeds (`demo-lars`)"
                row = next(r for r in studies[other.group(1)]["rows"] if line[0].startswith(r["variant"]))
            else:
                row = rows.get(label) or rows.get(f"{label} (tuned)") or next(
                    r for s in studies.values() for r in s["rows"]
                    if label.startswith(r["variant"].replace(" (tuned)", "")) and r["study"] in label)
            assert line[2] == f"{row['mean']:.4f} ± {row['se']:.4f}", (name, label)
            if line[3] != "reference":
                yes = "yes" if row["significant"] else "no"
                assert line[3] == f"{row['diff']:+.4f} ({yes})", (name, label)
                gain = f"{row['speedup']:.2f}x" if row["speedup"] else "< 1x"
                assert line[4] == gain and line[5] == f"{100 * row['overhead']:.1f}%", (name, label)
            checked += 1
    assert checked > 50


def test_the_verdict_tables_are_the_quality_files():
    """README's verdict and RESULTS.md's: tuned uniform, LLR (or LANTON), the difference and its
    significance, and tokens per parameter, for every finished study."""
    studies, runs = committed()
    checked = 0
    for path in ("README.md", "RESULTS.md"):
        with open(path) as f:
            text = f.read().split("## Verdict", 1)[1]
        lines = [cells(l) for l in text.splitlines() if l.startswith("| [`")]
        for line in lines:
            name = line[0].split("`")[1]
            if "running" in line:
                continue
            rows = studies[name]["rows"]
            method = rows[1] if len(rows) > 1 else rows[0]  # LLR, or tiny-lanton's LANTON
            ref_mean = method["mean"] - method["diff"]
            cut = [c.replace("LANTON: ", "") for c in line]
            uniform = next(c for c in cut if c.startswith(f"{ref_mean:.4f} ± "))
            assert cut[cut.index(uniform) + 1] == f"{method['mean']:.4f} ± {method['se']:.4f}"
            diff = cut[cut.index(uniform) + 2]
            yes = "yes" if method["significant"] else "no"
            assert diff in (f"{method['diff']:+.3f}", f"{method['diff']:+.3f} ({yes})"), (path, name)
            if diff == f"{method['diff']:+.3f}":
                assert cut[cut.index(uniform) + 3] == yes, (path, name)
            run = runs[method["commands"][0], studies[name]["setup"]["code"]][0]
            per_param = float(cut[cut.index(uniform) - 1])
            assert abs(per_param - run["tokens"] / run["params"]) < 0.051, (path, name)
            checked += 1
    assert checked >= 16


def fake_run(final, at_50, lr=1e-3, overhead=0.0):
    """A run record as bench.make_run writes it, with what the table reads: settings, val curve, overhead."""
    return {"final_val": final, "val": [(0, 5.0), (50, at_50), (100, final)], "command": "train.py",
            "settings": {"optimizer": "adamw", "lr": lr, "muon_lr": 0.02}, "overhead": {"llr": overhead}}


def test_quality_table_arithmetic_against_numbers_worked_by_hand():
    """Difference, standard errors, the 2 s.e. test and the speedup, from synthetic runs whose answers are
    worked out by hand below (three seeds each, every curve evaluated at steps 0, 50 and 100)."""
    ref = [fake_run(3.0, 3.6), fake_run(3.2, 3.6), fake_run(3.1, 3.6)]  # mean 3.1, sd 0.1, s.e. 0.1/sqrt(3)
    better = [fake_run(2.8, 3.5, overhead=0.015), fake_run(2.9, 3.5, overhead=0.015), fake_run(3.0, 3.5, overhead=0.015)]
    close = [fake_run(3.0, 3.6), fake_run(2.95, 3.6), fake_run(3.05, 3.6)]  # mean 3.0, s.e. 0.05/sqrt(3)
    worse = [fake_run(3.3, 3.7), fake_run(3.4, 3.7), fake_run(3.2, 3.7)]  # mean 3.3: never reaches 3.1
    se = 0.1 / 3**0.5
    row = lambda label, runs: bench.row("s", label, runs, ref, 3.1, se, 100, "info")
    r = row("LLR", better)
    # mean 2.9, s.e. 0.1/sqrt(3); difference -0.2 against 2 * sqrt(2) * s.e. = 0.163: beyond it
    assert (r["mean"], r["se"], r["diff"]) == pytest.approx((2.9, se, -0.2)) and r["significant"]
    # the seed-mean curve reaches 3.1 between (50, 3.5) and (100, 2.9): at 50 + 50 * 0.4 / 0.6 = 83.3 steps,
    # so the reference's loss comes in 100 / 83.3 = 1.2 times fewer steps
    assert r["speedup"] == pytest.approx(1.2) and r["overhead"] == pytest.approx(0.015)
    assert bench.table_line(r, better, False) == "| s | LLR, 3 seeds | lr=0.001 | 2.9000 ± 0.0577 | -0.2000 (yes) | 1.20x | 1.5% |"
    # -0.1: beyond one combined s.e. (sqrt(0.05**2 / 3 + 0.1**2 / 3) = 0.065), within two; reaches 3.1 at
    # 50 + 50 * 0.5 / 0.6 = 91.7 steps
    r = row("close", close)
    assert r["diff"] == pytest.approx(-0.1) and not r["significant"] and r["speedup"] == pytest.approx(100 / (50 + 50 * 0.5 / 0.6))
    assert "| 3.0000 ± 0.0289 | -0.1000 (no) | 1.09x |" in bench.table_line(r, close, False)
    r = row("worse", worse)  # +0.2, beyond 2 s.e.; never reaches the reference's loss
    assert r["diff"] == pytest.approx(0.2) and r["significant"] and r["speedup"] is None
    assert "| +0.2000 (yes) | < 1x | 0.0% |" in bench.table_line(r, worse, False)
    r = row("uniform (tuned)", ref)
    assert r["diff"] == 0 and not r["significant"] and r["speedup"] is None
    assert bench.table_line(r, ref, True) == "| s | uniform (tuned), 3 seeds | lr=0.001 | 3.1000 ± 0.0577 | reference |  | 0.0% |"


def test_the_speedup_counts_from_where_the_reference_itself_first_reaches_its_loss():
    """A reference curve that dips below its final loss before the end (validation loss rises and falls
    late in training): the variant's lead is measured against the step where the reference's own
    seed-mean curve first reaches that loss, not against the run's length."""
    ref = [fake_run(3.0, 3.0), fake_run(3.2, 3.0), fake_run(3.1, 3.0)]  # seed mean (0, 5), (50, 3.0), (100, 3.1)
    early = [fake_run(3.0, 3.1), fake_run(3.0, 3.1), fake_run(3.0, 3.1)]  # (0, 5), (50, 3.1), (100, 3.0)
    late = [fake_run(2.9, 3.5), fake_run(2.9, 3.5), fake_run(2.9, 3.5)]  # (0, 5), (50, 3.5), (100, 2.9)
    row = lambda runs: bench.row("s", "v", runs, ref, 3.1, 0.1 / 3**0.5, 100, "info")
    # the reference first reaches 3.1 at 50 * (5 - 3.1) / (5 - 3.0) = 47.5 steps; early at 50, late at
    # 50 + 50 * 0.4 / 0.6 = 83.3: neither is faster, though both end lower and reach 3.1 before step 100
    assert row(early)["speedup"] == pytest.approx(47.5 / 50)
    assert row(late)["speedup"] == pytest.approx(47.5 / (50 + 50 * 0.4 / 0.6))
    assert "| 0.57x |" in bench.table_line(row(late), late, False)


# ---- signals: the benchmark stops at once, caches nothing cut off, and goes on where it stopped ----


def stop(cmd, cwd, after, signum):
    """Start cmd (in a process group of its own), send signum once it prints a line starting with after;
    returns (exit status, seconds from the signal to the exit, stdout, stderr)."""
    with started(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        wait_for_line(p, after, timeout=300)
        t0 = time.monotonic()
        p.send_signal(signum)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(cmd[1:])} still ran 120s after the signal")
        return p.returncode, time.monotonic() - t0, out, err


def test_sigterm_during_the_fingerprint_exits_143_and_caches_nothing(tmp_path):
    """A real SIGTERM to a real benchmark while its fingerprint's first run trains: exit 143 with one line
    on stderr, no fingerprint (the cut-off run's losses are not taken), no run started, nothing cached."""
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "quality", "--studies=demo"]
    # LLR's first table: the fingerprint's first run is in its loop, where train() notes signals
    rc, seconds, out, err = stop(cmd, tmp_path, "layer ", signal.SIGTERM)
    print(f"exited {seconds:.1f}s after SIGTERM")
    assert rc == 143, err
    assert err.strip().splitlines()[-1].startswith("bench.py: stopped by SIGTERM") and "Traceback" not in err
    assert "code fingerprint" not in out and "\nrun " not in out
    assert not (tmp_path / "results" / "runs").exists() and not list((tmp_path / "results").glob("*.json"))


def test_ctrl_c_during_cost_exits_130_and_saves_no_partial_section(tmp_path):
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "cost", "--quick"]
    rc, seconds, out, err = stop(cmd, tmp_path, "ESD + Hill alpha of", signal.SIGINT)
    print(f"exited {seconds:.1f}s after SIGINT")
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("bench.py: stopped by SIGINT") and "Traceback" not in err
    assert not (tmp_path / "results" / "quick" / "cost.json").exists()


def quick_run(data_dir):
    return bench.train.TrainConfig(data=data_dir, max_steps=12, batch_size=4, seq_len=32, eval_interval=4,
                                   eval_steps=2, log_interval=10**9, sample_tokens=0, llr=True,
                                   llr_config=llr.LLRConfig(interval=3, ramp=1, window=1.0))


def same_record(a, b):  # all but the timings and the machine
    drop = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "overhead", "device")}
    assert drop(a) == drop(b) and a["overhead"].keys() == b["overhead"].keys()


def test_a_run_that_diverges_is_a_result_an_infinite_loss_and_the_sweep_goes_on(tmp_path, data_dir, monkeypatch):
    """LARS at a far too large LR overflows: the run is recorded (final loss inf, the step it diverged at,
    cached), the benchmark does not stop, and the sweep picks a finite value."""
    monkeypatch.chdir(tmp_path)
    cfg = dataclasses.replace(quick_run(data_dir), llr=False, optimizer="lars")
    args = type("Args", (), {"sweep_seeds": 1, "seeds": 1})
    best, sweep = bench.tune(cfg, "lr", [0.01, 1e4], {"data": ["d"], "code": "c"}, args)
    assert best == 0.01 and math.isfinite(sweep[0.01][0]["final_val"])
    diverged = sweep[1e4][0]
    assert diverged["final_val"] == math.inf and 0 < diverged["diverged_at"] < 12
    assert not any(tmp_path.glob("results/out/*/ckpt.pt"))  # no weights left behind
    assert bench.run_once(dataclasses.replace(cfg, lr=1e4), {"data": ["d"], "code": "c"}) == diverged  # cached


def test_a_run_a_signal_stops_is_not_cached_and_resumes_to_the_same_record(tmp_path, data_dir, monkeypatch):
    """SIGTERM (a real one, to this process) at step 5: Stopped, no run file, the checkpoint kept; the next
    run_once resumes from it and caches the very record of an uninterrupted run."""
    cfg, ctx = quick_run(data_dir), {"data": ["d"], "code": "c"}
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path / "straight"))
    straight = bench.run_once(cfg, ctx)
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path / "stopped"))
    lr_mult = bench.train.lr_mult

    def signal_at_step_5(step, cfg):
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return lr_mult(step, cfg)
    monkeypatch.setattr(bench.train, "lr_mult", signal_at_step_5)
    with pytest.raises(bench.Stopped) as stopped:
        bench.run_once(cfg, ctx)
    assert stopped.value.signum == signal.SIGTERM
    assert not list((tmp_path / "stopped" / "runs").glob("*.json"))
    out = tmp_path / "stopped" / "out" / straight["key"]
    assert 5 < torch.load(out / "ckpt.pt")["step"] < 12  # stopped within a step or two, with a checkpoint
    monkeypatch.setattr(bench.train, "lr_mult", lr_mult)
    resumed = bench.run_once(cfg, ctx)
    same_record(resumed, straight)
    starts = [json.loads(line)["start_step"] for line in open(out / "metrics.jsonl") if '"start_step"' in line]
    assert starts[0] == 0 and 5 < starts[1] < 12 and len(starts) == 2  # resumed, not started over
    # LLR's share of the training time counts both invocations, above and below the line
    times = [json.loads(line) for line in open(out / "seconds.jsonl")]
    assert len(times) == 2 and all(t["train_seconds"] > 0 and t["llr_seconds"] > 0 for t in times)
    share = sum(t["llr_seconds"] for t in times) / sum(t["train_seconds"] for t in times)
    assert resumed["overhead"] == {"llr": pytest.approx(share, rel=1e-12)}
    assert [f.name for f in (tmp_path / "stopped" / "runs").glob("*.json")] == [straight["key"] + ".json"]


def test_a_run_killed_past_its_checkpoint_resumes_to_the_same_record(tmp_path, data_dir, monkeypatch):
    """A hard kill at step 10 leaves metrics.jsonl two steps (and an LLR recompute) past the checkpoint of
    step 8; the resumed run logs them again, and its record is that of an uninterrupted run."""
    cfg, ctx = quick_run(data_dir), {"data": ["d"], "code": "c"}
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path / "straight"))
    straight = bench.run_once(cfg, ctx)
    monkeypatch.setattr(bench, "RESULTS", str(tmp_path / "killed"))
    out = tmp_path / "killed" / "out" / straight["key"]
    bench.train.train(dataclasses.replace(cfg, out_dir=str(out), stop_after=8))
    shutil.copy(out / "ckpt.pt", out / "ckpt8.pt")
    bench.train.train(dataclasses.replace(cfg, out_dir=str(out), resume=True, stop_after=2))
    os.replace(out / "ckpt8.pt", out / "ckpt.pt")  # as if killed at step 10: the last checkpoint is step 8's
    steps = [json.loads(line).get("step") for line in open(out / "metrics.jsonl")]
    assert steps.count(9) == 2 and 10 in steps  # step 9's loss and LLR's recompute at step 9
    same_record(bench.run_once(cfg, ctx), straight)


# ---- cost: one LLR recompute beside busy processes ----


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.deadline(120)  # a burner left running would hold the block's wait
def test_busy_cpu_burners_die_with_the_block_however_it_ends():
    with pytest.raises(bench.Stopped):
        with bench.busy_cpu(2) as pids:
            assert len(pids) == 2 and all(alive(pid) for pid in pids)  # burning, each in a group of its own
            assert all(os.getpgid(pid) == pid for pid in pids)
            raise bench.Stopped(signal.SIGTERM)  # as a signal raises it there
    assert not any(alive(pid) for pid in pids)


def test_recompute_under_load_times_both():
    row = bench.recompute_under_load(["tiny"], reps=1)["tiny"]
    assert row["quiet_ms"] > 0 and row["busy_ms"] > 0 and row["ratio"] == pytest.approx(row["busy_ms"] / row["quiet_ms"])


# ---- bench.py gpu: the README's recipe on a GPU ----


def test_the_gpu_section_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    """python bench.py gpu where torch sees no GPU (hidden here, whatever the machine has): one line saying that a
    GPU is needed, exit status 2, nothing written."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for argv in (["gpu"], ["gpu", "--quick"]):
        r = run([sys.executable, os.path.join(HERE, "bench.py"), *argv], 120, cwd=tmp_path, env=env)
        assert r.returncode == 2 and r.stderr.startswith("bench.py: error:") and "needs a CUDA GPU" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_all_leaves_the_gpu_section_out_and_gpu_saves_its_table(tmp_path, monkeypatch, capsys):
    """`all` is the CPU's three sections; `gpu` runs alone, with its flags, prints its table and saves it with
    the rows in results/gpu.json."""
    calls = []

    def section(name):
        return lambda args: calls.append((name, args.steps)) or {"rows": [], "table": f"| {name} |", "setup": {}}
    for name in ("cost", "speed", "quality", "gpu"):
        monkeypatch.setattr(bench, name, section(name))
    monkeypatch.chdir(tmp_path)
    bench.main(["all"])
    assert [name for name, _ in calls] == ["cost", "speed", "quality"]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU, as far as main() can tell
    bench.main(["gpu", "--steps=7"])
    assert calls == [("gpu", 7)] and "| gpu |" in capsys.readouterr().out
    with open(tmp_path / "results" / "gpu.json") as f:
        saved = json.load(f)
    assert saved["gpu"]["table"] == "| gpu |" and saved["env"]["torch"] == torch.__version__


@pytest.mark.parametrize("use_llr", [False, True])
def test_the_gpu_sections_step_trains_on_cpu(use_llr, monkeypatch):
    """bench.py gpu's step, with tiny on the CPU: train.py's pieces take an optimizer step each call (every weight
    moves, the loss is finite and near ln(vocabulary) on random tokens), LLR recomputing at the recipe's cadence
    (its first step only, of 3: every 40 steps of 3,200)."""
    recomputes, step_of = [], llr.LLR.step
    monkeypatch.setattr(llr.LLR, "step", lambda self, t: recomputes.append((t, step_of(self, t) is not None)))
    model, step = bench.gpu_step("tiny", 2, 16, torch.device("cpu"), use_llr=use_llr, vocab=320)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step() for _ in range(3)]
    assert all(math.isfinite(x) and abs(x - math.log(320)) < 0.5 for x in losses), losses
    assert not any(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert recomputes == ([(0, True), (1, False), (2, False)] if use_llr else [])


@pytest.mark.deadline(1200)  # torch.compile of llama60m, twice
def test_cuda_bench_gpu_measures_every_variant(cuda):
    """bench.py gpu's section in small (--quick's 10 steps of 4 sequences), compiled too: a row per variant, with
    tokens/s, an MFU below 1 (or none, for a GPU not in common.PEAK_FLOPS) and a peak under the GPU's memory."""
    report = bench.gpu(argparse.Namespace(quick=True, steps=0, compile=1))
    assert [r["variant"] for r in report["rows"]] == ["uniform AdamW, eager", "uniform AdamW, compiled",
                                                        "LLR AdamW, eager", "LLR AdamW, compiled"]
    memory = torch.cuda.get_device_properties(0).total_memory / 1e9
    for r in report["rows"]:
        assert r["tok_s"] > 0 and 0 < r["peak_gb"] < memory and r["batch"] == [4, 1024], r
        assert (r["mfu"] is None) == (report["peak_flops"] is None) and (r["mfu"] is None or 0 < r["mfu"] < 1), r
    rows = [line for line in report["table"].splitlines() if line.startswith("| ") and "AdamW" in line]
    assert len(rows) == 4 and report["device"] in report["table"]
