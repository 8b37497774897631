"""Data-parallel training under mpirun (Open MPI), through the program a user runs.

- collectives: the all-reduce sums in rank order (bit for bit), broadcast, barrier
  (tests/tool_mpi.c, 2 and 3 ranks);
- split refresh: q3r_set_refresh_comm gives every rank the state of a one-process refresh,
  bit for bit (tool_mpi, 2 and 3 ranks);
- 1, 2 and 3 ranks on the same global batch (3: the batch of 40 splits 14/13/13, the last
  batch of an epoch unevenly too): the same loss curve and final weights within fp32 rounding,
  for every method (decoupled, coupled, nuclear, none, lorita, factorized); `mpirun -np 1`
  gives the bits of a plain run; rank 0 alone writes;
- the byte-level GPT likewise on 1, 2 and 3 ranks (the validation windows split over the ranks);
- repeated runs with the same N give identical files;
- killing one rank mid-run (SIGKILL): mpirun ends the job with a message naming the killed
  process, within a timeout (no hang); --resume with the same N then ends on the bits of an
  uninterrupted run, and with another N finishes close to it.

Skips (77) without an MPI build (Q3R_MPI) or mpirun. Open MPI's own allocations are
suppressed for LeakSanitizer (tests/lsan-openmpi.supp), not ours.
q3r-ctest-label: mpi"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import BINDIR, FASHION_MNIST, Q3R, Checks, skip_without_fashion_mnist  # noqa: E402

if os.environ.get("Q3R_MPI", "0").upper() not in ("1", "ON", "TRUE"):
    print("test_mpi: skipped (built without MPI)")
    sys.exit(77)
MPIRUN = os.environ.get("Q3R_MPIEXEC") or shutil.which("mpirun")
if not MPIRUN or not os.path.exists(MPIRUN):
    print("test_mpi: skipped (no mpirun)")
    sys.exit(77)
skip_without_fashion_mnist("test_mpi")

import numpy as np  # noqa: E402

import safetensors_np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
           OMPI_MCA_rmaps_base_oversubscribe="1")
# Under LeakSanitizer: suppress Open MPI's own allocations by library name. For the names to be
# seen, stacks are unwound fully (Open MPI has no frame pointers: the fast unwinder stops at
# its first frame) and its plugins stay loaded until exit (a dlclose'd plugin's frames are
# "<unknown module>"). Our own leaks keep their stacks, which name no Open MPI library.
supp = os.path.join(HERE, "lsan-openmpi.supp")
ENV["LSAN_OPTIONS"] = (ENV.get("LSAN_OPTIONS", "") + f":suppressions={supp}").lstrip(":")
if ENV.get("ASAN_OPTIONS"):
    ENV["ASAN_OPTIONS"] += ":fast_unwind_on_malloc=0"
ENV["OMPI_MCA_mca_base_component_disable_dlclose"] = "1"
ENV["PMIX_MCA_mca_base_component_disable_dlclose"] = "1"
TIMEOUT = 300  # per command: a hang fails the test instead of blocking ctest
TINY = ["train", "--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64", "--train-limit", "200",
        "--test-limit", "100", "--batch", "40", "--epochs", "2", "--threads", "1", "--quiet", "--log-every", "1",
        "--overwrite"]
METHODS = {"decoupled": [], "coupled": ["--reg", "coupled"], "nuclear": ["--reg", "nuclear", "--lambda", "0.05"],
           "none": ["--reg", "none"], "lorita": ["--reg", "lorita"], "factorized": ["--reg", "factorized"],
           "budget": ["--targets", "all", "--rank", "budget:0.3@0.3"],
           "budget-loss": ["--targets", "all", "--rank", "budget:0.3@0.3", "--budget-rule", "loss",
                           "--loss-samples", "16", "--loss-points", "3"]}
check = Checks()


def mpirun(n, args):
    return [MPIRUN, "--oversubscribe", "-np", str(n)] + list(args)


def run(n, args, out):
    """q3r with n ranks (n = 0: no mpirun at all) into out; returns the process."""
    cmd = ([Q3R] if n == 0 else mpirun(n, [Q3R])) + list(args) + ["--out", out]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    if p.returncode != 0:
        print("command failed:", " ".join(cmd), "\n", p.stderr[-3000:])
    print(f"  {n} ranks {' '.join(args[-4:])}: {time.time() - t0:.1f} s")
    return p


def steps(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return [(d["step"], d["loss"]) for d in lines if d["event"] == "step"], [d for d in lines if d["event"] == "epoch"]


def weights(out, name="model.safetensors"):
    return safetensors_np.read(os.path.join(out, name))[0]


def close(a, b, tol):
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=0, atol=tol) for k in a)


def same(a, b):  # bit for bit (NaN state entries included)
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def tool(mode):
    path = os.path.join(BINDIR, "tool_mpi")
    for n in (2, 3):
        p = subprocess.run(mpirun(n, [path, mode]), capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
        ok = p.returncode == 0 and p.stdout.count(": ok") == n
        check(ok, f"tool_mpi {mode} on {n} ranks: {p.stdout} {p.stderr[-2000:]}")


def equivalence(tmp):
    for method, extra in METHODS.items():
        ranks = (0, 1, 2, 3) if method == "decoupled" else (0, 3)
        outs = {}
        for n in ranks:
            outs[n] = os.path.join(tmp, f"{method}-{n}")
            p = run(n, TINY + extra, outs[n])
            check(p.returncode == 0, f"{method} on {n} ranks ran")
        if not all(os.path.exists(os.path.join(o, "model.safetensors")) for o in outs.values()):
            continue
        ref_steps, ref_epochs = steps(outs[0])
        ref_w = weights(outs[0])
        for n in ranks[1:]:
            st, ep = steps(outs[n])
            check([s for s, _ in st] == [s for s, _ in ref_steps], f"{method} {n} ranks: the same logged steps")
            check(np.allclose([v for _, v in st], [v for _, v in ref_steps], rtol=1e-4, atol=0),
                  f"{method} {n} ranks: loss curve {[v for _, v in st][:4]} against {[v for _, v in ref_steps][:4]}")
            check(len(ep) == len(ref_epochs) and all(
                abs(a["test_acc"] - b["test_acc"]) <= 0.011 and abs(a["test_loss"] - b["test_loss"]) < 1e-3
                for a, b in zip(ep, ref_epochs)), f"{method} {n} ranks: epoch metrics")
            w = weights(outs[n])
            diff = max(float(np.max(np.abs(w[k] - ref_w[k]))) for k in w) if w.keys() == ref_w.keys() else -1
            check(0 <= diff <= 1e-4, f"{method} {n} ranks: final weights within fp32 rounding (max diff {diff})")
        if 1 in outs:
            check(same(weights(outs[1]), ref_w), f"{method}: mpirun -np 1 gives the bits of a plain run")
        if method.startswith("budget"):  # the ranks chosen at step 5 (rank 0's, broadcast) are one process's
            ranks_of = {n: safetensors_np.read(os.path.join(o, "model.safetensors"))[1].get("q3r.budget_ranks")
                        for n, o in outs.items()}
            check(ranks_of[0] and len(set(ranks_of.values())) == 1, f"budget ranks on 1 and 3 ranks: {ranks_of}")
    # rank 0 alone writes: exactly the run's files (the checkpoint and the one before it)
    o3 = os.path.join(tmp, "decoupled-3")
    check(sorted(os.listdir(o3)) == ["checkpoint.prev.safetensors", "checkpoint.safetensors", "metrics.jsonl",
                                     "model.safetensors"],
          f"3 ranks wrote {sorted(os.listdir(o3))}")
    with open(os.path.join(o3, "metrics.jsonl")) as f:
        starts = sum(1 for line in f if '"event":"start"' in line.replace(" ", ""))
    check(starts == 1, f"one writer: {starts} start lines")


def gpt(tmp):
    """The byte-level GPT through the same path: 1, 2 and 3 ranks (windows of 24 bytes, a global
    batch of 10: 4/3/3 on 3 ranks) give the loss curve and weights of one process within fp32
    rounding, the validation score split over the ranks included; -np 1 gives its bits."""
    rng = np.random.default_rng(9)
    words = [b"the", b"lord", b"said", b"unto", b"moses", b"and", b"he", b"went", b"up", b"into"]
    text = b" ".join(words[i] for i in rng.integers(0, len(words), 3000)) + b"\n"
    path = os.path.join(tmp, "words.txt")
    with open(path, "wb") as f:
        f.write(text)
    args = ["train", "--model", "gpt-tiny", "--width", "32", "--depth", "2", "--heads", "2", "--context", "24",
            "--data", path, "--batch", "10", "--epochs", "2", "--epoch-steps", "6", "--val-windows", "31",
            "--threads", "1", "--quiet", "--log-every", "1", "--overwrite"]
    outs = {n: os.path.join(tmp, f"gpt-{n}") for n in (0, 1, 2, 3)}
    for n, o in outs.items():
        check(run(n, args, o).returncode == 0, f"gpt on {n} ranks ran")
    if not all(os.path.exists(os.path.join(o, "model.safetensors")) for o in outs.values()):
        return
    ref_steps, ref_epochs = steps(outs[0])
    ref_w = weights(outs[0])
    for n in (2, 3):
        st, ep = steps(outs[n])
        check(np.allclose([v for _, v in st], [v for _, v in ref_steps], rtol=1e-4, atol=0),
              f"gpt {n} ranks: loss curve {[v for _, v in st][:4]} against {[v for _, v in ref_steps][:4]}")
        check(len(ep) == len(ref_epochs) and all(abs(a["test_bpb"] - b["test_bpb"]) < 1e-4 for a, b in zip(ep, ref_epochs)),
              f"gpt {n} ranks: validation bits per byte {[e['test_bpb'] for e in ep]} against "
              f"{[e['test_bpb'] for e in ref_epochs]}")
        w = weights(outs[n])
        diff = max(float(np.max(np.abs(w[k] - ref_w[k]))) for k in w) if w.keys() == ref_w.keys() else -1
        check(0 <= diff <= 1e-4, f"gpt {n} ranks: final weights within fp32 rounding (max diff {diff})")
    check(same(weights(outs[1]), ref_w), "gpt: mpirun -np 1 gives the bits of a plain run")


def repeatable(tmp):
    a, b = os.path.join(tmp, "rep-a"), os.path.join(tmp, "rep-b")
    for o in (a, b):
        check(run(3, TINY, o).returncode == 0, "3-rank run for repeatability")
    for name in ("model.safetensors", "checkpoint.safetensors"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            check(fa.read() == fb.read(), f"3 ranks twice: identical {name}")
    strip = lambda o: [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}  # noqa: E731
                       for line in open(os.path.join(o, "metrics.jsonl"))]
    check(strip(a) == strip(b), "3 ranks twice: identical metrics")


def rank_pids(parent):
    """pid -> OMPI_COMM_WORLD_RANK of parent's descendants."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"OMPI_COMM_WORLD_RANK" in env:
            found[int(d)] = int(env[b"OMPI_COMM_WORLD_RANK"])
    return found


