#!/usr/bin/env python3
"""The Q3R paper's truncation experiment on Fashion-MNIST, with the q3r program.

Every method trains the same model (vit-fmnist) with the same epochs, learning-rate schedule
(AdamW, peak 1e-3, warmup + cosine) and seeds; its rank regularizer (if any) acts on every
linear layer of the blocks (Q, K, V, proj, fc1, fc2). Each trained model is then swept with
`q3r sweep` at kept fractions p = 0.9 ... 0.1, once truncating only Q/K/V and once every linear
layer of the blocks. Output (in --out): runs/<method>-s<seed>/ (q3r train's files),
sweeps/<method>-s<seed>-<targets>.json, results.json, results.md and accuracy-<targets>.png.

Resumable: a run whose model.safetensors exists is not trained again (one with only a
checkpoint is resumed), and a sweep whose JSON is newer than its model is not redone.
Every command is printed before it runs. --report writes the table and plots from the runs
that have finished, of an experiment still running or stopped. See docs/EXPERIMENT.md.

    scripts/experiment.py --quick                 # about 10 minutes on 2 cores
    scripts/experiment.py --out runs/experiment   # the full experiment, about 3 hours
"""
import argparse
import glob
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
TARGET_SETS = ["qkv", "all"]
REG_TARGETS = "all"          # the regularized matrices during training
LR, MIN_LR, BATCH = 1e-3, 1e-5, 128
NUCLEAR_SHRINK = 0.2         # total soft threshold lambda * sum_t lr_t of the nuclear-norm baseline (docs/EXPERIMENT.md)
# measured: vit-fmnist trains ~70 s per 60000-image epoch at 2 threads on an idle machine;
# scoring (a sweep: truncation SVDs + evaluation) measured at about half of training per image;
# Q3R's refreshes and the factor chains add some
TRAIN_S_PER_IMAGE = 70.0 / 60000
EVAL_S_PER_IMAGE = TRAIN_S_PER_IMAGE / 2
FULL_BUDGET_S = 3 * 3600


def methods(have_lorita, have_factorized):
    """(name, q3r train arguments, relative cost per step) in table order"""
    m = [("adamw", ["--reg", "none"], 1.0),
         ("nuclear", ["--reg", "nuclear"], 1.1)]  # --lambda added per plan (depends on the step count)
    for rank in ("0.4", "0.2"):
        for pull in ("9", "27"):
            m.append((f"q3r-r{rank}-pull{pull}", ["--reg", "decoupled", "--rank", rank, "--pull", pull], 1.15))
    if have_lorita:
        m.append(("lorita3", ["--reg", "lorita", "--lorita-factors", "3"], 1.2))
    if have_factorized:
        m.append(("factorized-r0.4", ["--reg", "factorized", "--rank", "0.4"], 1.0))
    return m


def lr_sum(steps):
    """sum_t lr_t of q3r train's schedule: linear warmup (5% of the run, at most 200 steps), then
    cosine from LR to MIN_LR (src/optim/schedule.c)"""
    warm = min(steps // 20, 200)
    s = 0.0
    for t in range(steps):
        if t < warm:
            s += LR * (t + 1) / warm
        else:
            prog = (t - warm) / (steps - warm)
            s += MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * prog))
    return s


def fmt_time(s):
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def say(*a):
    print(*a, flush=True)


def run_cmd(cmd, capture=False):
    say("$ " + shlex.join(cmd))
    if capture:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    else:
        p = subprocess.run(cmd)
    if p.returncode != 0:
        sys.exit(f"experiment: command failed with status {p.returncode}: {shlex.join(cmd)}")
    return p.stdout if capture else None


def write_atomic(path, text):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file's mode
    os.replace(tmp, path)


def sweep_done(sweep_json, model):
    """a sweep counts when its JSON is newer than the model it scored"""
    return os.path.exists(sweep_json) and os.path.exists(model) and os.path.getmtime(sweep_json) >= os.path.getmtime(model)


def mean_spread(xs):
    """mean and half the range (0 for one seed)"""
    m = sum(xs) / len(xs)
    return m, (max(xs) - min(xs)) / 2


