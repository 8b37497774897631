#!/usr/bin/env python3
"""The fine-tuning experiment: low-rank updates of a pretrained model at equal adapter size, on
images and on text, with the q3r program.

Two tasks. Images: vit-fmnist pretrained on Fashion-MNIST classes 0-4 (`--classes 0-4`), then a
fresh 5-class head fitted to classes 5-9 with everything else frozen (--reg probe, a linear probe:
the "probe", the BASE every image adapter applies to), then fine-tuned on classes 5-9. Text:
gpt-tiny pretrained on data/kjv.txt (BASE), fine-tuned on data/fortunes.txt (scripts/text-data.sh
makes both). Every adapter acts on the block matrices (Q, K, V, proj, fc1, fc2); at each adapter
rank r (1, 2, 4, 8, 16), per seed:
  lora           --reg lora --rank r: the run's own adapter/
  q3r-update     full fine-tuning with --reg decoupled --on-update --rank r (Q3R on W - W_0), cut to
                 rank r by `q3r adapter extract BASE TUNED DIR --rank r`
  lora-q3r       --reg lora --rank 32 --lora-q3r r (coupled Q3R on B A toward r), cut to r likewise
  full-extract   full fine-tuning (--reg none; one run per seed), cut to r likewise (the baseline)
and full fine-tuning untruncated (the upper bound; the size of its update is that of every
targeted matrix). Each cut adapter is scored by `q3r eval BASE --adapter DIR` (test accuracy
on classes 5-9; validation bits per byte of the fine-tuning text); its size is the number of
entries of its lora_A and lora_B tensors, r (in + out) summed over its modules (a fused qkv is one
module of rank 3r: PEFT's count). Output (in --out): <task>/pretrain/, images/probe/,
<task>/runs/<run>/, <task>/adapters/<run>-r<r>/, <task>/evals/*.json, results.json, results.md and
<task>-metric.png.

Resumable as scripts/experiment.py: a trained model is not trained again (a checkpoint is
resumed), an adapter or an eval newer than its model is not redone; --report writes the tables
from what has finished. Every command is printed before it runs. See docs/EXPERIMENT.md, "The
fine-tuning experiment". The machinery is scripts/experiment_lib.py's.

    scripts/experiment_finetune.py --quick                          # about 10 minutes on 2 cores
    scripts/experiment_finetune.py --out runs/experiment-finetune   # the full experiment, about 2.1 hours

Sizes, from measured step times at 2 threads: a vit-fmnist epoch on 60000 images is 70-90 s
(taken as 80 s, 1.33 ms an image trained, a third of that scored), a gpt-tiny step of 64 windows
of 128 bytes about 0.5 s (7.8 ms a window, a third of it scored); every fine-tuning method is taken
at the cost of full fine-tuning, Q3R's (the SVD refreshes) 15% more; adapter extraction (a few
SVDs of 64 x 64 to 256 x 64 matrices) is negligible. Full (two seeds, 16 fine-tunes a seed and
task): images: pretraining 4 epochs of the 30000 images of classes 0-4 (160 s), the probe 1 epoch
(40 s), each fine-tune 2 epochs of the 30000 of classes 5-9 (80 s), 21 evals a seed on the 5000
test images (2.2 s each): 32 x 86 s + 200 + 92 = 50 minutes; text: pretraining 1500 steps (750 s),
each fine-tune 150 steps (75 s), evals on 256 windows (under a second): 32 x 80 s + 750 = 55
minutes; both together about 1.8 hours (the estimate printed with --dry-run; a loaded machine is
slower). Measured in the run recorded in README.md (both tasks at once, one thread each, on the
shared 2-core machine): an image fine-tune 2.2-3.0 min, the text pretraining 0.87 s a step. Quick (one seed, r = 1, 4: 7 fine-tunes a task): images: 10000 images, pretraining 2
epochs (27 s), probe and fine-tunes 1 epoch (13 s each), 2000 test images; text: pretraining 400
steps (200 s), fine-tunes 60 steps (30 s), 128 windows: about 9 minutes.
"""
import argparse
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiment_lib import (ROOT, add_common_flags, done_after, find_q3r, fmt_time, mean_spread,  # noqa: E402
                            parse_seeds, plot_series, run_cmd, say, write_atomic)

