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
that have finished, of an experiment still running or stopped. See docs/EXPERIMENT.md. The
machinery is shared with the text experiment (scripts/experiment_text.py): scripts/experiment_lib.py.

    scripts/experiment.py --quick                 # about 10 minutes on 2 cores
    scripts/experiment.py --out runs/experiment   # the full experiment, about 3 hours
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiment_lib import (LR, MIN_LR, NUCLEAR_SHRINK, FULL_BUDGET_S, PS, REG_TARGETS, SWEEP_EVALS, TARGET_SETS,  # noqa: E402
                            add_common_flags, find_q3r, fmt_time, kept_means, lr_sum, mean_spread, method_args,
                            methods, parse_seeds, run, runs_epochs, say, truncated_words)

BATCH = 128
# measured: vit-fmnist trains ~70 s per 60000-image epoch at 2 threads on an idle machine;
# scoring (a sweep: truncation SVDs + evaluation) measured at about half of training per image;
# Q3R's refreshes and the factor chains add some
TRAIN_S_PER_IMAGE = 70.0 / 60000
EVAL_S_PER_IMAGE = TRAIN_S_PER_IMAGE / 2


class Images:
    """the image experiment's metric (test accuracy) and its words (experiment_lib's task)"""
    name = "images"
    metric_label = "test accuracy (%)"
    value_key = "acc"
    lower_is_better = False
    value_digits = 2
    more_outputs = ""

    def __init__(self, test_n):
        self.sweep_args = ["--limit", str(test_n)]

    @staticmethod
    def row(per, p):
        acc, acc_sp = mean_spread([100 * r["acc"] for r in per])
        drop, drop_sp = mean_spread([r["drop_points"] for r in per])
        kept, total = kept_means(per)
        err = max(100 * r["acc_err95"] for r in per)
        return {"p": p, "acc": acc, "acc_spread": acc_sp, "drop": drop, "drop_spread": drop_sp,
                "targeted_kept": kept, "total_kept": total, "acc_err95": err}

    @staticmethod
    def plot_err(r):
        return r["acc_spread"] if r["seeds"] > 1 else r["acc_err95"]

    @staticmethod
    def title(plan):
        seeds = plan["seeds"]
        return (f"# Truncation experiment: {plan['mode']} ({plan['model']}, {plan['epochs']} epochs, "
                f"{plan['train_images']} training images, n = {plan['test_images']} test images, "
                f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})")

    @staticmethod
    def note(summary, plan, over):
        return ("Cells: test accuracy in % (in parentheses: its change from the same model untruncated, in points)"
                + over + ". The 95% binomial error of one accuracy is about "
                + f"{max(r['acc_err95'] for t in summary.values() for rows in t.values() for r in rows):.1f} points.")

    @staticmethod
    def cell(r):
        sp = f" +-{r['acc_spread']:.1f}" if r["seeds"] > 1 else ""
        if r["p"] == 1.0:
            return f"{r['acc']:.2f}{sp}"
        return f"{r['acc']:.2f}{sp} ({0.0 - r['drop'] + 0.0:+.2f})"

    @staticmethod
    def plot_name(targets):
        return f"accuracy-{targets}.png"

    @staticmethod
    def plot_title(plan, targets):
        what = truncated_words(targets)
        return f"{plan['model']} on Fashion-MNIST, {plan['epochs']} epoch(s): accuracy vs kept fraction, {what}"

    @staticmethod
    def refs(plan):
        return []

    @staticmethod
    def extra_md(summary, plan, results):
        return []

    @staticmethod
    def after_runs(ctx, results):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output directory (default runs/experiment or runs/experiment-quick)")
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 10000 training images, 2 epochs, 2000 test images: minutes, not hours")
    add_common_flags(ap, "epochs (default: 2 quick; full: what fits in 3 hours)", "default 1,2; quick: 1")
    a = ap.parse_args()

    q3r, have_lorita, have_factorized = find_q3r(a)

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
    seeds = parse_seeds(a, seeds)
    if a.epochs:
        epochs = a.epochs
    out = a.out or os.path.join("runs", "experiment" + ("" if mode == "full" else "-" + mode))
    ms = methods(have_lorita, have_factorized, a.methods)
    nruns = len(ms) * len(seeds)
    speed = 2.0 / max(a.threads, 1) if a.threads <= 2 else 2.0 / min(a.threads, 4)
    eval_run = EVAL_S_PER_IMAGE * test_n * speed
    sweep_s = SWEEP_EVALS * eval_run  # per model: two target sets at 9 p, three compressions at 5
    mean_cost = sum(c for _, _, c in ms) / len(ms)
    epoch_s = (TRAIN_S_PER_IMAGE * train_n * mean_cost) * speed + eval_run
    epochs = runs_epochs(out, epochs)
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
            "lorita": have_lorita, "factorized": have_factorized, "methods": method_args(ms, nuc_lambda),
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
    for name, args in plan["methods"].items():
        say(f"  {name:18s} {' '.join(args)}")
    if a.dry_run:
        return 0
    return run(Images(test_n), a, plan, ms, common, out, seeds)


if __name__ == "__main__":
    sys.exit(main())
