"""q3r on a language model end to end, through the program a user runs, on a small text file
written here (a tiny GPT, a few dozen steps):

- train: metrics lines with train_bpb / test_bpb, the text run's data.* metadata, an epoch of
  --epoch-steps steps; resume (stopped twice, resumed) ends on the same model and checkpoint,
  bit for bit; another seed gives other weights;
- eval reproduces the run's final validation bits per byte from the model file alone; truncate
  keeps the data keys, and the truncated (factored) model evaluates; sweep reports bpb and
  bpb_increase (the untruncated row equals eval); spectrum reads the GPT file;
- sample: the same seed gives the same bytes, another seed others, greedy is deterministic,
  it works on the truncated model, and it slides its window past the context;
- bad input: a missing, directory, empty or too-short text file, a validation split with no
  window, override flags the model lacks, flags of the other kind of data, sample on a
  non-language model, a prompt longer than the context, bad sample flags: each exits non-zero
  with a message naming the file or flag, and leaves nothing in --out."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
from q3r_testing import Q3R, Checks, run_q3r, write_corpus  # noqa: E402

check = Checks()
CONTEXT = 32


def tensors(path):
    return safetensors_np.read(path)[0]


def same_tensors(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def expect_error(args, needle, what, out=None):
    p = run_q3r(args)
    check(p.returncode != 0, f"{what}: exit {p.returncode}")
    check(needle in p.stderr, f"{what}: stderr {p.stderr!r} lacks {needle!r}")
    if out is not None:
        check(not os.path.exists(out), f"{what}: {out} left behind")
    return p


tmp = tempfile.mkdtemp(prefix="q3r-text-test-")
try:
    text = write_corpus(os.path.join(tmp, "corpus.txt"), 7, 4000)
    TINY = ["train", "--model", "gpt-tiny", "--data", text, "--width", "32", "--depth", "2", "--heads", "2",
            "--mlp", "64", "--context", str(CONTEXT), "--batch", "8", "--epochs", "2", "--epoch-steps", "12",
            "--val-windows", "20", "--threads", "2", "--quiet", "--log-every", "1", "--period", "3"]

    # --- train, resume ------------------------------------------------------------------------
    full, part, other = (os.path.join(tmp, d) for d in ("full", "part", "other"))
    p = run_q3r(TINY + ["--out", full, "--json"], expect_ok=True)
    check(p.returncode == 0, "uninterrupted run")
    summary = json.loads(p.stdout) if p.returncode == 0 else {}
    check(summary.get("steps") == 24 and summary.get("finished"), f"24 steps: {summary}")
    check("test_bpb" in summary and 0 < summary["test_bpb"] < 9, f"summary has test_bpb: {summary}")
    log = lines(os.path.join(full, "metrics.jsonl"))
    epochs = [x for x in log if x["event"] == "epoch"]
    check(len(epochs) == 2 and all("train_bpb" in e and "test_bpb" in e for e in epochs),
          "epoch lines carry train_bpb and test_bpb")
    check(epochs and epochs[0]["step"] == 12, "an epoch is --epoch-steps steps")
    meta = safetensors_np.read(os.path.join(full, "model.safetensors"))[1]
    check(meta.get("data.kind") == "text" and meta.get("data.path") == os.path.realpath(text),
          f"data.kind and data.path in the model file: {meta.get('data.kind')}, {meta.get('data.path')}")
    check(meta.get("data.context") == str(CONTEXT) and meta.get("data.val_windows") == "20",
          "data.context and data.val_windows")
    n = os.path.getsize(text)
    check(meta.get("data.val_bytes") == str(n // 10), "default validation: the last 10%")

    p1 = run_q3r(TINY + ["--out", part, "--stop-after", "5"])
    p2 = run_q3r(TINY + ["--out", part, "--stop-after", "10", "--resume"])
    p3 = run_q3r(TINY + ["--out", part, "--resume"])
    check(p1.returncode == 0 and p2.returncode == 0 and p3.returncode == 0, "interrupted runs")
    check(same_tensors(tensors(os.path.join(full, "model.safetensors")), tensors(os.path.join(part, "model.safetensors"))),
          "resumed final weights equal the uninterrupted run's bit for bit")
    ck = tensors(os.path.join(full, "checkpoint.safetensors"))
    check(same_tensors(ck, tensors(os.path.join(part, "checkpoint.safetensors"))),
          "final checkpoints (Adam, Q3R, data position, RNG) equal bit for bit")
    check("data.step" in ck and "data.seed" in ck, "checkpoint holds the text stream's position")
    p = run_q3r(TINY + ["--out", other, "--seed", "2"], expect_ok=True)
    check(p.returncode == 0 and not same_tensors(tensors(os.path.join(full, "model.safetensors")),
                                                 tensors(os.path.join(other, "model.safetensors"))),
          "another seed: other weights")
    p = run_q3r(TINY + ["--out", part, "--resume", "--val-fraction", "0.2"])
    check(p.returncode != 0 and "val_fraction" in p.stderr, f"resume with another split refused: {p.stderr!r}")

    # --- eval, truncate, sweep, spectrum --------------------------------------------------------
    model = os.path.join(full, "model.safetensors")
    p = run_q3r(["eval", model, "--json", "--threads", "2"], expect_ok=True)
    ev = json.loads(p.stdout) if p.returncode == 0 else {}
    check(ev.get("windows") == 20 and ev.get("n") == 20 * CONTEXT, f"eval scores the run's windows: {ev}")
    check(abs(ev.get("bpb", -1) - summary.get("test_bpb", -2)) < 1e-5,
          f"eval reproduces the run's bpb: {ev.get('bpb')} vs {summary.get('test_bpb')}")
    trunc = os.path.join(tmp, "trunc.safetensors")
    p = run_q3r(["truncate", model, trunc, "--targets", "qkv,fc1", "--rank", "0.3"], expect_ok=True)
    check(p.returncode == 0, "truncate a GPT")
    tm = safetensors_np.read(trunc)[1]
    check(tm.get("data.kind") == "text" and "model.ranks" in tm, "the truncated file keeps the text run's keys")
    p = run_q3r(["eval", trunc, "--json"], expect_ok=True)
    check(p.returncode == 0 and "bpb" in json.loads(p.stdout or "{}"), "the truncated model evaluates")
    sj = os.path.join(tmp, "sweep.json")
    p = run_q3r(["sweep", model, "--ps", "1,0.5,0.1", "--json", sj, "--threads", "2"], expect_ok=True)
    check(p.returncode == 0 and "bits per byte" in p.stdout and "+bpb" in p.stdout, f"sweep table: {p.stdout!r}")
    if p.returncode == 0:
        with open(sj) as f:
            sw = json.load(f)
        base = sw["untruncated"]
        check("bpb" in base and "bpb_increase" in base and "acc" not in base, "sweep JSON names bpb")
        check(abs(base["bpb"] - ev.get("bpb", 0)) < 1e-5, "sweep's untruncated bpb equals eval's")
        check(all(abs(r["bpb_increase"] - (r["bpb"] - base["bpb"])) < 1e-6 for r in sw["rows"]),
              "bpb_increase = bpb - untruncated bpb")
    p = run_q3r(["spectrum", model], expect_ok=True)
    check(p.returncode == 0 and "transformer.h.0.attn.c_attn.weight" in p.stdout, "spectrum of a GPT file")

    # --- sample ---------------------------------------------------------------------------------
    def sample(path, *args):
        """q3r sample; stdout as bytes (the model may draw any byte)."""
        return subprocess.run([Q3R, "sample", path, "--tokens", "80"] + list(args), capture_output=True)

    a, b, c = sample(model, "--seed", "3"), sample(model, "--seed", "3"), sample(model, "--seed", "4")
    check(a.returncode == 0 and a.stdout == b.stdout, "sample: same seed, same bytes")
    check(a.stdout != c.stdout, "sample: another seed, other bytes")
    check(len(a.stdout) == 81 and a.stdout.startswith(b"\n"), "sample: the newline prompt, then 80 bytes")
    g1, g2 = sample(model, "--temperature", "0", "--prompt", "in the"), sample(model, "--temperature", "0",
                                                                              "--prompt", "in the", "--seed", "9")
    check(g1.returncode == 0 and g1.stdout == g2.stdout and g1.stdout.startswith(b"in the"),
          "greedy: deterministic whatever the seed, prompt echoed")
    k = sample(trunc, "--top-k", "3", "--seed", "5")
    check(k.returncode == 0, f"sample a truncated (factored) model: {k.stderr!r}")
    long = subprocess.run([Q3R, "sample", model, "--tokens", str(3 * CONTEXT), "--seed", "2"], capture_output=True)
    check(long.returncode == 0 and len(long.stdout) == 3 * CONTEXT + 1, "sample past the context: the window slides")
    expect_error(["sample", model, "--prompt", "x" * (CONTEXT + 1)], "longer than the model's context",
                 "prompt longer than the context")
    expect_error(["sample", model, "--temperature", "-1"], "--temperature", "negative temperature")
    expect_error(["sample", model, "--top-k", "abc"], "--top-k", "bad --top-k")
    expect_error(["sample", os.path.join(tmp, "nope.safetensors")], "nope.safetensors", "missing model file")

    # --- bad input --------------------------------------------------------------------------------
    def bad_train(data, needle, what, extra=()):
        out = os.path.join(tmp, "bad-" + what.replace(" ", "-"))
        expect_error(TINY + ["--data", data, "--out", out] + list(extra), needle, what, out)

    missing = os.path.join(tmp, "missing.txt")
    bad_train(missing, missing, "missing text file")
    bad_train(tmp, "is a directory", "directory as text file")
    empty = os.path.join(tmp, "empty.txt")
    open(empty, "w").close()
    bad_train(empty, "empty", "empty text file")
    short = os.path.join(tmp, "short.txt")
    with open(short, "w") as f:
        f.write("x" * CONTEXT)
    bad_train(short, short, "text shorter than a window")
    small = os.path.join(tmp, "small.txt")
    with open(small, "w") as f:
        f.write("ab" * 100)  # 200 bytes: validation 20 < 33
    bad_train(small, "validation split", "validation split without a window")
    bad_train(text, "--patch", "patch on a GPT", ["--patch", "4"])
    bad_train(text, "--dataset", "dataset on a GPT", ["--dataset", "mnist"])
    out = os.path.join(tmp, "bad-vit")
    expect_error(["train", "--data", text, "--out", out, "--quiet"], "--data", "--data on a ViT", out)
    expect_error(["train", "--context", "16", "--out", out, "--quiet"], "--context", "--context on a ViT", out)
    # a ViT model file for sample's refusal: the file needs only a ViT's config and weights
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):
        vit = os.path.join(tmp, "vit")
        p = run_q3r(["train", "--width", "8", "--depth", "1", "--heads", "1", "--mlp", "8", "--train-limit", "64",
                     "--test-limit", "64", "--batch", "64", "--epochs", "1", "--quiet", "--out", vit], expect_ok=True)
        expect_error(["sample", os.path.join(vit, "model.safetensors")], "is a vit model; sample needs a language model",
                     "sample on a ViT")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