TARGETS = "qkv,proj,fc1,fc2"      # the adapted matrices: every linear layer of the blocks
RANKS = [1, 2, 4, 8, 16]
LORA_BIG = 32                      # the generous LoRA rank of lora-q3r
# Q3R's pull on the update: a pilot at the --quick size (image task, r = 1, seed 1, scored on its
# test images) gave adapters of 0.726 / 0.756 / 0.717 accuracy at pulls 9 / 27 / 81
PULL = ["--pull", "27"]
LR, MIN_LR = 1e-3, 1e-5
# the probe fits one linear layer: a larger step (at 1e-3 one epoch left it near chance)
PROBE_SCHED = ["--lr", "1e-2", "--min-lr", "1e-4", "--schedule", "cosine"]
Q3R_COST = 1.15                    # a Q3R step against a plain one
IMG_TRAIN_S = 80.0 / 60000         # seconds to train on one image at 2 threads (docstring)
TXT_TRAIN_S = 0.5 / 64             # seconds to train on one gpt-tiny window of 128 bytes at 2 threads
EVAL_FRACTION = 1 / 3              # scoring against training
METHODS = ["lora", "q3r-update", "lora-q3r", "full-extract"]
UPPER = "full"                     # full fine-tuning untruncated


def adapter_params(adir):
    """entries of the adapter's lora_A and lora_B tensors (its safetensors header)"""
    with open(os.path.join(adir, "adapter_model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    total = 0
    for name, t in header.items():
        if name != "__metadata__" and (".lora_A." in name or ".lora_B." in name):
            k = 1
            for d in t["shape"]:
                k *= d
            total += k
    return total


def update_params(q3r, base):
    """entries of every targeted matrix (the untruncated update's size), from the model's header"""
    with open(base, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    vit = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
    gpt = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    total = 0
    for name, t in header.items():
        if ((name.startswith("blocks.") and name.endswith(vit)) or
                (name.startswith("transformer.h.") and name.endswith(gpt))):
            total += t["shape"][0] * t["shape"][1]
    return total


class Task:
    """one task's runs: pretraining (and the probe), its fine-tuning flags, its eval"""

    def __init__(self, name, plan, out):
        self.name, self.plan, self.dir = name, plan, os.path.join(out, name)
        self.metric = "acc" if name == "images" else "bpb"
        self.metric_label = "test accuracy (classes 5-9)" if name == "images" else "validation bits per byte (fortunes)"

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def base(self):
        return self.path("probe" if self.name == "images" else "pretrain", "model.safetensors")

    def eval_args(self):
        p = self.plan
        return ["--limit", str(p["test_n"])] if self.name == "images" else ["--data", p["ft_data"]]


def train(ctx, rdir, args, report):
    """train into rdir unless its model exists; the summary line of q3r train --json"""
    model = os.path.join(rdir, "model.safetensors")
    tj = os.path.join(rdir, "train.json")
    if not os.path.exists(model):
        if report:
            return None
        cmd = [ctx["q3r"], "train"] + args + ["--out", rdir, "--threads", str(ctx["threads"]), "--json"]
        if ctx["quiet"]:
            cmd.append("--quiet")
        cmd.append("--resume" if os.path.exists(os.path.join(rdir, "checkpoint.safetensors")) else "--overwrite")
        say(f"[{fmt_time(ctx['clock']())}] training {os.path.relpath(rdir, ctx['out'])}")
        write_atomic(tj, run_cmd(cmd, capture=True))
    else:
        say(f"{os.path.relpath(rdir, ctx['out'])}: trained already, skipped")
    try:
        with open(tj) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}


def evaluate(ctx, task, ej, model, adapter, report):
    """q3r eval of model (with adapter) into ej unless done after its inputs; its JSON"""
    src = os.path.join(adapter, "adapter_model.safetensors") if adapter else model
    if not done_after(ej, src):
        if report:
            return None
        cmd = [ctx["q3r"], "eval", model] + (["--adapter", adapter] if adapter else []) + task.eval_args() + [
            "--threads", str(ctx["threads"]), "--json"]
        write_atomic(ej, run_cmd(cmd, capture=True))
    with open(ej) as f:
        return json.load(f)


def extract(ctx, base, tuned, adir, r, report):
    """q3r adapter extract BASE TUNED adir --rank r unless newer than the tuned model"""
    if done_after(os.path.join(adir, "adapter_model.safetensors"), tuned):
        return True
    if report:
        return False
    run_cmd([ctx["q3r"], "adapter", "extract", base, tuned, adir, "--rank", str(r), "--targets", TARGETS],
            capture=True)
    return True


def run_task(ctx, task, seeds, ranks, report):
    """every run, adapter and eval of one task; rows: list of per-run dicts"""
    p = task.plan
    ft = p["finetune_args"]
    pre = task.path("pretrain")
    if train(ctx, pre, p["pretrain_args"], report) is None:
        say(f"{task.name}: not pretrained, nothing to report")
        return []
    if task.name == "images":
        if train(ctx, task.path("probe"), p["probe_args"] + ["--init", os.path.join(pre, "model.safetensors")],
                 report) is None:
            say("images: no probe, nothing to report")
            return []
    base = task.base()
    init = ["--init", base] + ft
    rows = []

    def row(method, r, seed, run, adir, model=None):
        ej = task.path("evals", f"{method}-r{r}-s{seed}.json" if adir else f"{run}.json")  # one file per score
        e = evaluate(ctx, task, ej, model or base, adir, report)
        if e is None:
            say(f"{task.name} {method} r={r} s{seed}: not finished, left out")
            return
        rows.append({"task": task.name, "method": method, "r": r, "seed": seed, "run": run, "adapter": adir,
                     "params": adapter_params(adir) if adir else update_params(ctx["q3r"], base),
                     "metric": e[task.metric], "eval": e})

    os.makedirs(task.path("evals"), exist_ok=True)
    for seed in seeds:
        s = ["--seed", str(seed)]
        full = task.path("runs", f"full-s{seed}")
        full_done = train(ctx, full, init + ["--reg", "none"] + s, report) is not None
        for r in ranks:
            run = f"lora-r{r}-s{seed}"
            if train(ctx, task.path("runs", run), init + ["--reg", "lora", "--rank", str(r), "--targets", TARGETS]
                     + s, report) is not None:
                row("lora", r, seed, run, task.path("runs", run, "adapter"))
            for method, args in (("q3r-update", ["--reg", "decoupled", "--on-update", "--rank", str(r)] + PULL),
                                 ("lora-q3r", ["--reg", "lora", "--rank", str(ctx["lora_big"]), "--lora-q3r", str(r)]
                                  + PULL)):
                run = f"{method}-r{r}-s{seed}"
                tuned = task.path("runs", run, "model.safetensors")
                adir = task.path("adapters", f"{run}")
                if (train(ctx, task.path("runs", run), init + args + ["--targets", TARGETS] + s, report) is not None
                        and extract(ctx, base, tuned, adir, r, report)):
                    row(method, r, seed, run, adir)
            adir = task.path("adapters", f"full-extract-r{r}-s{seed}")
            if full_done and extract(ctx, base, os.path.join(full, "model.safetensors"), adir, r, report):
                row("full-extract", r, seed, f"full-s{seed}", adir)
        if full_done:
            row(UPPER, 0, seed, f"full-s{seed}", None, os.path.join(full, "model.safetensors"))
    return rows


def summarize(rows, ranks, seeds):
    """task -> method -> [{r, params, metric, spread, seeds}] (r = 0: the untruncated upper bound)"""
    out = {}
    for task in ("images", "text"):
        out[task] = {}
        for method in METHODS + [UPPER]:
            cells = []
            for r in ([0] if method == UPPER else ranks):
                got = [x for x in rows if x["task"] == task and x["method"] == method and x["r"] == r]
                if not got:
                    continue
                m, sp = mean_spread([x["metric"] for x in got])
                cells.append({"r": r, "params": got[0]["params"], "metric": m, "spread": sp,
                              "seeds": sorted(x["seed"] for x in got)})
            if cells:
                out[task][method] = cells
    return out


def markdown(summary, plan):
    seeds = plan["seeds"]
    lines = [f"# Fine-tuning experiment: {plan['mode']} (seed{'s' if len(seeds) > 1 else ''} "
             f"{', '.join(map(str, seeds))}; adapters on {TARGETS})", ""]
    missing = []
    for task, t in plan["tasks"].items():
        if task not in summary or not summary[task]:
            continue
        metric = "test accuracy, higher is better" if task == "images" else "validation bits per byte, lower is better"
        lines += [f"## {task}: {t['what']}", "",
                  f"Cells: {metric}" + (", mean over the seeds +- half their range" if len(seeds) > 1 else "")
                  + "; in parentheses the adapter's parameters (entries of its lora_A and lora_B).", "",
                  "| method | " + " | ".join(f"r = {r}" for r in plan["ranks"]) + " |",
                  "|---|" + "---|" * len(plan["ranks"])]
        for method in METHODS:
            cells = {c["r"]: c for c in summary[task].get(method, [])}
            if not cells:
                missing.append(f"{task} {method}")
                continue
            fmt = []
            for r in plan["ranks"]:
                c = cells.get(r)
                if c is None:
                    fmt.append("-")
                    missing.append(f"{task} {method} r={r}")
                    continue
                if c["seeds"] != seeds:
                    missing.append(f"{task} {method} r={r} has seed(s) {', '.join(map(str, c['seeds']))} only")
                sp = f" +-{c['spread']:.4f}" if len(c["seeds"]) > 1 else ""
                fmt.append(f"{c['metric']:.4f}{sp} ({c['params']})")
            lines.append(f"| {method} | " + " | ".join(fmt) + " |")
        up = summary[task].get(UPPER)
        if up:
            c = up[0]
            sp = f" +-{c['spread']:.4f}" if len(c["seeds"]) > 1 else ""
            lines += ["", f"Full fine-tuning untruncated (the upper bound; its update has {c['params']} entries in "
                          f"the adapted matrices, and the head moves too): {c['metric']:.4f}{sp}."]
        else:
            missing.append(f"{task} {UPPER}")
        lines.append("")
    if missing:
        lines[1:1] = ["", "**Unfinished experiment** (a `--report` of what had finished): " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None,
                    help="output directory (default runs/experiment-finetune or runs/experiment-finetune-quick)")
    ap.add_argument("--quick", action="store_true", help="one seed, r = 1, 4, short runs: about 10 minutes")
    add_common_flags(ap, "fine-tuning epochs of the image task (default: 1 quick, 2 full)", "default 1,2; quick: 1")
    ap.add_argument("--ranks", default=None, help="comma list of adapter ranks (default 1,2,4,8,16; quick: 1,4)")
    ap.add_argument("--tasks", default="images,text", help="comma list of images, text (default both)")
    ap.add_argument("--pretrain-data", default=os.path.join(ROOT, "data", "kjv.txt"),
                    help="text task: the pretraining text (default data/kjv.txt)")
    ap.add_argument("--finetune-data", default=os.path.join(ROOT, "data", "fortunes.txt"),
                    help="text task: the fine-tuning text (default data/fortunes.txt, scripts/text-data.sh fortunes)")
    a = ap.parse_args()

    q3r, _, _ = find_q3r(a)
    tasks = [t for t in a.tasks.split(",") if t]
    if not tasks or any(t not in ("images", "text") for t in tasks):
        sys.exit(f"experiment: --tasks '{a.tasks}': a comma list of images, text")
    if "text" in tasks:
        for f, how in ((a.pretrain_data, "scripts/text-data.sh"), (a.finetune_data, "scripts/text-data.sh fortunes")):
            if not os.path.isfile(f):
                sys.exit(f"experiment: {f}: no such file (make it with {how})")
    if a.smoke:  # tiny models, seconds per run (tests)
        mode, seeds, ranks, lora_big = "smoke", [1], [1, 2], 4
        vit, gpt = ["--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64"], [
            "--model", "gpt-tiny", "--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64", "--context", "32"]
        img = dict(train_n=512, test_n=200, pre_epochs=1, epochs=1, batch=64)
        txt = dict(pre_steps=20, steps=10, batch=16, context=32, windows=16)
    elif a.quick:
        mode, seeds, ranks, lora_big = "quick", [1], [1, 4], LORA_BIG
        vit, gpt = ["--model", "vit-fmnist"], ["--model", "gpt-tiny"]
        img = dict(train_n=10000, test_n=2000, pre_epochs=2, epochs=1, batch=128)
        txt = dict(pre_steps=400, steps=60, batch=64, context=128, windows=128)
    else:
        mode, seeds, ranks, lora_big = "full", [1, 2], RANKS, LORA_BIG
        vit, gpt = ["--model", "vit-fmnist"], ["--model", "gpt-tiny"]
        img = dict(train_n=30000, test_n=5000, pre_epochs=4, epochs=2, batch=128)
        txt = dict(pre_steps=1500, steps=150, batch=64, context=128, windows=256)
    seeds = parse_seeds(a, seeds)
    if a.ranks:
        try:
            ranks = [int(r) for r in a.ranks.split(",")]
        except ValueError:
            sys.exit(f"experiment: --ranks '{a.ranks}' is not a comma list of integers")
    if a.epochs:
        img["epochs"] = a.epochs
    out = a.out or os.path.join("runs", "experiment-finetune" + ("" if mode == "full" else "-" + mode))
    sched = ["--lr", str(LR), "--min-lr", str(MIN_LR), "--schedule", "cosine"]
    plan = {"mode": mode, "seeds": seeds, "ranks": ranks, "lora_big": lora_big, "targets": TARGETS, "q3r": q3r,
            "threads": a.threads, "tasks": {}}
    speed = 2.0 / max(a.threads, 1) if a.threads <= 2 else 2.0 / min(a.threads, 4)
    per_seed = 1 + len(ranks) * (1 + 2 * Q3R_COST)   # full, lora, q3r-update, lora-q3r (in full-run units)
    evals = 1 + 4 * len(ranks)
    estimate = 0.0
    if "images" in tasks:
        lim = ["--train-limit", str(img["train_n"]), "--test-limit", str(img["test_n"]), "--batch", str(img["batch"])]
        t = {"what": f"vit-fmnist{' (tiny)' if mode == 'smoke' else ''} pretrained on Fashion-MNIST classes 0-4, "
                     f"a fresh head on 5-9 (the probe), fine-tuned on 5-9 ({img['epochs']} epoch(s) of "
                     f"{img['train_n']} images, {img['test_n']} test images)",
             "test_n": img["test_n"],
             "pretrain_args": vit + lim + sched + ["--epochs", str(img["pre_epochs"]), "--reg", "none",
                                                   "--classes", "0-4", "--seed", "1"],
             "probe_args": lim + PROBE_SCHED + ["--epochs", "1", "--new-head", "5", "--classes", "5-9",
                                                "--reg", "probe", "--seed", "1"],
             "finetune_args": lim + sched + ["--epochs", str(img["epochs"]), "--classes", "5-9"]}
        ep = img["train_n"] * IMG_TRAIN_S * speed
        ev = img["test_n"] * IMG_TRAIN_S * EVAL_FRACTION * speed
        t["estimate_s"] = (ep * img["pre_epochs"] + ep + len(seeds) * (per_seed * ep * img["epochs"] + evals * ev))
        plan["tasks"]["images"] = t
        estimate += t["estimate_s"]
    if "text" in tasks:
        common = ["--batch", str(txt["batch"]), "--val-windows", str(txt["windows"]), "--val-fraction", "0.1"]
        t = {"what": f"{'a tiny GPT' if mode == 'smoke' else 'gpt-tiny'} pretrained on "
                     f"{os.path.basename(a.pretrain_data)} ({txt['pre_steps']} steps), fine-tuned on "
                     f"{os.path.basename(a.finetune_data)} ({txt['steps']} steps of {txt['batch']} windows of "
                     f"{txt['context']} bytes; {txt['windows']} validation windows)",
             "ft_data": os.path.abspath(a.finetune_data),
             "pretrain_args": gpt + common + sched + ["--data", os.path.abspath(a.pretrain_data), "--epochs", "1",
                                                      "--epoch-steps", str(txt["pre_steps"]), "--reg", "none",
                                                      "--seed", "1"],
             "finetune_args": common + sched + ["--data", os.path.abspath(a.finetune_data), "--epochs", "1",
                                                "--epoch-steps", str(txt["steps"])]}
        win = TXT_TRAIN_S * (txt["context"] / 128) * speed
        step = txt["batch"] * win
        ev = txt["windows"] * win * EVAL_FRACTION
        t["estimate_s"] = txt["pre_steps"] * step + len(seeds) * (per_seed * txt["steps"] * step + evals * ev)
        plan["tasks"]["text"] = t
        estimate += t["estimate_s"]
    plan["estimate_s"] = estimate
    say(f"experiment_finetune ({mode}): tasks {', '.join(tasks)}; ranks {', '.join(map(str, ranks))}; "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; adapters on {TARGETS}")
    for name, t in plan["tasks"].items():
        say(f"  {name}: {t['what']}; estimate {fmt_time(t['estimate_s'])}")
        say(f"    pretrain:  q3r train {' '.join(t['pretrain_args'])}")
        if "probe_args" in t:
            say(f"    probe:     q3r train --init PRETRAINED {' '.join(t['probe_args'])}")
        say(f"    fine-tune: q3r train --init BASE {' '.join(t['finetune_args'])} --seed S, then")
        say(f"      lora:         --reg lora --rank r --targets {TARGETS}")
        say(f"      q3r-update:   --reg decoupled --on-update --rank r {' '.join(PULL)} --targets {TARGETS}; adapter extract --rank r")
        say(f"      lora-q3r:     --reg lora --rank {lora_big} --lora-q3r r {' '.join(PULL)} --targets {TARGETS}; adapter extract --rank r")
        say(f"      full-extract: --reg none (one run a seed); adapter extract --rank r")
        say(f"      full:         that run untruncated (the upper bound)")
        say(f"    each adapter: q3r eval BASE --adapter DIR {' '.join(Task(name, t, out).eval_args())}")
    say(f"  estimate: {fmt_time(estimate)} (measured rates at {a.threads} threads; slower when the machine is busier)")
    if a.dry_run:
        return 0
    if a.report and not os.path.isdir(out):
        sys.exit(f"experiment: --report: {out} holds no experiment")
    os.makedirs(out, exist_ok=True)
    t0 = __import__("time").time()
    ctx = {"q3r": q3r, "threads": a.threads, "out": out, "lora_big": lora_big, "quiet": mode == "smoke" or not sys.stderr.isatty(),
           "clock": lambda: __import__("time").time() - t0}
    rows = []
    for name in tasks:
        rows += run_task(ctx, Task(name, plan["tasks"][name], out), seeds, ranks, a.report)
    if not rows:
        sys.exit(f"experiment: nothing in {out} has finished yet; nothing to report")
    summary = summarize(rows, ranks, seeds)
    write_atomic(os.path.join(out, "results.json"),
                 json.dumps({"plan": plan, "rows": rows, "summary": summary, "seconds": ctx["clock"]()}, indent=1) + "\n")
    md = markdown(summary, plan)
    write_atomic(os.path.join(out, "results.md"), md)
    pngs = []
    for name in tasks:
        if not summary.get(name):
            continue
        series = [(m, [(c["params"], c["metric"], c["spread"]) for c in cells])
                  for m, cells in summary[name].items() if m != UPPER]
        refs = [(f"full fine-tuning ({summary[name][UPPER][0]['params']} update entries)",
                 summary[name][UPPER][0]["metric"])] if UPPER in summary[name] else []
        pngs.append(f"{name}-metric.png")
        plot_series(series, os.path.join(out, pngs[-1]), f"fine-tuning, {name}: {Task(name, plan, out).metric_label} "
                    "against adapter size", "adapter parameters", Task(name, plan, out).metric_label, refs, logx=True)
    say("")
    say(md)
    say(f"experiment: {'report written' if a.report else 'done'} in {fmt_time(ctx['clock']())}; "
        f"{out}/results.md, results.json, " + ", ".join(pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
