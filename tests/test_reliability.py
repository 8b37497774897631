"""What q3r promises when things go wrong (docs/RELIABILITY.md), through the program a user runs,
on a tiny GPT trained here:

- a model holding a NaN (in Q/K/V, where the attention softmax once hid it, or elsewhere) is
  refused by eval, sample, truncate and sweep with a message naming the tensor, exit 1;
- an F16 or BF16 export of a model evaluates and truncates exactly as its values in F32;
- exit codes: a bad flag exits 2 before anything is read or made, a bad file exits 1;
- checkpoints: the previous one is kept as checkpoint.prev.safetensors; the CRC-32 in the
  metadata is recomputed here from the file (its definition, independently); a torn (cut) or
  corrupted checkpoint is passed over for the previous one, saying so, and the run still ends on
  the uninterrupted run's bits; a kill between the commit's two renames resumes from .next; with
  no intact checkpoint, resume refuses; with none at all it starts at step 0 if a run was
  started there (its metrics log exists), and refuses where none was;
- the kill test: the run killed with SIGKILL at 20 random moments (checkpoints every 2 steps, so
  some kills land in a checkpoint write) and resumed each time always resumes, loses at most one
  checkpoint interval, keeps a metrics log with each step once, and ends bit for bit on the
  uninterrupted run's model;
- a full disk (RLIMIT_FSIZE): a checkpoint write and a model write fail with a message naming
  the file, exit 1, and the files already there are intact and load;
- divergence: a loss that overflows stops the run naming the step and the loss, exit 1, and
  writes no checkpoint over the last good one."""
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402
from q3r_testing import Q3R, Checks, run_q3r, write_corpus  # noqa: E402

check = Checks()
DTYPE_CODE = {"F32": 0, "F64": 1, "I64": 2, "U8": 3, "F16": 4, "BF16": 5, "I32": 6, "I16": 7, "I8": 8, "BOOL": 9}


