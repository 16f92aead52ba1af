"""
Tests of bench.py's own machinery (the benchmark itself runs in miniature in test_train.py's smoke test).

    python -m pytest -q test_bench.py
"""

import pytest

import bench


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


# ---- the documents' numbers are the committed runs' numbers ----

def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def committed():
    """results/quality_*.json by study, and every committed run file by (command, code)."""
    import glob
    import json
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
                ref = rows[next(v for v in rows if v.endswith("(tuned)"))]
                knob = "muon_lr" if "muon_lr" in table[0][1] else "lr"
                tuned = by_command[ref["commands"][0]][0]["settings"]
                for value, loss in zip(line[1].split(" / "), line[2].split(" / ")):
                    want = {**tuned, knob: float(value)}
                    found = [r["final_val"] for rs in runs.values() for r in rs
                             if r["settings"] == want and r["code"] == studies[name]["setup"]["code"]]
                    assert f"{found[0]:.4f}" == loss, (name, value)
                    checked += 1
                continue
            row = rows.get(label) or rows.get(f"{label} (tuned)") or next(r for s in studies.values() for r in s["rows"]
                                          if label.startswith(r["variant"].replace(" (tuned)", ""))
                                          and r["study"] in label)
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
