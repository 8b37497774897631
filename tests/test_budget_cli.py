"""q3r truncate --budget on a tiny GPT trained here, against an independent reference: numpy's
SVD (LAPACK) of every targeted matrix (Q, K, V as row blocks of c_attn; nn.Linear's [out, in])
and the rule of q3r_budget_ranks solved here by its own dynamic programme (maximise the sum of the
fractions of energy kept, within floor(budget * sum m n) parameters at r (m + n) each). The ranks
must be the reference's, the parameters kept within the budget and within one rank step of it,
the file's model.ranks and truncate.rule must say so, and the truncated model must evaluate;
sweep --budgets scores exactly those models.
Bad budgets: out of (0, 1] exits 2 before reading, too small for rank 1 everywhere exits 1; neither
writes a file.

Training with --rank budget:P@S: the ranks the run chose at step S (its metrics line, its checkpoint,
the model's q3r.budget_ranks, the Q3R states' own ranks) are the reference's on the weights of the
checkpoint taken at step S; Q3R does nothing before S (value 0) and acts after; the automatic lambda
spreads the pull over the learning rates of steps S.. (as logged); a run stopped before the choice
and again after it, each time resumed, ends bit for bit where the uninterrupted run ends. Budget
rules where they do not apply exit 2 and leave nothing. With --budget-rule loss the run chooses the
ranks `q3r truncate --budget-rule loss` chooses on the step-9 weights (whose measurements
test_loss_rule.py checks against torch), and the model file records the rule."""
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402
from q3r_testing import Checks, budget_knapsack, run_q3r, write_corpus  # noqa: E402

check = Checks()


def targeted(tensors, prefix_blocks):
    """(name, W) of every block matrix in the order of the rank table: q, k, v, c_proj, c_fc, mlp.c_proj"""
    out = []
    for b in range(prefix_blocks):
        w = tensors[f"transformer.h.{b}.attn.c_attn.weight"].astype(np.float64)
        d = w.shape[1]
        for j, n in enumerate("qkv"):
            out.append((f"transformer.h.{b}.attn.{n}", w[j * d:(j + 1) * d]))
        for n in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out.append((f"transformer.h.{b}.{n}", tensors[f"transformer.h.{b}.{n}.weight"].astype(np.float64)))
    return out


