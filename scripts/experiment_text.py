#!/usr/bin/env python3
"""The truncation experiment on text: a byte-level GPT trained with each method, cut to low rank
afterwards, scored in validation bits per byte, with the q3r program.

Every method (those of scripts/experiment.py: AdamW, nuclear norm, Q3R at target ranks 0.4 and
0.2 with pulls 9 and 27, LoRITa, factorized) trains the same GPT (gpt-tiny; --model gpt-small)
on the same text (data/kjv.txt, made by scripts/text-data.sh; --data FILE) with the same steps,
batch (32 windows of 128 bytes), learning-rate schedule (AdamW, peak 3e-3, warmup + cosine) and seeds; its rank regularizer
acts on every linear layer of the blocks. Each model is swept with `q3r sweep` at kept fractions
p = 0.9 ... 0.1, once truncating Q/K/V and once every block matrix, on a fixed set of validation
windows. Reference lines: gzip -9, xz -9 and bzip2 -9 on the same split (scripts/text-reference.py).
Samples: `q3r sample` (fixed prompt and seed) from the dense model of each method and from it
with every block matrix cut to p = 0.3 (first seed). Output (in --out): runs/<method>-s<seed>/,
sweeps/<method>-s<seed>-<targets>.json, reference.json, samples/, results.json, results.md and
bpb-<targets>.png.

Resumable, and --report, exactly as scripts/experiment.py (the machinery is theirs in common:
scripts/experiment_lib.py). See docs/EXPERIMENT.md, "The text experiment".

    scripts/experiment_text.py --quick                      # about 7 minutes on 2 cores
    scripts/experiment_text.py --out runs/experiment-text   # the full experiment, about 2.2 hours

Sizes: a training window (gpt-tiny, context 128, batch 32, 2 threads) is taken at 0.27 s / 32 =
8.4 ms, from one --quick run on the quiet shared 2-core machine (AdamW: 100 steps in 27.8 s
with two scorings of 128 windows; the Q3R runs 30-32 s, LoRITa 48 s); scoring a window (forward
only) is taken as a third of training it. gpt-small's step is taken as 10 times gpt-tiny's.
--quick: one seed, 100 steps (2 epochs of 50), 128 validation windows: 6 min 55 s measured (the
estimate said 6:51). Full: two seeds, 1024 validation windows (131072 bytes, 30% of the split);
the epochs (of 200 steps) are as many as fit 2.25 hours with the sweeps.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiment_lib import (MIN_LR, NUCLEAR_SHRINK, PS, REG_TARGETS, ROOT, SWEEP_EVALS,  # noqa: E402
                            TARGET_SETS, add_common_flags, done_after, find_q3r, fmt_time, kept_means, lr_sum,
                            mean_spread, method_args, methods, parse_seeds, run, run_cmd, runs_epochs, say,
                            truncated_words, write_atomic)

BATCH = 32
# Language models learn far more per window from many small steps at a higher rate than the
# ViT's schedule: pilots (gpt-tiny, seed 1, 19200 windows each) reached 3.40 bits per byte at batch
# 128 and lr 1e-3 (150 steps), 3.26 at lr 3e-3, and 2.41 at batch 32 and lr 3e-3 (600 steps).
LR = 3e-3
# The full run's budget: within the 3 hours it may take, and short enough for one working session
# to run it whole.
FULL_BUDGET_S = 2.25 * 3600
CONTEXT = {"gpt-tiny": 128, "gpt-small": 256}
# seconds to train on one window of the preset's context at 2 threads (docstring: how measured)
TRAIN_S_PER_WINDOW = {"gpt-tiny": 0.27 / 32, "gpt-small": 2.7 / 32}
EVAL_FRACTION = 1 / 3          # scoring a window against training on it
SAMPLE_P = 0.3                 # the samples' truncated model: every block matrix at this p (the claim's point)
SAMPLE_TOKENS, SAMPLE_TEMPERATURE, SAMPLE_TOP_K, SAMPLE_SEED = 300, 0.8, 20, 1
CLAIM_P, CLAIM_KEEP, CLAIM_COST = 0.3, 0.05, 0.1


def sample_name(targets="all", p=SAMPLE_P):
    return f"{targets}-p{p:g}"


class Text:
    """the text experiment's metric (validation bits per byte) and its words (experiment_lib's task)"""
    name = "text"
    metric_label = "validation bits per byte"
    value_key = "bpb"
    lower_is_better = True
    value_digits = 3
    sweep_args = []  # the run's own validation windows, recorded in the model file
    more_outputs = ", reference.json, samples/"

    @staticmethod
    def row(per, p):
        bpb, bpb_sp = mean_spread([r["bpb"] for r in per])
        inc, inc_sp = mean_spread([r["bpb_increase"] for r in per])
        kept, total = kept_means(per)
        return {"p": p, "bpb": bpb, "bpb_spread": bpb_sp, "increase": inc, "increase_spread": inc_sp,
                "targeted_kept": kept, "total_kept": total, "n": max(r["n"] for r in per)}

    @staticmethod
    def plot_err(r):
        return r["bpb_spread"]

    @staticmethod
    def title(plan):
        seeds = plan["seeds"]
        return (f"# Text truncation experiment: {plan['mode']} ({plan['model']}, {plan['steps']} steps "
                f"({plan['epochs']} epochs of {plan['epoch_steps']}) of {plan['batch']} windows of "
                f"{plan['context']} bytes, {os.path.basename(plan['data'])}, n = {plan.get('val_bytes', '?')} "
                f"validation bytes, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})")

    @staticmethod
    def note(summary, plan, over):
        return ("Cells: validation bits per byte, lower is better (in parentheses: its increase over the same "
                "model untruncated)" + over + ".")

    @staticmethod
    def cell(r):
        sp = f" +-{r['bpb_spread']:.3f}" if r["seeds"] > 1 else ""
        if r["p"] == 1.0:
            return f"{r['bpb']:.3f}{sp}"
        return f"{r['bpb']:.3f}{sp} ({r['increase'] + 0.0:+.3f})"

    @staticmethod
    def plot_name(targets):
        return f"bpb-{targets}.png"

    @staticmethod
    def plot_title(plan, targets):
        what = truncated_words(targets)
        return (f"{plan['model']} on {os.path.basename(plan['data'])}, {plan['steps']} steps: "
                f"bits per byte vs kept fraction, {what}")

    @staticmethod
    def refs(plan):
        ref = plan.get("reference") or {}
        return [(name, c["bpb"]) for name, c in ref.get("compressors", {}).items()]

    @staticmethod
    def extra_md(summary, plan, results):
        lines = []
        refs = Text.refs(plan)
        if refs:
            ref = plan["reference"]
            lines += ["## Reference: general-purpose compressors on the same split", "",
                      f"Held-out cost of the {ref['scored_val_bytes']} validation bytes the models are scored on "
                      f"(the first of the last {ref['val_bytes']}) given the {ref['train_bytes']} training bytes: "
                      "compressed size of training + those bytes minus that of training, x 8 / their number "
                      "(scripts/text-reference.py), in bits per byte; the dashed lines of the plots:", "",
                      "| compressor | bits per byte |", "|---|---|"]
            lines += [f"| {name} | {y:.3f} |" for name, y in refs]
            lines.append("")
        lines += Text.claim_md(summary, plan, results)
        lines += Text.samples_md(plan, results)
        return lines

    @staticmethod
    def claim_md(summary, plan, results):
        """the issue's claim, per method and seed: the increase at p = 0.3 with every block matrix cut,
        and the untruncated cost against AdamW of the same seed"""
        j = 1 + PS.index(CLAIM_P)
        base = {}
        for run, e in results.items():
            if e["method"] == "adamw" and "all" in e["sweeps"]:
                base[e["seed"]] = e["sweeps"]["all"]["rows"][0]["bpb"]
        rows = []
        for name in summary["all"]:
            for seed in summary["all"][name][0]["seed_list"]:
                sw = results[f"{name}-s{seed}"]["sweeps"]["all"]["rows"]
                dense, inc = sw[0]["bpb"], sw[j]["bpb_increase"]
                cost = f"{dense - base[seed]:+.3f}" if seed in base else "-"
                verdict = ""
                if name.startswith("q3r-"):
                    ok_keep = inc <= CLAIM_KEEP
                    ok_cost = seed in base and dense - base[seed] < CLAIM_COST
                    verdict = f"{'yes' if ok_keep else 'no'} / {'yes' if ok_cost else 'no' if seed in base else '-'}"
                rows.append(f"| {name} | {seed} | {dense:.3f} | {inc:+.3f} | {cost} | {verdict} |")
        if not rows:
            return []
        return ["## The claim: every block matrix truncated to p = 0.3", "",
                f"Q3R's increase at p = {CLAIM_P:g} (`--targets all`) should stay within {CLAIM_KEEP:g} bits per "
                f"byte while AdamW's is far larger, and Q3R's untruncated cost against AdamW (same seed) under "
                f"{CLAIM_COST:g}. Per run:", "",
                f"| method | seed | untruncated | increase at p = {CLAIM_P:g} | untruncated - adamw | "
                f"Q3R: within {CLAIM_KEEP:g} / cost under {CLAIM_COST:g} |",
                "|---|---|---|---|---|---|"] + rows + [""]

    @staticmethod
    def samples_md(plan, results):
        got = [(e["method"], e["samples"]) for e in results.values() if e.get("samples")]
        if not got:
            return []
        lines = ["## Samples", "",
                 f"`q3r sample MODEL --prompt {json.dumps(plan['prompt'])} --tokens {SAMPLE_TOKENS} "
                 f"--temperature {SAMPLE_TEMPERATURE:g} --top-k {SAMPLE_TOP_K} --seed {SAMPLE_SEED}` from each "
                 f"method's dense model and from it with every block matrix cut to p = {SAMPLE_P:g} "
                 f"(seed {plan['seeds'][0]}; the files are in samples/):", ""]
        for name, s in got:
            for kind, label in (("dense", "dense"), (sample_name(), f"every block matrix at p = {SAMPLE_P:g}")):
                if kind in s:
                    text = s[kind].replace("```", "'''")
                    lines += [f"**{name}, {label}:**", "", "```text", text.rstrip("\n"), "```", ""]
        return lines

    @staticmethod
    def after_runs(ctx, results):
        """samples of the first seed's models (made once; --report only reads those there are), and
        the number of validation bytes the sweeps scored"""
        plan, out, q3r, threads = ctx["plan"], ctx["out"], ctx["q3r"], ctx["threads"]
        for e in results.values():
            for sw in e["sweeps"].values():
                plan["val_bytes"] = sw["untruncated"]["n"]
        sdir = os.path.join(out, "samples")
        os.makedirs(sdir, exist_ok=True)
        for run, e in results.items():
            if e["seed"] != ctx["seeds"][0]:
                continue
            model = os.path.join(e["dir"], "model.safetensors")
            cut = os.path.join(sdir, f"{run}-{sample_name()}.safetensors")
            e["samples"] = {}
            for kind, src in (("dense", model), (sample_name(), cut)):
                txt = os.path.join(sdir, f"{run}-{kind}.txt")
                if not done_after(txt, model) and not ctx["report"]:
                    if src == cut and not done_after(cut, model):
                        run_cmd([q3r, "truncate", model, cut, "--targets", "all", "--rank", f"{SAMPLE_P:g}",
                                 "--threads", str(threads)], capture=True)
                    data = run_cmd([q3r, "sample", src, "--prompt", plan["prompt"], "--tokens", str(SAMPLE_TOKENS),
                                    "--temperature", f"{SAMPLE_TEMPERATURE:g}", "--top-k", str(SAMPLE_TOP_K),
                                    "--seed", str(SAMPLE_SEED), "--threads", str(threads)], capture=True, binary=True)
                    write_atomic(txt, data.decode("utf-8", errors="replace"))
                if done_after(txt, model):
                    with open(txt, encoding="utf-8", errors="replace") as f:
                        e["samples"][kind] = f.read()


def scored_windows(size, val_fraction, context, val_windows):
    """the validation windows q3r scores: non-overlapping windows of context + 1 bytes tiling the
    split from its start (context apart), at most val_windows of them (0: all)"""
    most = (math.floor(size * val_fraction) - 1) // context
    return min(val_windows, most) if val_windows else most


def reference(plan, out):
    """scripts/text-reference.py on the run's file and split, on the validation bytes the models
    are scored on (--val-bytes: windows x context), kept in out/reference.json (made again when the
    file, the split or the windows change)"""
    path = os.path.join(out, "reference.json")
    st = os.stat(plan["data"])
    try:
        with open(path) as f:
            ref = json.load(f)
        if (ref["file"] == os.path.abspath(plan["data"]) and ref["bytes"] == st.st_size
                and ref["val_fraction"] == plan["val_fraction"] and ref["scored_val_bytes"] == plan["scored_val_bytes"]
                and os.path.getmtime(path) >= st.st_mtime):
            return ref
    except (OSError, ValueError, KeyError):
        pass
    text = run_cmd([sys.executable, os.path.join(ROOT, "scripts", "text-reference.py"), plan["data"],
                    "--val-fraction", repr(plan["val_fraction"]), "--val-bytes", str(plan["scored_val_bytes"])],
                   capture=True)
    write_atomic(path, text)
    return json.loads(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None,
                    help="output directory (default runs/experiment-text or runs/experiment-text-quick)")
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 100 steps, 128 validation windows: about 7 minutes, not hours")
    add_common_flags(ap, "epochs of --epoch-steps steps (default: 2 quick; full: what fits in 3 hours)",
                     "default 1,2; quick: 1")
    ap.add_argument("--model", default="gpt-tiny", choices=sorted(CONTEXT), help="the GPT preset (default gpt-tiny)")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "kjv.txt"),
                    help="the text file (default data/kjv.txt, made by scripts/text-data.sh)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="held-out last fraction of the file (default 0.1)")
    ap.add_argument("--epoch-steps", type=int, default=0, help="steps per epoch (default: 50 quick, 200 full)")
    ap.add_argument("--val-windows", type=int, default=-1,
                    help="validation windows scored (0: the whole split; default 128 quick, 1024 full)")
    ap.add_argument("--prompt", default="And God said", help="the samples' prompt (default 'And God said')")
    a = ap.parse_args()

    q3r, have_lorita, have_factorized = find_q3r(a)
    if not os.path.isfile(a.data):
        hint = " (make it with scripts/text-data.sh)" if a.data == os.path.join(ROOT, "data", "kjv.txt") else ""
        sys.exit(f"experiment: --data {a.data}: no such file{hint}")
    overrides = []
    context = CONTEXT[a.model]
    if a.smoke:  # a tiny GPT on whatever --data is given: seconds per run (tests)
        mode, epochs, epoch_steps, batch, val_windows, seeds = "smoke", 1, 20, 16, 0, [1]
        context = 32
        overrides = ["--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64", "--context", str(context)]
        model_desc = "tiny GPT (width 32, depth 2, context 32)"
    elif a.quick:
        mode, epochs, epoch_steps, batch, val_windows, seeds = "quick", 2, 50, BATCH, 128, [1]
        model_desc = a.model
    else:
        mode, epochs, epoch_steps, batch, val_windows, seeds = "full", 0, 200, BATCH, 1024, [1, 2]
        model_desc = a.model
    seeds = parse_seeds(a, seeds)
    if a.epochs:
        epochs = a.epochs
    if a.epoch_steps:
        epoch_steps = a.epoch_steps
    if a.val_windows >= 0:
        val_windows = a.val_windows
    out = a.out or os.path.join("runs", "experiment-text" + ("" if mode == "full" else "-" + mode))
    ms = methods(have_lorita, have_factorized, a.methods)
    nruns = len(ms) * len(seeds)

    speed = 2.0 / max(a.threads, 1) if a.threads <= 2 else 2.0 / min(a.threads, 4)
    win_s = TRAIN_S_PER_WINDOW[a.model] * (context / CONTEXT[a.model]) * speed
    scored = scored_windows(os.path.getsize(a.data), a.val_fraction, context, val_windows)
    if scored < 1:
        sys.exit(f"experiment: --data {a.data}: its validation split holds no window of {context + 1} bytes")
    eval_run = EVAL_FRACTION * win_s * scored
    sweep_s = SWEEP_EVALS * eval_run  # per model: two target sets at 9 p, three compressions at 5
    sample_s = 2 * SAMPLE_TOKENS * EVAL_FRACTION * win_s  # per first-seed model: a window's forward per byte
    mean_cost = sum(c for _, _, c in ms) / len(ms)
    epoch_s = epoch_steps * batch * win_s * mean_cost + eval_run
    epochs = runs_epochs(out, epochs)
    extra_s = nruns * sweep_s + len(ms) * sample_s
    if not epochs:  # the full run: as many epochs as fit in the budget
        epochs = max(1, int((FULL_BUDGET_S - extra_s) // (nruns * epoch_s)))
    estimate = nruns * epochs * epoch_s + extra_s
    steps = epochs * epoch_steps

    nuc_lambda = NUCLEAR_SHRINK / lr_sum(steps, LR, MIN_LR)
    common = (["--model", a.model] + overrides
              + ["--data", os.path.abspath(a.data), "--val-fraction", repr(a.val_fraction),
                 "--val-windows", str(val_windows), "--epochs", str(epochs), "--epoch-steps", str(epoch_steps),
                 "--batch", str(batch), "--lr", str(LR), "--min-lr", str(MIN_LR), "--schedule", "cosine",
                 "--targets", REG_TARGETS, "--threads", str(a.threads), "--json"])
    if mode == "smoke" or not sys.stderr.isatty():
        common.append("--quiet")
    plan = {"task": "text", "mode": mode, "model": model_desc, "preset": a.model, "model_args": overrides,
            "data": os.path.abspath(a.data), "val_fraction": a.val_fraction, "val_windows": val_windows,
            "context": context, "scored_val_bytes": scored * context, "epochs": epochs, "epoch_steps": epoch_steps, "batch": batch, "seeds": seeds,
            "steps": steps, "lr": LR, "min_lr": MIN_LR, "reg_targets": REG_TARGETS,
            "nuclear_lambda": nuc_lambda, "nuclear_shrink": NUCLEAR_SHRINK, "ps": PS, "target_sets": TARGET_SETS,
            "lorita": have_lorita, "factorized": have_factorized, "methods": method_args(ms, nuc_lambda),
            "prompt": a.prompt, "estimate_s": estimate, "q3r": q3r, "threads": a.threads}
    say(f"experiment_text ({mode}): {len(ms)} methods x {len(seeds)} seed(s) = {nruns} runs of {epochs} epoch(s) "
        f"of {epoch_steps} steps ({steps} steps of {batch} windows of {context} bytes), {model_desc} on {a.data}")
    say(f"  validation: {'all' if not val_windows else val_windows} windows of the last {a.val_fraction:g} of the file; "
        f"regularizers on '{REG_TARGETS}'; nuclear lambda {nuc_lambda:.4g} (total threshold lambda sum lr = "
        f"{NUCLEAR_SHRINK}); Q3R lambda from --pull (2 lambda sum lr)")
    if not have_lorita or not have_factorized:
        say(f"  {q3r} has no {' and no '.join(x for x, h in (('--reg lorita', have_lorita), ('--reg factorized', have_factorized)) if not h)}: left out")
    say(f"  sweeps: p = {', '.join(f'{p:g}' for p in PS)} on {' and '.join(TARGET_SETS)}; reference: "
        f"scripts/text-reference.py; samples: every method's seed-{seeds[0]} model, dense and all at p = {SAMPLE_P:g}")
    say(f"  estimate: {fmt_time(estimate)} ({fmt_time(epoch_s)} per epoch, {fmt_time(sweep_s)} of sweeps per model; "
        f"measured rates on the shared machine at {a.threads} threads; slower when it is busier)")
    for name, args in plan["methods"].items():
        say(f"  {name:18s} {' '.join(args)}")
    if a.dry_run:
        return 0
    if a.report and not os.path.isdir(os.path.join(out, "runs")):
        sys.exit(f"experiment: --report: {out} holds no experiment (no {os.path.join(out, 'runs')})")
    os.makedirs(out, exist_ok=True)
    plan["reference"] = reference(plan, out)
    return run(Text(), a, plan, ms, common, out, seeds)


if __name__ == "__main__":
    sys.exit(main())