def raw_header(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def checkpoint_crc(path):
    """The checkpoint's CRC-32 by its definition (checkpoint.c): over the tensors in file order,
    each its name and a NUL, int64 [dtype, ndim, shape..., 0-padded to 4 dims], then its bytes."""
    header, data = raw_header(path)
    header.pop("__metadata__", None)
    c = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        shape = list(info["shape"])
        head = [DTYPE_CODE[info["dtype"]], len(shape)] + shape + [0] * (4 - len(shape))
        c = zlib.crc32(name.encode() + b"\0", c)
        c = zlib.crc32(struct.pack("<6q", *head), c)
        b, e = info["data_offsets"]
        c = zlib.crc32(data[b:e], c)
    return "%08x" % c


def same_file_tensors(a, b):
    ta, tb = safetensors_np.read(a)[0], safetensors_np.read(b)[0]
    return ta.keys() == tb.keys() and all(ta[k].tobytes() == tb[k].tobytes() for k in ta)


def ckpt_step(path):
    return int(safetensors_np.read(path)[0]["train.step"][0])


def steps_logged(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                x = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if x.get("event") == "step":
                out.append(x["step"])
    return out


def expect_fail(args, needles, what, code=1, **kw):
    p = run_q3r(args, **kw) if not kw.get("preexec_fn") else subprocess.run([Q3R] + args, capture_output=True,
                                                                            text=True, **kw)
    check(p.returncode == code, f"{what}: exit {p.returncode}, want {code} ({p.stderr.strip()!r})")
    for n in needles:
        check(n in p.stderr, f"{what}: stderr {p.stderr.strip()!r} lacks {n!r}")
    return p


tmp = tempfile.mkdtemp(prefix="q3r-reliability-")
try:
    text = write_corpus(os.path.join(tmp, "corpus.txt"), 7, 4000)
    TINY = ["train", "--model", "gpt-tiny", "--data", text, "--width", "32", "--depth", "2", "--heads", "2",
            "--mlp", "64", "--context", "32", "--batch", "8", "--epochs", "2", "--epoch-steps", "12",
            "--val-windows", "20", "--threads", "1", "--quiet", "--log-every", "1", "--period", "3",
            "--checkpoint-every", "2"]
    full = os.path.join(tmp, "full")
    t0 = time.time()
    p = run_q3r(TINY + ["--out", full], expect_ok=True)
    run_s = time.time() - t0
    check(p.returncode == 0, "the uninterrupted run")
    model = os.path.join(full, "model.safetensors")
    ck, prev = os.path.join(full, "checkpoint.safetensors"), os.path.join(full, "checkpoint.prev.safetensors")

    # --- non-finite weights ---------------------------------------------------------------------
    tensors, meta = safetensors_np.read(model)
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"):
        bad = dict(tensors)
        w = bad[name].copy()
        w[3, 5] = np.nan
        bad[name] = w
        path = os.path.join(tmp, "nan.safetensors")
        safetensors_np.write(path, bad, meta)
        for cmd in (["eval", path], ["sample", path, "--tokens", "5"],
                    ["truncate", path, os.path.join(tmp, "t.safetensors"), "--rank", "0.5"], ["sweep", path]):
            expect_fail(cmd, [name, "non-finite"], f"{cmd[0]} of a model with a NaN in {name}")
        check(not os.path.exists(os.path.join(tmp, "t.safetensors")), "truncate wrote nothing")
        w[3, 5] = np.inf
        safetensors_np.write(path, bad, meta)
        expect_fail(["eval", path], [name, "inf"], f"eval of a model with an Inf in {name}")

    # --- half-precision exports load as float models ------------------------------------------------
    def bf16_bits(w):  # round to nearest even, as torch's .bfloat16()
        b = w.astype(np.float32).view(np.uint32).astype(np.uint64)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)

    for dt in ("F16", "BF16"):
        half, rounded, dtypes = {}, {}, {}
        for name, w in tensors.items():
            if dt == "F16":
                half[name] = w.astype(np.float16)
                rounded[name] = half[name].astype(np.float32)
            else:
                half[name] = bf16_bits(w)
                dtypes[name] = "BF16"
                rounded[name] = (half[name].astype(np.uint32) << 16).view(np.float32)
        hp, rp = os.path.join(tmp, f"{dt}.safetensors"), os.path.join(tmp, f"{dt}-as-f32.safetensors")
        safetensors_np.write(hp, half, meta, dtypes=dtypes)
        safetensors_np.write(rp, rounded, meta)
        a, b = run_q3r(["eval", hp, "--json"]), run_q3r(["eval", rp, "--json"])
        check(a.returncode == 0 and b.returncode == 0 and json.loads(a.stdout)["bpb"] == json.loads(b.stdout)["bpb"],
              f"eval of a {dt} file equals eval of its values as F32 ({a.stderr.strip()!r})")
        ta, tb = os.path.join(tmp, "ta.safetensors"), os.path.join(tmp, "tb.safetensors")
        a = run_q3r(["truncate", hp, ta, "--rank", "0.5", "--targets", "all"])
        b = run_q3r(["truncate", rp, tb, "--rank", "0.5", "--targets", "all"])
        check(a.returncode == 0 and b.returncode == 0 and same_file_tensors(ta, tb),
              f"truncate of a {dt} file equals truncate of its values as F32")

    # --- exit codes -----------------------------------------------------------------------------
    out = os.path.join(tmp, "never")
    expect_fail(TINY + ["--out", out, "--rank", "7x"], ["--rank"], "train --rank 7x", code=2)
    expect_fail(TINY + ["--out", out, "--targets", "qvk"], ["--targets"], "train --targets qvk", code=2)
    expect_fail(["truncate", model, os.path.join(tmp, "t.safetensors"), "--rank", "7x"], ["--rank"],
                "truncate --rank 7x", code=2)
    expect_fail(["sweep", model, "--targets", "x"], ["--targets"], "sweep --targets x", code=2)
    expect_fail(["eval", os.path.join(tmp, "missing.safetensors")], ["missing.safetensors"], "eval of a missing file")
    expect_fail(TINY[:4] + [os.path.join(tmp, "missing.txt")] + TINY[5:] + ["--out", out], ["missing.txt"],
                "train on a missing text file")
    check(not os.path.exists(out), "refused runs leave no --out behind")

    # --- checkpoint rotation and checksum --------------------------------------------------------
    check(os.path.exists(prev) and ckpt_step(prev) == 22 and ckpt_step(ck) == 24,
          f"the previous checkpoint is kept: steps {ckpt_step(prev) if os.path.exists(prev) else None}, "
          f"{ckpt_step(ck)}")
    for path in (ck, prev):
        stored = safetensors_np.read(path)[1].get("checkpoint.crc32")
        check(stored == checkpoint_crc(path), f"{os.path.basename(path)}: CRC {stored} = {checkpoint_crc(path)}")

    def stopped_copy(name, stop=9):
        d = os.path.join(tmp, name)
        p = run_q3r(TINY + ["--out", d, "--stop-after", str(stop)], expect_ok=True)
        check(p.returncode == 0, f"{name}: stopped run")
        return d

    def resume(d, what, needles=()):
        p = run_q3r(TINY + ["--out", d, "--resume"])
        check(p.returncode == 0, f"{what}: resume exit {p.returncode} ({p.stderr.strip()!r})")
        for n in needles:
            check(n in p.stderr, f"{what}: stderr {p.stderr.strip()!r} lacks {n!r}")
        check(p.returncode == 0 and same_file_tensors(model, os.path.join(d, "model.safetensors")),
              f"{what}: the final model equals the uninterrupted run's bit for bit")
        steps = steps_logged(d)
        check(steps == list(range(1, 25)), f"{what}: each step logged once: {steps}")
        return p

    # stopped after 9 steps: checkpoints at 8 (.prev) and 9 (the stop's)
    d = stopped_copy("torn")
    c = os.path.join(d, "checkpoint.safetensors")
    check(ckpt_step(c) == 9 and ckpt_step(os.path.join(d, "checkpoint.prev.safetensors")) == 8, "steps 9 and 8")
    with open(c, "r+b") as f:
        f.truncate(os.path.getsize(c) // 2)
    resume(d, "a cut checkpoint", ["checkpoint.prev.safetensors (step 8)", "passing over", "checkpoint.safetensors"])

    d = stopped_copy("flipped")
    c = os.path.join(d, "checkpoint.safetensors")
    with open(c, "r+b") as f:
        f.seek(os.path.getsize(c) - 100)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))
    resume(d, "a corrupted checkpoint (one bit)", ["checksum", "checkpoint.prev.safetensors (step 8)"])

    d = stopped_copy("between-renames")  # a kill after .prev was made, before .next became the checkpoint
    os.rename(os.path.join(d, "checkpoint.safetensors"), os.path.join(d, "checkpoint.next.safetensors"))
    resume(d, "a commit cut between its renames", ["checkpoint.next.safetensors (step 9)"])

    d = stopped_copy("both-damaged")
    for n in ("checkpoint.safetensors", "checkpoint.prev.safetensors"):
        with open(os.path.join(d, n), "r+b") as f:
            f.truncate(100)
    before = sorted(os.listdir(d))
    expect_fail(TINY + ["--out", d, "--resume"], ["no intact checkpoint", "checkpoint.prev.safetensors"],
                "no intact checkpoint")
    check(sorted(os.listdir(d)) == before, "a refused resume changes nothing")

    d = os.path.join(tmp, "before-first-checkpoint")  # killed after its start line, before step 2
    os.mkdir(d)
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write('{"event":"start","step":0}\n{"event":"step","step":1,"loss":5.5}\n{"event":"st')
    resume(d, "a run killed before its first checkpoint", ["no checkpoint", "step 0"])
    d = os.path.join(tmp, "empty")
    os.mkdir(d)
    expect_fail(TINY + ["--out", d, "--resume"], ["holds no run"], "a resume where no run was started")
    check(os.listdir(d) == [], "a refused resume writes nothing")

    # --- the kill test ----------------------------------------------------------------------------
    # a longer run (3 epochs of 40 steps), killed 20 times, so that the kills fall all over the run
    # (most of its time goes to the checkpoints' fsyncs). Each try waits a random moment of up to
    # 1.6 times its share of what is left (the steps not yet logged, timed by the uninterrupted run,
    # split over the tries left): a fixed share of the uninterrupted run's time let the run finish
    # before the 20th try whenever the machine got faster after that timing (14 kills once in CI).
    KILL = [a if a != "12" else "40" for a in TINY]
    KILL[KILL.index("--epochs") + 1] = "3"
    kfull = os.path.join(tmp, "kill-full")
    t0 = time.time()
    check(run_q3r(KILL + ["--out", kfull], expect_ok=True).returncode == 0, "the kill test's uninterrupted run")
    kill_s = time.time() - t0
    d = os.path.join(tmp, "killed")
    kill_rnd = random.Random(12)
    worst_loss, in_commit, kills = 0, 0, 0
    prev_resume = 0
    for k in range(20):
        started = os.path.exists(os.path.join(d, "metrics.jsonl"))  # else no run to resume yet
        args = [Q3R] + KILL + ["--out", d] + (["--resume"] if started else ["--overwrite"])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        done = steps_logged(d)
        left = 1.0 - (max(done) if done else 0) / 120.0
        time.sleep(kill_rnd.uniform(0.02, max(0.03, 1.6 * kill_s * left / (20 - k))))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        err = proc.communicate()[1]
        if proc.returncode not in (0, -signal.SIGKILL):
            check(False, f"kill {k}: the run failed on its own: {err.strip()!r}")
        names = os.listdir(d) if os.path.exists(d) else []
        in_commit += any(".tmp" in n or ".next" in n for n in names)
        logged = steps_logged(d)
        last = max(logged) if logged else 0
        # where the next resume starts: the newest intact checkpoint (the program's own choice is
        # checked below through its final model and log)
        have = [ckpt_step(os.path.join(d, n)) for n in ("checkpoint.next.safetensors", "checkpoint.safetensors")
                if os.path.exists(os.path.join(d, n))]
        start = max(have) if have else 0
        worst_loss = max(worst_loss, last - start)
        check(start >= prev_resume, f"kill {k}: never resumes from before the last resume ({start} < {prev_resume})")
        prev_resume = start
    p = run_q3r(KILL + ["--out", d, "--resume"])
    check(p.returncode == 0, f"after {kills} kills: the run finishes ({p.stderr.strip()!r})")
    check(kills >= 15, f"most of the 20 tries killed a running process ({kills})")
    check(worst_loss <= 2, f"a kill loses at most one checkpoint interval (2 steps): worst {worst_loss}")
    check(same_file_tensors(os.path.join(kfull, "model.safetensors"), os.path.join(d, "model.safetensors")),
          "after 20 kills the final model equals the uninterrupted run's bit for bit")
    check(same_file_tensors(os.path.join(kfull, "checkpoint.safetensors"), os.path.join(d, "checkpoint.safetensors")),
          "and so does the final checkpoint")
    check(steps_logged(d) == list(range(1, 121)), f"each step logged once after the kills: {steps_logged(d)}")
    print(f"kill test: uninterrupted run {kill_s:.2f} s; {kills} kills, {in_commit} left a checkpoint write unfinished, worst loss {worst_loss} "
          f"steps")

    # --- a full disk ------------------------------------------------------------------------------
    d = stopped_copy("full-disk", stop=4)
    saved = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)}
    limit = os.path.getsize(os.path.join(d, "checkpoint.safetensors")) // 2

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    expect_fail(TINY + ["--out", d, "--resume"], ["checkpoint.next.safetensors", "File too large"],
                "a checkpoint write past the file-size limit", preexec_fn=small_disk)
    for n, b in saved.items():
        if n != "metrics.jsonl":  # the resume's own lines were logged before the write failed
            check(open(os.path.join(d, n), "rb").read() == b, f"full disk: {n} intact")
    check(not [n for n in os.listdir(d) if ".tmp" in n or ".next" in n], "full disk: no temporary left")
    resume(d, "after the full disk, with room again")
    trunc = os.path.join(tmp, "trunc.safetensors")
    run_q3r(["truncate", model, trunc, "--rank", "0.5"], expect_ok=True)
    old = open(trunc, "rb").read()
    limit = len(old) // 3
    expect_fail(["truncate", model, trunc, "--rank", "0.3"], [trunc, "File too large"],
                "a model write past the file-size limit", preexec_fn=small_disk)
    check(open(trunc, "rb").read() == old, "full disk: the model already there is intact")
    check(run_q3r(["eval", trunc]).returncode == 0, "and loads")

    # --- divergence -------------------------------------------------------------------------------
    # embeddings of 1e34: a finite (huge) loss and an overflowing gradient; of 3e38: the logits
    # overflow and the loss is NaN
    wte = tensors["transformer.wte.weight"]
    for what, value, needles in (("a gradient that overflows", wte * np.float32(1e36), ["gradient norm", "step 0"]),
                                 ("a loss that overflows", np.full_like(wte, 3e38), ["loss is", "step 0"])):
        bad = dict(tensors)
        bad["transformer.wte.weight"] = value.astype(np.float32)
        huge = os.path.join(tmp, "huge.safetensors")
        safetensors_np.write(huge, bad, meta)
        out = os.path.join(tmp, "diverged")
        expect_fail(["train", "--init", huge, "--data", text, "--epochs", "1", "--epoch-steps", "5", "--batch", "8",
                     "--val-windows", "20", "--quiet", "--threads", "1", "--out", out, "--overwrite"],
                    needles + ["diverged"], f"training from weights that overflow: {what}")
        check(not os.path.exists(os.path.join(out, "checkpoint.safetensors")), "a diverged run writes no checkpoint")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
