"""
What the test files share: a deadline for every test, child processes that die with their test, the one
DDP harness, test matrices with a known spectrum, and the GPU of the CUDA tests. pytest loads this file by
itself.

    python -m pytest -q
    python -m pytest -q -k cuda     # the CUDA smoke test, on a GPU machine (skipped, with why, elsewhere)
"""

import contextlib
import datetime
import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

DEADLINE = 900  # seconds a test may run: far above what any takes here, even when busy, far below CI's limit
GROUPS = set()  # process groups of the children now running, for the deadline to kill


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): a longer deadline than the default for this test")


# ---- deadlines: a test that hangs fails the run, it does not hold CI ----


def descendants(pid):
    """The processes started under pid, at any depth (Linux's /proc): torchrun starts each rank in a session of
    its own, out of reach of its process group."""
    children = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                children.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_group(pgid):
    """SIGKILL to the group and to everything started under its leader (found first: a dead leader's children
    are no longer its)."""
    below = descendants(pgid)
    for kill, target in [(os.killpg, pgid)] + [(os.kill, pid) for pid in below]:
        with contextlib.suppress(ProcessLookupError):
            kill(target, signal.SIGKILL)


def kill_children():
    for pgid in list(GROUPS):
        kill_group(pgid)
    for p in multiprocessing.active_children():  # pool workers and DDP ranks
        p.kill()


def expire(config, nodeid, seconds):
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture:  # the report must reach the real stderr, not pytest's capture of it, which dies with us
        capture.suspend()
    print(f"\n{nodeid} ran past its deadline of {seconds}s; its threads were at:",
          file=sys.stderr, flush=True)
    faulthandler.dump_traceback(all_threads=True)
    kill_children()
    # the only way out of a thread stuck in a lock: end the run, with the stacks above as the report
    os._exit(1)


@pytest.fixture(autouse=True)
def deadline(request):
    marker = request.node.get_closest_marker("deadline")
    seconds = marker.args[0] if marker else DEADLINE
    timer = threading.Timer(seconds, expire, (request.config, request.node.nodeid, seconds))
    timer.daemon = True
    timer.start()
    # in case the timer's thread never gets the GIL
    faulthandler.dump_traceback_later(seconds + 60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()
    timer.cancel()


# ---- child processes ----


@contextlib.contextmanager
def started(cmd, **kw):
    """Popen in a process group of its own; the group (pool workers, torchrun's ranks) is killed when the
    block ends, however it ends. subprocess.run's timeout kills only the child and leaves the rest running."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    GROUPS.add(proc.pid)
    try:
        yield proc
    finally:
        kill_group(proc.pid)
        proc.wait()
        GROUPS.discard(proc.pid)


def run(cmd, timeout, **kw):
    """subprocess.run(capture_output=True, text=True) whose timeout fails the test and kills the group."""
    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(map(str, cmd))[:200]} ran past {timeout}s")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def wait_for_line(proc, prefix, timeout):
    """Read proc's stdout until a line starts with prefix; fail at the deadline, not whenever it prints."""
    lines = queue.Queue()

    def read():  # in a thread, so that the wait below can give up
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    end = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line starting with {prefix!r} within {timeout}s")
        if line is None:
            pytest.fail(f"the process exited (status {proc.wait()}) before printing a line "
                        f"starting with {prefix!r}")
        if line.startswith(prefix):
            return line


# ---- the DDP harness: every 2-process gloo test runs through here ----


def ddp_rank(worker, rank, world, store, timeout, args):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))  # gloo's default would be 30 minutes
    worker(rank, world, *args)
    dist.barrier()  # nobody tears down while a peer still talks: gloo can abort the process then
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter finalisation, where gloo's threads can still abort (SIGABRT)


def run_ddp(worker, *args, world=2, timeout=120):
    """worker(rank, world, *args) in `world` fresh processes joined by gloo. Fails the test if a rank fails
    or the deadline passes, and kills the other ranks then (they would wait for it in a collective)."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of pytest's threads
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=ddp_rank, args=(worker, r, world, store, timeout, args))
                 for r in range(world)]
        for p in procs:
            p.start()
        end = time.monotonic() + timeout
        try:
            running = procs
            while running and time.monotonic() < end and not any(p.exitcode for p in procs):
                multiprocessing.connection.wait([p.sentinel for p in running],
                                                timeout=max(0.0, end - time.monotonic()))
                running = [p for p in procs if p.exitcode is None]
        finally:
            for p in procs:
                if p.exitcode is None:
                    p.kill()
                p.join()
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world, (
        f"DDP ranks exited with {codes} (-N: signal N; ranks still running when one "
        f"failed or at the {timeout}s deadline are killed with signal 9)")


# ---- test matrices ----


def with_spectrum(rows, cols, s, seed=0, dtype=None):
    """A (rows, cols) matrix U diag(s) V^T with the given singular values (the rest zero),
    float32 by default."""
    import torch
    randn = lambda n, seed: torch.randn(n, len(s), generator=torch.Generator().manual_seed(seed)).double()
    u, _ = torch.linalg.qr(randn(rows, seed))
    v, _ = torch.linalg.qr(randn(cols, seed + 1))
    return ((u * torch.as_tensor(s, dtype=torch.float64)) @ v.T).to(dtype or torch.float32)


# ---- the CUDA tests: every test named *cuda* runs on the GPU; python -m pytest -q -k cuda selects them ----


@pytest.fixture(scope="session")
def cuda():
    """The device of a CUDA test, 'cuda'. Without one the test is skipped, with the reason; with one, a
    dependency it lacks fails it (the tests import them plainly), so that a GPU run checks everything."""
    import torch
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch sees none): run python -m pytest -q -k cuda on a GPU machine")
    return "cuda"


def pytest_terminal_summary(terminalreporter):
    """The reasons CUDA tests were skipped, on the console even under -q (which shows no reasons)."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        if "cuda" in report.nodeid.split("::")[-1].split("[")[0] and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in reasons.items():
        terminalreporter.write_line(f"{n} CUDA test{'s' * (n > 1)} skipped: {reason}")


# ---- data ----


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Small byte-level shards made by the embedded corpus builder, in a temporary directory."""
    import train
    d = str(tmp_path_factory.mktemp("data") / "pydoc")
    train.build_embedded_corpus(d)
    return d


def hf_tokenizer_file(path, specials=("<pad>", "</s>", "<unk>"), vocab_size=300):
    """A byte-level BPE tokenizer trained here (no network) and saved as path (a tokenizer.json). By default
    it has T5's special tokens, in T5's order: </s>, id 1, is its end-of-text, and like T5 it appends </s>
    to what it encodes with special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in specials else None))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = "the of and to in a is that for it was with on as by at from this be are or have not you but"
    tok.train_from_iterator([words] * 20, trainer)
    if "</s>" in specials:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                           special_tokens=[("</s>", specials.index("</s>"))])
    tok.save(str(path))
    return str(path)