def summarize(results, names, seeds):
    """targets -> method -> list of rows (p = 1 first) with means and spreads over the seeds
    that have both sweeps (a --report of an unfinished experiment may lack some; a method with
    none is left out)"""
    out = {}
    for targets in TARGET_SETS:
        out[targets] = {}
        for name in names:
            done = [s for s in seeds if all(t in results.get(f"{name}-s{s}", {}).get("sweeps", {})
                                            for t in TARGET_SETS)]
            if not done:
                continue
            sweeps = [results[f"{name}-s{s}"]["sweeps"][targets] for s in done]
            rows = []
            for j, p in enumerate([1.0] + PS):
                per = [sw["rows"][j] for sw in sweeps]
                assert all(abs(r["p"] - p) < 1e-9 for r in per), "sweep rows out of order"
                acc, acc_sp = mean_spread([100 * r["acc"] for r in per])
                drop, drop_sp = mean_spread([r["drop_points"] for r in per])
                kept, _ = mean_spread([r["targeted_kept"] for r in per])
                total, _ = mean_spread([r["total_kept"] for r in per])
                err = max(100 * r["acc_err95"] for r in per)
                rows.append({"p": p, "acc": acc, "acc_spread": acc_sp, "drop": drop, "drop_spread": drop_sp,
                             "targeted_kept": kept, "total_kept": total, "acc_err95": err,
                             "seeds": len(per), "seed_list": done})
            out[targets][name] = rows
    return out