def reference_ranks(mats, budget):
    """(ranks, allowed) by the energy rule: numpy's singular values, the shared reference search"""
    shapes, gains = [], []
    for _, w in mats:
        m, n = w.shape
        s = np.linalg.svd(w, compute_uv=False)
        shapes.append((m, n))
        gains.append((np.cumsum(s ** 2) / np.sum(s ** 2))[:min(min(m, n), m * n // (m + n))])
    ranks, _, allowed = budget_knapsack(shapes, gains, budget)
    return ranks, allowed


tmp = tempfile.mkdtemp(prefix="q3r-budget-test-")
try:
    text = write_corpus(os.path.join(tmp, "corpus.txt"), 3, 4000)
    run = os.path.join(tmp, "run")
    p = run_q3r(["train", "--model", "gpt-tiny", "--data", text, "--width", "32", "--depth", "2", "--heads", "2",
                 "--mlp", "96", "--context", "32", "--batch", "8", "--epochs", "1", "--epoch-steps", "30",
                 "--val-windows", "20", "--threads", "1", "--quiet", "--reg", "none", "--out", run], expect_ok=True)
    check(p.returncode == 0, "a tiny GPT trained")
    model = os.path.join(run, "model.safetensors")
    tensors = safetensors_np.read(model)[0]
    mats = targeted(tensors, 2)
    for budget in (0.15, 0.3, 0.6):
        out = os.path.join(tmp, f"b{budget}.safetensors")
        p = run_q3r(["truncate", model, out, "--budget", str(budget), "--targets", "all", "--json"], expect_ok=True)
        if not check(p.returncode == 0, f"truncate --budget {budget}"):
            continue
        rep = json.loads(p.stdout)
        got = [m["rank"] for m in rep["matrices"]]
        names = [m["name"] for m in rep["matrices"]]
        want, allowed = reference_ranks(mats, budget)
        check(names == [n for n, _ in mats], f"matrix order: {names}")
        check(got == want, f"budget {budget}: ranks {got}, reference (numpy SVD, own search) {want}")
        spent = sum(r * (w.shape[0] + w.shape[1]) for r, (_, w) in zip(got, mats))
        step = max(w.shape[0] + w.shape[1] for _, w in mats)
        check(rep["targeted_after"] == spent and spent <= allowed and allowed - spent < step,
              f"budget {budget}: {spent} parameters kept of {allowed} allowed")
        check(rep["rule"] == f"budget {budget:g}", f"rule: {rep['rule']}")
        meta = safetensors_np.read(out)[1]
        check(meta.get("truncate.rule") == f"budget {budget:g}", f"truncate.rule: {meta.get('truncate.rule')}")
        table = [int(x) for x in meta.get("model.ranks", "").replace(";", ",").split(",") if x.strip()]
        check(sorted(x for x in table if x) == sorted(got), f"model.ranks holds the chosen ranks: {meta.get('model.ranks')}")
        check(run_q3r(["eval", out]).returncode == 0, f"budget {budget}: the truncated model evaluates")
    # sweep --budgets: each row is truncate --budget then eval
    sj = os.path.join(tmp, "sweep.json")
    p = run_q3r(["sweep", model, "--budgets", "1,0.6,0.3,0.15", "--targets", "all", "--json", sj], expect_ok=True)
    if check(p.returncode == 0, "sweep --budgets"):
        with open(sj) as f:
            sw = json.load(f)
        check(sw.get("rule") == "budget" and [r["p"] for r in sw["rows"]] == [1, 0.6, 0.3, 0.15], f"sweep rows: {sw.get('rule')}")
        for r in sw["rows"][1:]:
            ev = run_q3r(["eval", os.path.join(tmp, f"b{r['p']}.safetensors"), "--json"])
            e = json.loads(ev.stdout) if ev.returncode == 0 else {}
            check(abs(e.get("bpb", -1) - r["bpb"]) < 1e-6,
                  f"sweep budget {r['p']}: bpb {r['bpb']} = eval of truncate --budget's model {e.get('bpb')}")
    p = run_q3r(["sweep", model, "--budgets", "0.3", "--ps", "0.3"])
    check(p.returncode == 2 and "not both" in p.stderr, f"--budgets with --ps: {p.stderr.strip()!r}")
    p = run_q3r(["sweep", model, "--budgets", "0.01", "--targets", "all"])
    check(p.returncode == 2 and "fewer than rank 1" in p.stderr, f"sweep: a budget too small: {p.stderr.strip()!r}")

    # whitened truncation through the program (its numbers: test_whiten.py)
    wout = os.path.join(tmp, "whitened.safetensors")
    p = run_q3r(["truncate", model, wout, "--rank", "0.3", "--targets", "all", "--method", "whitened",
                 "--calib", "64", "--json"], expect_ok=True)
    if check(p.returncode == 0, "truncate --method whitened"):
        check(json.loads(p.stdout)["rule"] == "whitened rank 0.3", f"rule: {json.loads(p.stdout)['rule']}")
        check(safetensors_np.read(wout)[1].get("truncate.rule") == "whitened fraction 0.3", "truncate.rule says whitened")
        check(run_q3r(["eval", wout]).returncode == 0, "the whitened model evaluates")
    p = run_q3r(["truncate", model, wout + "2", "--budget", "0.3", "--targets", "all", "--method", "whitened"])
    check(p.returncode == 0, f"whitened with a budget ({p.stderr.strip()!r})")
    for args, code, needle in ((["--method", "whitened", "--calib", "100000000"], 1, "--calib"),
                               (["--calib", "64"], 2, "--method whitened")):
        bad = os.path.join(tmp, "bad-w.safetensors")
        p = run_q3r(["truncate", model, bad, "--rank", "0.3"] + args)
        check(p.returncode == code and needle in p.stderr and not os.path.exists(bad),
              f"{args}: exit {p.returncode} ({p.stderr.strip()!r}), nothing written")

    # --- training with --rank budget:P@S ------------------------------------------------------------
    def lines(path):
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]

    TRAIN = ["train", "--model", "gpt-tiny", "--data", text, "--width", "32", "--depth", "2", "--heads", "2",
             "--mlp", "96", "--context", "32", "--batch", "8", "--epochs", "2", "--epoch-steps", "12",
             "--val-windows", "20", "--threads", "1", "--quiet", "--log-every", "1", "--period", "3",
             "--targets", "all", "--rank", "budget:0.3@8", "--pull", "9"]
    full, part = os.path.join(tmp, "bfull"), os.path.join(tmp, "bpart")
    p = run_q3r(TRAIN + ["--out", full], expect_ok=True)
    check(p.returncode == 0, "training with --rank budget:0.3@8")
    log = lines(os.path.join(full, "metrics.jsonl")) if p.returncode == 0 else []
    ev = [x for x in log if x["event"] == "budget"]
    names = next((x["matrices"].split(",") for x in log if x["event"] == "start"), [])
    # the choice is at the first refresh step at or after 8 (period 3): 9; the checkpoint at 9 holds
    # the weights it was made from
    p = run_q3r(TRAIN + ["--out", part, "--stop-after", "9"], expect_ok=True)
    check(p.returncode == 0 and not os.path.exists(os.path.join(part, "model.safetensors")), "stopped at step 9")
    if check(len(ev) == 1 and ev[0]["step"] == 9, f"one budget line, at step 9: {ev}"):
        ck = safetensors_np.read(os.path.join(part, "checkpoint.safetensors"))[0]
        mats = targeted(ck, 2)
        want, allowed = reference_ranks(mats, 0.3)
        got = [int(r) for r in ev[0]["ranks"]]
        check(names == [n for n, _ in mats], f"matrix order: {names}")
        check(got == want, f"ranks chosen in training {got}, reference on the step-9 weights {want}")
        dense = sum(w.shape[0] * w.shape[1] for _, w in mats)
        spent = sum(r * (w.shape[0] + w.shape[1]) for r, (_, w) in zip(got, mats))
        check(spent <= allowed and abs(ev[0]["kept"] - spent / dense) < 1e-12, f"kept {ev[0]['kept']}: {spent} of {dense}")
        check(got != [math.floor(0.3 * w.shape[0] * w.shape[1] / sum(w.shape)) for _, w in mats],
              f"the budget's ranks differ from the uniform fraction's here: {got}")
        fck = safetensors_np.read(os.path.join(full, "checkpoint.safetensors"))[0]
        states = [int(fck[f"q3r.{n}.ints"][2]) for n in names]
        check(states == got and [int(x) for x in fck["train.budget_ranks"]] == got,
              f"the Q3R states' ranks are the chosen ones: {states}")
        meta = safetensors_np.read(os.path.join(full, "model.safetensors"))[1]
        check(meta.get("q3r.budget_ranks") == ",".join(f"{n}:{r}" for n, r in zip(names, got)),
              f"the model file's q3r.budget_ranks: {meta.get('q3r.budget_ranks')}")
        steps = {x["step"]: x for x in log if x["event"] == "step"}
        check(all(steps[k]["q3r"] == 0 for k in range(1, 10)) and all(steps[k]["q3r"] > 0 for k in range(10, 25)),
              "no Q3R before step 9 (value 0), Q3R from there on")
        lr_sum = sum(steps[k]["lr"] for k in range(10, 25))  # the line of step k logs the lr of step k - 1
        lam = next(x["lambda"] for x in log if x["event"] == "start")
        check(abs(lam - 9 / (2 * lr_sum)) < 1e-9 * lam, f"lambda {lam} = pull / (2 sum lr from step 9) {9 / (2 * lr_sum)}")
    # resumed before the choice and after it: the same final model, bit for bit
    p = run_q3r(TRAIN + ["--out", part, "--resume", "--stop-after", "5"], expect_ok=True)
    check(p.returncode == 0, "resumed at 9, stopped at 14")
    p = run_q3r(TRAIN + ["--out", part, "--resume"], expect_ok=True)
    if check(p.returncode == 0, "resumed at 14 to the end"):
        a = safetensors_np.read(os.path.join(full, "model.safetensors"))[0]
        b = safetensors_np.read(os.path.join(part, "model.safetensors"))[0]
        check(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a),
              "a run stopped and resumed around the choice ends on the uninterrupted run's bits")
        plog = lines(os.path.join(part, "metrics.jsonl"))
        check([x["step"] for x in plog if x["event"] == "budget"] == [9], "the resumed run logs the choice once")
    # the loss rule in training: the ranks truncate's loss rule gives on the weights at the choice
    LOSS = ["--budget-rule", "loss", "--loss-samples", "16", "--loss-points", "3"]
    lfull, lpart = os.path.join(tmp, "lfull"), os.path.join(tmp, "lpart")
    p = run_q3r(TRAIN + LOSS + ["--out", lfull], expect_ok=True)
    q = run_q3r(TRAIN + LOSS + ["--out", lpart, "--stop-after", "9"], expect_ok=True)
    if check(p.returncode == 0 and q.returncode == 0, "training with --budget-rule loss"):
        lev = [x for x in lines(os.path.join(lfull, "metrics.jsonl")) if x["event"] == "budget"]
        got = [int(r) for r in lev[0]["ranks"]] if len(lev) == 1 else []
        fm, fmeta = safetensors_np.read(os.path.join(lfull, "model.safetensors"))
        check(fmeta.get("q3r.budget_rule") == "loss:16:3", f"q3r.budget_rule: {fmeta.get('q3r.budget_rule')}")
        ck = safetensors_np.read(os.path.join(lpart, "checkpoint.safetensors"))[0]
        at9 = os.path.join(tmp, "at9.safetensors")
        safetensors_np.write(at9, {k: ck[k] for k in fm}, {k: v for k, v in fmeta.items() if not k.startswith("q3r.")})
        cut = os.path.join(tmp, "at9-cut.safetensors")
        t = run_q3r(["truncate", at9, cut, "--targets", "all", "--budget", "0.3", "--seed", "1", "--threads", "1",
                     "--json"] + LOSS, expect_ok=True)
        if check(t.returncode == 0, "truncate --budget-rule loss on the step-9 weights"):
            want = [m["rank"] for m in json.loads(t.stdout)["matrices"]]
            check(got == want, f"ranks chosen in training by loss {got}, truncate's loss rule at step 9 {want}")
            energy = [int(r) for r in ev[0]["ranks"]] if len(ev) == 1 else []
            check(got != energy, f"the loss rule chose other ranks than the energy rule here: {got}")
    for args, needle in ((["--rank", "0.3", "--budget-rule", "loss"], "--rank"),
                         (["--loss-points", "4"], "--budget-rule loss"),
                         (["--rank", "budget:0.3", "--reg", "factorized"], "budget"),
                         (["--rank", "budget:0.3", "--reg", "none"], "budget"),
                         (["--rank", "budget:0.3@24"], "24 steps"),
                         (["--rank", "budget:1.5"], "--rank"), (["--rank", "budget:0.3@1.5"], "--rank")):
        bad = os.path.join(tmp, "bad-train")
        p = run_q3r(TRAIN + args + ["--out", bad])
        # a point past the run's end is found once the data give the run's length: exit 1, as the
        # trainer's other checks of a flag against the run
        code = 1 if "@24" in args[1] else 2
        check(p.returncode == code and needle in p.stderr and not os.path.exists(bad),
              f"train {args}: exit {p.returncode} ({p.stderr.strip()[-160:]!r}), nothing left")
    p = run_q3r(["truncate", model, os.path.join(tmp, "x.safetensors"), "--rank", "budget:0.3"])
    check(p.returncode == 2 and "--budget" in p.stderr, f"truncate --rank budget: {p.stderr.strip()!r}")

    # bad budgets
    out = os.path.join(tmp, "bad.safetensors")
    for args, code, needle in ((["--budget", "0"], 2, "--budget"), (["--budget", "1.5"], 2, "--budget"),
                               (["--budget", "0.01", "--targets", "all"], 1, "fewer than rank 1"),
                               (["--budget", "0.3", "--rank", "4"], 2, "exactly one")):
        p = run_q3r(["truncate", model, out] + args)
        check(p.returncode == code and needle in p.stderr, f"{args}: exit {p.returncode} ({p.stderr.strip()!r})")
        check(not os.path.exists(out), f"{args}: nothing written")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
