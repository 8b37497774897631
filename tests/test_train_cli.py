"""q3r train / q3r eval end to end, through the program a user runs.

- resume: a run interrupted twice (--stop-after) and resumed ends on the same weights, Adam
  moments and Q3R state, bit for bit, as the uninterrupted run; so do coupled, nuclear, LoRITa
  and factorized runs (the last two with their factors and the factors' Adam state, reparam.*);
  a LoRITa / factorized checkpoint records its mode, factors and rank, and refuses a resume
  with others;
- determinism: two runs with the same seed and threads give identical files; another seed
  does not;
- the spectra of a run without Q3R's refreshes (nuclear, LoRITa, factorized) in its last epoch
  line are those of its saved model (effective rank against numpy's SVD);
- q3r eval of the saved model reproduces the accuracy the training run reported;
- bad input: each case exits non-zero with a message naming the flag or file;
- a NaN loss stops the run with a message and leaves the last good checkpoint untouched.

Needs numpy only (no torch). Uses a tiny ViT on a Fashion-MNIST subset (about a minute).
q3r-ctest-label: slow (skipped in the sanitizer pass, where -O0 makes training crawl)"""
import gzip
import json
import math
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_np  # noqa: E402
from q3r_testing import Checks, run_q3r  # noqa: E402

TINY = ["train", "--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64", "--train-limit", "640",
        "--test-limit", "200", "--batch", "64", "--epochs", "2", "--threads", "2", "--quiet",
        "--log-every", "1"]
check = Checks()


def run(args, expect_ok=True):
    return run_q3r(args, expect_ok=expect_ok)


def tensors(path):
    return safetensors_np.read(path)[0]


def same_tensors(a, b):
    if a.keys() != b.keys():
        return False
    return all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