def markdown(summary, plan):
    seeds = plan["seeds"]
    lines = [f"# Truncation experiment: {plan['mode']} ({plan['model']}, {plan['epochs']} epochs, "
             f"{plan['train_images']} training images, n = {plan['test_images']} test images, "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})", ""]
    have = {len(rows[0]["seed_list"]) for rows in summary[TARGET_SETS[0]].values()}
    over = (f"; mean over {len(seeds)} seeds, +- half the range between them" if have == {len(seeds)} else
            "; mean over the seeds a method has, +- half the range between them" if max(have) > 1 else "")
    lines.append("Cells: test accuracy in % (in parentheses: its change from the same model untruncated, in points)"
                 + (over if len(seeds) > 1 else "")
                 + ". The 95% binomial error of one accuracy is about "
                 + f"{max(r['acc_err95'] for t in summary.values() for rows in t.values() for r in rows):.1f} points.")
    lines.append("")
    partial = {name: rows[0]["seed_list"] for name, rows in summary[TARGET_SETS[0]].items()
               if rows[0]["seed_list"] != seeds}
    missing = [n for n in plan["methods"] if n not in summary[TARGET_SETS[0]]]
    if partial or missing:
        lines.append("**Unfinished experiment** (a `--report` of what had finished): "
                     + "; ".join([f"{n} has seed{'s' if len(sl) > 1 else ''} {', '.join(map(str, sl))} only"
                                  for n, sl in partial.items()]
                                 + ([f"not finished: {', '.join(missing)}"] if missing else [])) + ".")
        lines.append("")
    for targets in TARGET_SETS:
        what = "Q, K, V" if targets == "qkv" else "every linear layer of the blocks (Q, K, V, proj, fc1, fc2)"
        lines.append(f"## Truncating {what} (`--targets {targets}`)")
        lines.append("")
        header = "| method | untruncated | " + " | ".join(f"p = {p:g}" for p in PS) + " |"
        lines.append(header)
        lines.append("|" + "---|" * (2 + len(PS)))
        for name, rows in summary[targets].items():
            cells = []
            for r in rows:
                sp = f" +-{r['acc_spread']:.1f}" if r["seeds"] > 1 else ""
                if r["p"] == 1.0:
                    cells.append(f"{r['acc']:.2f}{sp}")
                else:
                    cells.append(f"{r['acc']:.2f}{sp} ({0.0 - r['drop'] + 0.0:+.2f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        any_rows = next(iter(summary[targets].values()))
        lines.append("| kept (targeted / model) | 1 / 1 | " + " | ".join(
            f"{r['targeted_kept']:.3f} / {r['total_kept']:.3f}" for r in any_rows[1:]) + " |")
        lines.append("")
    same = all(abs(r["targeted_kept"] - r0["targeted_kept"]) < 1e-9
               for t in summary.values() for rows in t.values() for r, r0 in zip(rows, next(iter(t.values()))))
    if same:
        lines.append("The kept fractions are the same for every model (all are stored dense; LoRITa and factorized "
                     "models as their products, whose rank is at most their training rank).")
    else:
        lines.append("Kept fractions are those of the first method's models; a model stored in factored form keeps "
                     "its own rank where p would not cut it (its own fractions are in results.json).")
    lines.append("")
    return "\n".join(lines)


def plot(summary, targets, path, title):
    """accuracy against kept fraction of the targeted parameters, one line per method (gnuplot)"""
    if not shutil.which("gnuplot"):
        say(f"experiment: gnuplot is not on PATH, no {os.path.basename(path)} "
            "(install it with: sudo apt-get install gnuplot-nox)")
        return False
    d = os.path.dirname(os.path.abspath(path))
    names = list(summary[targets])
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf"]
    with tempfile.TemporaryDirectory(dir=d, prefix=".plot-") as tmp:
        data = os.path.join(tmp, "data")
        png = os.path.join(tmp, "out.png")
        with open(data, "w") as f:
            for name in names:
                for r in summary[targets][name]:
                    err = r["acc_spread"] if r["seeds"] > 1 else r["acc_err95"]
                    f.write(f"{r['targeted_kept']:.9g} {r['acc']:.9g} {err:.9g}\n")
                f.write("\n\n")

        def q(s):
            return "'" + s.replace("'", "''") + "'"
        script = [f"set terminal pngcairo size 1100,700 font 'sans,11' noenhanced",
                  f"set output {q(png)}", f"set title {q(title)}",
                  "set xlabel 'kept fraction of the targeted parameters'", "set ylabel 'test accuracy (%)'",
                  "set xrange [0:1.03]", "set grid lc rgb '#dddddd'", "set key outside right top box opaque"]
        parts = [f"{q(data)} index {i} using 1:2:3 with yerrorlines lw 2 pt 7 ps 0.8 "
                 f"lc rgb '{colors[i % len(colors)]}' dt {1 + i // len(colors)} title {q(n)}"
                 for i, n in enumerate(names)]
        script.append("plot " + ", \\\n  ".join(parts))
        script.append("unset output")
        gp = os.path.join(tmp, "plot.gp")
        with open(gp, "w") as f:
            f.write("\n".join(script) + "\n")
        p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
        if p.returncode != 0 or not os.path.exists(png):
            say(f"experiment: gnuplot failed for {path}: {p.stderr.strip()}")
            return False
        os.replace(png, path)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output directory (default runs/experiment or runs/experiment-quick)")
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 10000 training images, 2 epochs, 2000 test images: minutes, not hours")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny model, seconds (tests)
    ap.add_argument("--epochs", type=int, default=0, help="epochs (default: 2 quick; full: what fits in 3 hours)")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (default 1,2; quick: 1)")
    ap.add_argument("--threads", type=int, default=2, help="threads for q3r (default 2)")
    ap.add_argument("--q3r", default=None, help="the q3r program (default build/q3r)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the estimate, run nothing")
    ap.add_argument("--report", action="store_true",
                    help="train and sweep nothing: write the table and plots from the runs that have finished "
                         "(of an experiment still running or stopped), saying which are missing")
    a = ap.parse_args()

    q3r = a.q3r or os.environ.get("Q3R_BIN") or os.path.join(ROOT, "build", "q3r")
    if not os.access(q3r, os.X_OK):
        sys.exit(f"experiment: {q3r} is not an executable; build it first (scripts/build.sh) or pass --q3r")
    help_text = subprocess.run([q3r, "train", "--help"], capture_output=True, text=True).stdout
    have_lorita, have_factorized = "lorita" in help_text, "factorized" in help_text

    if a.smoke:
        mode, model_args, train_n, test_n, epochs, batch = "smoke", [
            "--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64"], 640, 200, 1, 32
        seeds = [1]
    elif a.quick:
        mode, model_args, train_n, test_n, epochs, batch = "quick", ["--model", "vit-fmnist"], 10000, 2000, 2, BATCH
        seeds = [1]
    else:
        mode, model_args, train_n, test_n, epochs, batch = "full", ["--model", "vit-fmnist"], 60000, 10000, 0, BATCH
        seeds = [1, 2]
    if a.seeds:
        try:
            seeds = [int(s) for s in a.seeds.split(",")]
        except ValueError:
            sys.exit(f"experiment: --seeds '{a.seeds}' is not a comma list of integers")
    if a.epochs:
        epochs = a.epochs
    out = a.out or os.path.join("runs", "experiment" + ("" if mode == "full" else "-" + mode))
    ms = methods(have_lorita, have_factorized)
    nruns = len(ms) * len(seeds)
    speed = 2.0 / max(a.threads, 1) if a.threads <= 2 else 2.0 / min(a.threads, 4)
    eval_run = EVAL_S_PER_IMAGE * test_n * speed
    sweep_s = 2 * (1 + len(PS)) * eval_run  # per model: two target sets, the model itself and 9 p
    mean_cost = sum(c for _, _, c in ms) / len(ms)
    epoch_s = (TRAIN_S_PER_IMAGE * train_n * mean_cost) * speed + eval_run
    # Runs already in --out fix the epochs: their models are reused, so a resumed or reported
    # experiment must describe (and continue) them with their own epochs, whatever the budget
    # arithmetic for another --seeds would say.
    done_epochs = set()
    for f in glob.glob(os.path.join(out, "runs", "*", "train.json")):
        try:
            with open(f) as fh:
                done_epochs.add(int(json.loads(fh.read().strip().splitlines()[-1])["epochs"]))
        except (OSError, ValueError, KeyError, IndexError):
            pass
    if len(done_epochs) > 1:
        sys.exit(f"experiment: the runs in {out} were trained for different epochs ({sorted(done_epochs)}); "
                 "use another --out")
    if done_epochs and epochs and epochs not in done_epochs:
        sys.exit(f"experiment: the runs in {out} were trained for {min(done_epochs)} epochs, not {epochs}; "
                 f"pass --epochs {min(done_epochs)} to continue them, or use another --out")
    if done_epochs and not epochs:
        epochs = min(done_epochs)
    if not epochs:  # the full run: as many epochs as fit in the budget
        epochs = max(1, int((FULL_BUDGET_S - nruns * sweep_s) // (nruns * epoch_s)))
    estimate = nruns * (epochs * epoch_s + sweep_s)

    steps = math.ceil(train_n / batch) * epochs
    nuc_lambda = NUCLEAR_SHRINK / lr_sum(steps)
    common = model_args + ["--train-limit", str(train_n), "--test-limit", str(test_n), "--epochs", str(epochs),
                           "--batch", str(batch), "--lr", str(LR), "--min-lr", str(MIN_LR), "--schedule", "cosine",
                           "--targets", REG_TARGETS, "--threads", str(a.threads), "--json"]
    if mode == "smoke" or not sys.stderr.isatty():
        common.append("--quiet")
    plan = {"mode": mode, "model": "tiny ViT (width 32, depth 2)" if mode == "smoke" else "vit-fmnist",
            "epochs": epochs, "batch": batch, "train_images": train_n, "test_images": test_n, "seeds": seeds,
            "steps": steps, "lr": LR, "min_lr": MIN_LR, "reg_targets": REG_TARGETS,
            "nuclear_lambda": nuc_lambda, "nuclear_shrink": NUCLEAR_SHRINK, "ps": PS, "target_sets": TARGET_SETS,
            "lorita": have_lorita, "factorized": have_factorized, "methods": {},
            "estimate_s": estimate, "q3r": q3r, "threads": a.threads}
    say(f"experiment ({mode}): {len(ms)} methods x {len(seeds)} seed(s) = {nruns} runs of {epochs} epoch(s), "
        f"{train_n} training images ({steps} steps of batch {batch}), scored on {test_n} test images")
    say(f"  regularizers on '{REG_TARGETS}'; nuclear lambda {nuc_lambda:.4g} (total threshold lambda sum lr = "
        f"{NUCLEAR_SHRINK}); Q3R lambda from --pull (2 lambda sum lr)")
    if not have_lorita or not have_factorized:
        say(f"  {q3r} has no {' and no '.join(x for x, h in (('--reg lorita', have_lorita), ('--reg factorized', have_factorized)) if not h)}: left out")
    say(f"  sweeps: p = {', '.join(f'{p:g}' for p in PS)} on {' and '.join(TARGET_SETS)}")
    say(f"  estimate: {fmt_time(estimate)} ({fmt_time(epoch_s)} per epoch, {fmt_time(sweep_s)} of sweeps per model; "
        f"measured rates on an idle machine at {a.threads} threads; slower when it is shared)")
    for name, args, _ in ms:
        if name == "nuclear":
            args = args + ["--lambda", f"{nuc_lambda:.6g}"]
        plan["methods"][name] = args
        say(f"  {name:18s} {' '.join(args)}")
    if a.dry_run:
        return 0

    if a.report and not os.path.isdir(os.path.join(out, "runs")):
        sys.exit(f"experiment: --report: {out} holds no experiment (no {os.path.join(out, 'runs')})")
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    os.makedirs(os.path.join(out, "sweeps"), exist_ok=True)
    t0 = time.time()
    results = {}
    for seed in seeds:
        for name, _, _ in ms:
            run = f"{name}-s{seed}"
            rdir = os.path.join(out, "runs", run)
            model = os.path.join(rdir, "model.safetensors")
            entry = {"method": name, "seed": seed, "dir": rdir, "sweeps": {}}
            train_json = os.path.join(rdir, "train.json")
            if a.report:
                if not all(sweep_done(os.path.join(out, "sweeps", f"{run}-{t}.json"), model) for t in TARGET_SETS):
                    say(f"{run}: not finished, left out of the report")
                    continue
            if os.path.exists(model):
                say(f"[{fmt_time(time.time() - t0)}] {run}: trained already ({model}), skipped")
            else:
                cmd = [q3r, "train"] + common + plan["methods"][name] + ["--seed", str(seed), "--out", rdir]
                # a checkpoint is resumed; anything less (a run killed before its first) starts over
                resumable = os.path.exists(os.path.join(rdir, "checkpoint.safetensors"))
                cmd.append("--resume" if resumable else "--overwrite")
                say(f"[{fmt_time(time.time() - t0)}] {run}: training")
                text = run_cmd(cmd, capture=True)
                write_atomic(train_json, text)
            if os.path.exists(train_json):
                with open(train_json) as f:
                    try:
                        entry["train"] = json.loads(f.read().strip().splitlines()[-1])
                    except (ValueError, IndexError):
                        pass
            for targets in TARGET_SETS:
                sj = os.path.join(out, "sweeps", f"{run}-{targets}.json")
                if sweep_done(sj, model):
                    say(f"[{fmt_time(time.time() - t0)}] {run}: sweep on {targets} done already, skipped")
                else:
                    run_cmd([q3r, "sweep", model, "--targets", targets, "--ps", ",".join(f"{p:g}" for p in [1.0] + PS),
                             "--limit", str(test_n), "--threads", str(a.threads), "--json", sj])
                with open(sj) as f:
                    entry["sweeps"][targets] = json.load(f)
            results[run] = entry

    names = [n for n, _, _ in ms]
    summary = summarize(results, names, seeds)
    if not summary[TARGET_SETS[0]]:
        sys.exit(f"experiment: no run in {out} has finished both sweeps yet; nothing to report")
    doc = {"plan": plan, "runs": results, "summary": summary, "seconds": time.time() - t0}
    write_atomic(os.path.join(out, "results.json"), json.dumps(doc, indent=1) + "\n")
    md = markdown(summary, plan)
    write_atomic(os.path.join(out, "results.md"), md)
    for targets in TARGET_SETS:
        what = "Q/K/V truncated" if targets == "qkv" else "all block linear layers truncated"
        plot(summary, targets, os.path.join(out, f"accuracy-{targets}.png"),
             f"{plan['model']} on Fashion-MNIST, {epochs} epoch(s): accuracy vs kept fraction, {what}")
    say("")
    say(md)
    say(f"experiment: {'report written' if a.report else 'done'} in {fmt_time(time.time() - t0)}; {out}/results.md, results.json, accuracy-qkv.png, "
        "accuracy-all.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