def kill_and_resume(tmp):
    args = TINY[:]
    args[args.index("--train-limit") + 1] = "1200"  # 30 steps an epoch, 60 in all
    args += ["--checkpoint-every", "5"]
    ref, out = os.path.join(tmp, "kill-ref"), os.path.join(tmp, "kill")
    check(run(3, args, ref).returncode == 0, "uninterrupted 3-rank run")
    cmd = mpirun(3, [Q3R]) + args + ["--out", out]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    log, killed, t0 = os.path.join(out, "metrics.jsonl"), None, time.time()
    while p.poll() is None and time.time() - t0 < TIMEOUT and killed is None:
        try:
            with open(log) as f:
                done = [json.loads(line)["step"] for line in f if '"event":"step"' in line]
        except (OSError, ValueError):
            done = []
        if done and done[-1] >= 12:
            pids = [pid for pid, r in rank_pids(p.pid).items() if r == 1]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = time.time()
        time.sleep(0.01)
    check(killed is not None, "killed rank 1 mid-run")
    try:
        _, err = p.communicate(timeout=60)
        ended = time.time() - (killed or t0)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        ended = None
    check(ended is not None, "the job ended after the kill (no hang)")
    print(f"  the job ended {ended if ended is None else round(ended, 2)} s after the kill, exit {p.returncode}")
    check(p.returncode != 0, f"the killed job exits non-zero ({p.returncode})")
    check("signal 9" in err or "Killed" in err, f"a clear message names the kill: {err[-1500:]}")
    with open(log) as f:
        last = [json.loads(line)["step"] for line in f if '"event":"step"' in line][-1]
    check(last < 60, f"stopped mid-run (last step {last})")
    other = out + "-2ranks"
    shutil.copytree(out, other)
    resume = [a for a in args if a != "--overwrite"] + ["--resume"]
    check(run(3, resume, out).returncode == 0, "--resume on 3 ranks")
    check(same(weights(out), weights(ref)), "--resume on the same N ends on the uninterrupted run's bits")
    check(same(weights(out, "checkpoint.safetensors"), weights(ref, "checkpoint.safetensors")),
          "... and the same final checkpoint (optimizer, Q3R state, data position)")
    check(run(2, resume, other).returncode == 0, "--resume on 2 ranks")
    if os.path.exists(os.path.join(other, "model.safetensors")):
        check(close(weights(other), weights(ref), 1e-3), "--resume on another N finishes close to the run")


def main():
    t0 = time.time()
    tool("collectives")
    tool("refresh")
    tmp = tempfile.mkdtemp(prefix="q3r-mpi-")
    try:
        equivalence(tmp)
        gpt(tmp)
        repeatable(tmp)
        kill_and_resume(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"test_mpi: {time.time() - t0:.1f} s")
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