tmp = tempfile.mkdtemp(prefix="q3r-train-test-")
summaries = {}
try:
    # --- resume, decoupled (AdamQ3R) and coupled ---------------------------------------------
    for mode in ("decoupled", "coupled", "nuclear", "lorita", "factorized"):
        full, part = os.path.join(tmp, f"full-{mode}"), os.path.join(tmp, f"part-{mode}")
        extra = ["--reg", mode, "--period", "3"] + (["--lambda", "0.5"] if mode == "nuclear" else [])
        if mode in ("lorita", "factorized"):
            extra = ["--reg", mode, "--targets", "qkv,fc2"] + (["--rank", "0.3"] if mode == "factorized" else [])
        p = run(TINY + extra + ["--out", full, "--json"])
        check(p.returncode == 0, f"{mode}: uninterrupted run")
        summary_full = json.loads(p.stdout)
        summaries[mode] = summary_full
        p1 = run(TINY + extra + ["--out", part, "--stop-after", "7"])
        p2 = run(TINY + extra + ["--out", part, "--stop-after", "9", "--resume"])
        p3 = run(TINY + extra + ["--out", part, "--resume", "--json"])
        check(p1.returncode == 0 and p2.returncode == 0 and p3.returncode == 0, f"{mode}: interrupted runs")
        check("stopped after step 7" in p1.stdout, f"{mode}: first part stops at step 7: {p1.stdout!r}")
        check(not os.path.exists(os.path.join(part, "model.safetensors")) or p3.returncode == 0,
              f"{mode}: no final model before the run ends")
        a, b = tensors(os.path.join(full, "model.safetensors")), tensors(os.path.join(part, "model.safetensors"))
        check(same_tensors(a, b), f"{mode}: resumed final weights equal the uninterrupted run's bit for bit")
        ca = tensors(os.path.join(full, "checkpoint.safetensors"))
        cb = tensors(os.path.join(part, "checkpoint.safetensors"))
        check(same_tensors(ca, cb), f"{mode}: final checkpoints (Adam, Q3R, data, RNG) equal bit for bit")
        check(any(k.startswith("q3r.") for k in ca), f"{mode}: checkpoint holds the Q3R state")
        if mode in ("lorita", "factorized"):
            check("reparam.optim.m" in ca and "reparam.blocks.1.mlp.fc2.1" in ca,
                  f"{mode}: checkpoint holds the factors and their Adam state")
        check(any(k.startswith("optim.") for k in ca), f"{mode}: checkpoint holds the optimizer state")
        summary_part = json.loads(p3.stdout)
        check(summary_part["test_acc"] == summary_full["test_acc"], f"{mode}: same final accuracy")
        # The metrics log of the resumed run has every step once.
        steps = [json.loads(l)["step"] for l in open(os.path.join(part, "metrics.jsonl"))
                 if json.loads(l)["event"] == "step"]
        check(steps == list(range(1, 21)), f"{mode}: resumed log has steps 1..20 once each: {steps}")

    # --- epoch spectra of the methods without Q3R refreshes: the saved model's ------------------------
    def matrix(w, name):
        if name.rsplit(".", 1)[-1] in "qkv":
            base, j = name.rsplit(".", 1)
            m = w[base + ".qkv.weight"]
            d = m.shape[0] // 3
            return m["qkv".index(j) * d:("qkv".index(j) + 1) * d]
        return w[name + ".weight"]

    for mode in ("nuclear", "lorita", "factorized"):
        lines = [json.loads(l) for l in open(os.path.join(tmp, f"full-{mode}", "metrics.jsonl"))]
        names = next(l for l in lines if l["event"] == "start")["matrices"].split(",")
        last = [l for l in lines if l["event"] == "epoch"][-1]
        w = tensors(os.path.join(tmp, f"full-{mode}", "model.safetensors"))
        worst = 0.0
        for name, er in zip(names, last["effective_rank"]):
            sv = np.linalg.svd(matrix(w, name).astype(np.float64), compute_uv=False)
            pr = sv / sv.sum()
            pr = pr[pr > 0]
            want = math.exp(-(pr * np.log(pr)).sum())
            worst = max(worst, abs(er - want) / want if er is not None else math.inf)  # null: never refreshed
        check(len(names) == len(last["effective_rank"]) and worst < 1e-4,
              f"{mode}: last epoch's effective ranks are the saved model's (worst relative diff {worst:.1e})")

    # --- LoRITa / factorized: metadata, the collapsed model, resume checks ----------------------------
    _, meta = safetensors_np.read(os.path.join(tmp, "full-lorita", "model.safetensors"))
    check(meta.get("q3r.mode") == "lorita" and meta.get("q3r.factors") == "3",
          f"lorita: model metadata records mode and factors: {meta.get('q3r.mode')}, {meta.get('q3r.factors')}")
    lm = tensors(os.path.join(tmp, "full-lorita", "model.safetensors"))
    check(not any(k.startswith("reparam.") for k in lm) and "blocks.0.attn.qkv.weight" in lm,
          "lorita: model.safetensors holds dense (collapsed) matrices only")
    ck = tensors(os.path.join(tmp, "full-lorita", "checkpoint.safetensors"))
    f = [ck[f"reparam.blocks.1.attn.v.{k}"].astype(np.float64) for k in range(3)]
    prod = f[0] @ f[1] @ f[2]
    d = np.abs(prod - lm["blocks.1.attn.qkv.weight"][64:96].astype(np.float64)).max()
    check(d < 1e-5 * np.abs(prod).max(), f"lorita: saved V block is the factors' product (max diff {d:.1e})")
    fm = tensors(os.path.join(tmp, "full-factorized", "model.safetensors"))
    sv = np.linalg.svd(fm["blocks.0.mlp.fc2.weight"].astype(np.float64), compute_uv=False)
    r = int(0.3 * 32 * 64 / 96)
    check(sv[r] < 1e-5 * sv[0], f"factorized: saved fc2 has rank <= {r}: sigma_{r + 1}/sigma_1 = {sv[r] / sv[0]:.1e}")
    p = run(["eval", os.path.join(tmp, "full-lorita", "model.safetensors"), "--limit", "200", "--json"])
    check(p.returncode == 0 and abs(json.loads(p.stdout)["acc"] - summaries["lorita"]["test_acc"]) < 1e-12,
          "lorita: q3r eval of the collapsed model reproduces the run's accuracy")

    # --- determinism -----------------------------------------------------------------------------
    d1, d2, d3 = (os.path.join(tmp, n) for n in ("det1", "det2", "det3"))
    run(TINY + ["--out", d1, "--epochs", "1"])
    run(TINY + ["--out", d2, "--epochs", "1"])
    run(TINY + ["--out", d3, "--epochs", "1", "--seed", "2"])
    m1, m2, m3 = (tensors(os.path.join(d, "model.safetensors")) for d in (d1, d2, d3))
    check(same_tensors(m1, m2), "same seed and threads: identical weights")
    check(not same_tensors(m1, m3), "another seed: different weights")

    # --- eval reproduces the training run's accuracy -----------------------------------------------
    full = os.path.join(tmp, "full-decoupled")
    p = run(["eval", os.path.join(full, "model.safetensors"), "--limit", "200", "--json"])
    check(p.returncode == 0, "q3r eval runs")
    if p.returncode == 0:
        ev = json.loads(p.stdout)
        want = summaries["decoupled"]["test_acc"]
        check(abs(ev["acc"] - want) < 1e-12, f"eval accuracy {ev['acc']} equals training's {want}")
    odd = os.path.join(tmp, 'a "quoted" \\ name.safetensors')  # --json escapes the file name
    shutil.copy(os.path.join(full, "model.safetensors"), odd)
    p = run(["eval", odd, "--limit", "50", "--json"])
    try:
        check(p.returncode == 0 and json.loads(p.stdout)["model"] == odd, "eval --json: an odd file name escaped")
    except ValueError:
        check(False, f"eval --json: invalid JSON for an odd file name: {p.stdout!r}")

    # --- bad input ---------------------------------------------------------------------------------
    def bad(args, needle, what):
        p = run(args, expect_ok=False)
        check(p.returncode != 0, f"{what}: non-zero exit")
        check(needle in p.stderr, f"{what}: message mentions {needle!r}: {p.stderr.strip()!r}")

    p = run(["train", "--help"])
    check(p.returncode == 0 and "|lora|probe\n" in p.stdout and "--rank R " in p.stdout,
          "train --help: the whole --reg choice list, the help on its own line")

    out = os.path.join(tmp, "bad")
    bad(TINY + ["--out", out, "--lr", "abc"], "--lr", "non-numeric flag")
    bad(TINY + ["--out", out, "--epochs", "0"], "--epochs", "out-of-range flag")
    bad(TINY + ["--out", out, "--nonsense"], "--nonsense", "unknown flag")
    bad(TINY + ["--out", out, "--reg", "sometimes"], "--reg", "unknown choice")
    bad(TINY + ["--out", out, "--patch", "5"], "patch", "patch that does not divide the image")
    bad(TINY + ["--out", out, "--heads", "3"], "heads", "heads that do not divide the width")
    bad(TINY + ["--out", out, "--targets", "qkv,bogus"], "bogus", "unknown target")
    bad(TINY + ["--out", out, "--rank", "0"], "rank", "rank 0")
    bad(TINY + ["--out", out, "--rank", "1.5"], "1.5", "fraction above 1")
    bad(TINY + ["--out", out, "--eps", "constant"], "--eps-value", "constant eps without a value")
    bad(TINY + ["--out", out, "--reg", "nuclear"], "lambda", "nuclear baseline without lambda")
    bad(TINY + ["--out", os.path.join(tmp, "nothing-here"), "--resume"], "checkpoint.safetensors", "resume without a checkpoint")
    bad(TINY + ["--out", os.path.join(tmp, "full-decoupled"), "--resume", "--lr", "0.002"], "train.lr", "resume with another lr")
    bad(TINY + ["--out", os.path.join(tmp, "full-decoupled"), "--resume", "--width", "64", "--heads", "2"], "model.width", "resume with another model")
    lor = ["--reg", "lorita", "--targets", "qkv,fc2"]
    bad(TINY + lor + ["--out", os.path.join(tmp, "full-lorita"), "--resume", "--lorita-factors", "4"], "q3r.factors", "resume LoRITa with other factors")
    bad(TINY + ["--reg", "factorized", "--targets", "qkv,fc2", "--out", os.path.join(tmp, "full-factorized"), "--resume"], "q3r.rank", "resume factorized with another rank")
    bad(TINY + ["--out", os.path.join(tmp, "full-lorita"), "--resume"], "q3r.mode", "resume LoRITa as AdamQ3R")
    bad(TINY + ["--out", out, "--lorita-factors", "3"], "--lorita-factors", "--lorita-factors without --reg lorita")
    bad(TINY + ["--out", out, "--reg", "lorita", "--lorita-factors", "1"], "--lorita-factors", "one LoRITa factor")
    bad(TINY + ["--out", out, "--reg", "factorized", "--rank", "40"], "rank", "factorized rank above the matrix")
    bad(["eval", os.path.join(tmp, "missing.safetensors")], "missing.safetensors", "eval of a missing file")
    junk = os.path.join(tmp, "junk.safetensors")
    with open(junk, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    bad(["eval", junk], "junk.safetensors", "eval of a corrupt file")

    # Dataset files: missing, wrong magic, count mismatch, truncated.
    def idx_dir(name, images_magic=2051, n_images=100, n_labels=100, cut=0):
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        for split in ("train", "t10k"):
            img = struct.pack(">IIII", images_magic, n_images, 28, 28) + bytes(n_images * 28 * 28)
            lab = struct.pack(">II", 2049, n_labels) + bytes(n_labels)
            if cut:
                img = img[:-cut]
            with gzip.open(os.path.join(d, f"{split}-images-idx3-ubyte.gz"), "wb") as f:
                f.write(img)
            with gzip.open(os.path.join(d, f"{split}-labels-idx1-ubyte.gz"), "wb") as f:
                f.write(lab)
        return d

    bad(TINY + ["--out", out, "--data-dir", os.path.join(tmp, "no-such-dir")], "no-such-dir", "missing dataset directory")
    bad(TINY + ["--out", out, "--data-dir", idx_dir("magic", images_magic=1234)], "magic", "wrong IDX magic")
    bad(TINY + ["--out", out, "--data-dir", idx_dir("count", n_labels=99)], "count", "image/label count mismatch")
    bad(TINY + ["--out", out, "--data-dir", idx_dir("short", cut=500)], "images-idx3", "truncated IDX file")

    # --- an earlier run's files are never replaced without --overwrite ------------------------------
    done_dir = os.path.join(tmp, "full-decoupled")
    model_path = os.path.join(done_dir, "model.safetensors")
    model_before = open(model_path, "rb").read()
    ran = ["--reg", "decoupled", "--period", "3", "--out", done_dir]
    bad(TINY + ran + ["--seed", "5"], "--resume", "rerun into a finished run's --out")
    check(open(model_path, "rb").read() == model_before, "refused rerun: the finished model is left as it was")
    bad(TINY + ran + ["--resume", "--overwrite"], "--overwrite", "--resume with --overwrite")
    p = run(TINY + ran + ["--seed", "5", "--overwrite", "--json"])
    check(p.returncode == 0, "--overwrite starts the run over")
    check(open(model_path, "rb").read() != model_before, "--overwrite: a new model with the new seed replaces the old")

    # --- NaN loss: stop with a message, keep the last good checkpoint ---------------------------------
    nan_dir = os.path.join(tmp, "nan")
    run(TINY + ["--out", nan_dir, "--stop-after", "3"])
    ckpt = os.path.join(nan_dir, "checkpoint.safetensors")
    t, meta = safetensors_np.read(ckpt)
    t["head.weight"][0, 0] = np.nan
    safetensors_np.write(ckpt, t, meta)
    before = open(ckpt, "rb").read()
    p = run(TINY + ["--out", nan_dir, "--resume"], expect_ok=False)
    check(p.returncode != 0, "NaN loss: non-zero exit")
    check("nan" in p.stderr.lower(), f"NaN loss: message says so: {p.stderr.strip()!r}")
    check(open(ckpt, "rb").read() == before, "NaN loss: the checkpoint is left as it was")
    check(not os.path.exists(os.path.join(nan_dir, "model.safetensors")), "NaN loss: no model written")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

sys.exit(check.finish())
