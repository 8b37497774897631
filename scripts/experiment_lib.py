"""What the truncation experiments share (scripts/experiment.py on images, scripts/experiment_text.py
on text): the methods and their schedule, running and printing q3r commands, resumability (a
trained model is not trained again, a sweep newer than its model is not redone, the runs in --out
fix the epochs), the sweeps, the summary over seeds, the markdown tables, the plots and --report.

A task (the image or the text experiment) is an object that says what differs:
  name, metric_label            'images' / 'text'; the plot's y label
  row(per, p)                   the summary row at kept fraction p from the sweep rows of each seed
  value_key, spread_key         the row's plotted value and its spread over seeds
  value_digits                  the decimals a cell prints the value with
  plot_err(row)                 the error bar of one plotted point
  title(plan)                   the first line of results.md
  note(summary, plan, over)     the line under it: what a cell is
  cell(row)                     one table cell (row["p"] == 1: the untruncated model)
  what(targets)                 what a target set truncates, for the section headings
  plot_title(plan, targets)     the title of one plot; plot_name(targets) its file name
  refs(plan)                    horizontal reference lines of the plots: [(label, y)]
  extra_md(summary, plan, results)  lines appended to results.md (may be empty)
  sweep_args                    extra `q3r sweep` flags (the image task's --limit)
  after_runs(ctx, results)      called once every run is trained and swept (or reported)
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
LR, MIN_LR = 1e-3, 1e-5
NUCLEAR_SHRINK = 0.2         # total soft threshold lambda * sum_t lr_t of the nuclear-norm baseline (docs/EXPERIMENT.md)
FULL_BUDGET_S = 3 * 3600
# Every model is also compressed four more ways on every block matrix (REG_TARGETS): whitened
# (activation-aware, as SVD-LLM) at uniform p, and with ranks chosen under one budget of p of the
# targeted parameters (by the energy of the plain or whitened spectra, or, whitened, by each
# matrix's measured loss: the loss rule); beside the plain uniform p of the "all" sweep.
COMPRESS_PS = [0.5, 0.4, 0.3, 0.2, 0.1]
CALIB = 256                  # calibration samples of the whitened rules (from the training split)
COMPRESS_KINDS = ["whitened", "budget", "whitened-budget", "whitened-loss-budget"]
COMPRESS_WORDS = {"plain": "plain SVD, uniform p", "whitened": "whitened, uniform p",
                  "budget": "plain SVD, budgeted ranks", "whitened-budget": "whitened, budgeted ranks",
                  "whitened-loss-budget": "whitened, ranks by measured loss"}
COMPRESS_RULES = ["plain"] + COMPRESS_KINDS  # every rule of the compression tables, "plain" the "all" sweep
COMPRESS_SHORT = {"plain": "s", "whitened": "w", "budget": "b", "whitened-budget": "w+b",
                  "whitened-loss-budget": "L"}
# sweeps per model, in evaluations (the model itself and each p), for the time estimates; the
# loss rule's measurement (8 ranks per matrix on 64 samples) costs about 12 more on these models
SWEEP_EVALS = len(TARGET_SETS) * (1 + len(PS)) + len(COMPRESS_KINDS) * (1 + len(COMPRESS_PS)) + 12


def compress_args(kind):
    """the q3r sweep flags of one compression kind (COMPRESS_KINDS)"""
    ps = ",".join(f"{p:g}" for p in COMPRESS_PS)
    white = ["--method", "whitened", "--calib", str(CALIB)] if kind.startswith("whitened") else []
    loss = ["--budget-rule", "loss"] if "-loss-" in kind else []
    return (["--budgets", ps] if kind.endswith("budget") else ["--ps", ps]) + white + loss


def methods(have_lorita, have_factorized, only=None):
    """(name, q3r train arguments, relative cost per step) in table order; only: a comma list of
    names (--methods) to keep"""
    m = [("adamw", ["--reg", "none"], 1.0),
         ("nuclear", ["--reg", "nuclear"], 1.1)]  # --lambda added per plan (depends on the step count)
    for rank in ("0.4", "0.2"):
        for pull in ("9", "27"):
            m.append((f"q3r-r{rank}-pull{pull}", ["--reg", "decoupled", "--rank", rank, "--pull", pull], 1.15))
    # Q3R choosing its ranks under one parameter budget (--rank budget:P: dense for the first 10% of
    # the run, then each matrix's rank from its spectrum), at the lower rank and the stronger pull
    m.append(("q3r-b0.2-pull27", ["--reg", "decoupled", "--rank", "budget:0.2", "--pull", "27"], 1.12))
    # the same with the ranks chosen by measured loss (--budget-rule loss: each matrix cut alone at
    # the choice step, the training loss measured; about a minute more on gpt-tiny)
    m.append(("q3r-bl0.2-pull27", ["--reg", "decoupled", "--rank", "budget:0.2", "--budget-rule", "loss",
                                   "--pull", "27"], 1.15))
    if have_lorita:
        m.append(("lorita3", ["--reg", "lorita", "--lorita-factors", "3"], 1.2))
    if have_factorized:
        m.append(("factorized-r0.4", ["--reg", "factorized", "--rank", "0.4"], 1.0))
    if only:
        names = [x.strip() for x in only.split(",") if x.strip()]
        unknown = [x for x in names if x not in [n for n, _, _ in m]]
        if unknown or not names:
            sys.exit(f"experiment: --methods: unknown {', '.join(unknown) or '(none given)'}; "
                     f"known: {', '.join(n for n, _, _ in m)}")
        m = [x for x in m if x[0] in names]
    return m


def targets_words(targets):
    """a target set in words, for table headings"""
    return "Q, K, V" if targets == "qkv" else "every linear layer of the blocks (Q, K, V, proj, fc1, fc2)"


def truncated_words(targets):
    """a target set in words, for plot titles"""
    return "Q/K/V truncated" if targets == "qkv" else "all block linear layers truncated"


def lr_sum(steps, lr=LR, min_lr=MIN_LR):
    """sum_t lr_t of q3r train's schedule: linear warmup (5% of the run, at most 200 steps), then
    cosine from lr to min_lr (src/optim/schedule.c)"""
    warm = min(steps // 20, 200)
    s = 0.0
    for t in range(steps):
        if t < warm:
            s += lr * (t + 1) / warm
        else:
            prog = (t - warm) / (steps - warm)
            s += min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * prog))
    return s


def fmt_time(s):
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def say(*a):
    print(*a, flush=True)


def run_cmd(cmd, capture=False, binary=False):
    """print the command, run it, stop the experiment if it fails; capture: return its stdout
    (bytes with binary)"""
    say("$ " + shlex.join(cmd))
    if capture:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=not binary)
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


def done_after(path, model):
    """an output counts when it is newer than the model it was made from"""
    return os.path.exists(path) and os.path.exists(model) and os.path.getmtime(path) >= os.path.getmtime(model)


sweep_done = done_after


def mean_spread(xs):
    """mean and half the range (0 for one seed)"""
    m = sum(xs) / len(xs)
    return m, (max(xs) - min(xs)) / 2


def add_common_flags(ap, epochs_help, default_seeds_doc):
    """the flags both experiments take, after their own --out and --quick"""
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny model, seconds (tests)
    ap.add_argument("--epochs", type=int, default=0, help=epochs_help)
    ap.add_argument("--seeds", default=None, help=f"comma list of seeds ({default_seeds_doc})")
    ap.add_argument("--methods", default=None,
                    help="comma list of the methods to run or report (default all; names as in the table)")
    ap.add_argument("--threads", type=int, default=2, help="threads for q3r (default 2)")
    ap.add_argument("--q3r", default=None, help="the q3r program (default build/q3r)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the estimate, run nothing")
    ap.add_argument("--report", action="store_true",
                    help="train and sweep nothing: write the table and plots from the runs that have finished "
                         "(of an experiment still running or stopped), saying which are missing")


def find_q3r(a):
    """the q3r program and whether it offers --reg lorita and --reg factorized"""
    q3r = a.q3r or os.environ.get("Q3R_BIN") or os.path.join(ROOT, "build", "q3r")
    if not os.access(q3r, os.X_OK):
        sys.exit(f"experiment: {q3r} is not an executable; build it first (scripts/build.sh) or pass --q3r")
    help_text = subprocess.run([q3r, "train", "--help"], capture_output=True, text=True).stdout
    return q3r, "lorita" in help_text, "factorized" in help_text


def parse_seeds(a, seeds):
    if a.seeds:
        try:
            return [int(s) for s in a.seeds.split(",")]
        except ValueError:
            sys.exit(f"experiment: --seeds '{a.seeds}' is not a comma list of integers")
    return seeds


def runs_epochs(out, epochs):
    """Runs already in --out fix the epochs: their models are reused, so a resumed or reported
    experiment must describe (and continue) them with their own epochs, whatever the budget
    arithmetic for another --seeds would say. Returns the epochs to use (0: not fixed yet)."""
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
    return epochs


def method_args(ms, nuc_lambda):
    """name -> the method's q3r train flags, the nuclear norm's lambda included"""
    out = {}
    for name, args, _ in ms:
        if name == "nuclear":
            args = args + ["--lambda", f"{nuc_lambda:.6g}"]
        out[name] = args
    return out


def summarize(task, results, names, seeds):
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
                row = task.row(per, p)
                row.update({"seeds": len(per), "seed_list": done})
                rows.append(row)
            out[targets][name] = rows
    return out


def summarize_compress(task, results, names, seeds):
    """kind ("plain" and COMPRESS_KINDS) -> method -> rows at COMPRESS_PS, means over the seeds that
    have that kind's sweep (plain: the rows of the "all" sweep)"""
    out = {}
    for kind in COMPRESS_RULES:
        out[kind] = {}
        for name in names:
            sweeps = []
            for s in seeds:
                e = results.get(f"{name}-s{s}", {})
                sw = e.get("sweeps", {}).get(REG_TARGETS) if kind == "plain" else e.get("compress", {}).get(kind)
                if sw:
                    sweeps.append((s, sw))
            if not sweeps:
                continue
            rows = []
            for p in COMPRESS_PS:
                per = [next((r for r in sw["rows"] if abs(r["p"] - p) < 1e-9), None) for _, sw in sweeps]
                if any(r is None for r in per):
                    break
                row = task.row(per, p)
                row.update({"seeds": len(per), "seed_list": [s for s, _ in sweeps]})
                rows.append(row)
            if len(rows) == len(COMPRESS_PS):
                out[kind][name] = rows
    return out


def compress_markdown(task, comp, summary):
    """the table of every method under every compression rule, the best cell of each p in bold"""
    if not any(comp.get(k) for k in COMPRESS_KINDS):
        return []
    lines = [f"## Compression rules on every block matrix (`--targets {REG_TARGETS}`)", "",
             "Each model cut up to five ways at the same kept fraction p of the targeted parameters: plain SVD or "
             f"whitened (activation-aware, as SVD-LLM: calibrated on {CALIB} training samples), each at a uniform p "
             "per matrix or with each matrix's rank chosen under one budget of p in total (`--budget`: the most "
             "summed fraction of each matrix's energy kept, plain or whitened); and whitened with the ranks "
             "chosen by measured loss (`--budget-rule loss`, as ASVD: the least summed increase of the training "
             "loss, each matrix cut alone at 8 ranks on the rule's default samples: 64 windows of text, 512 "
             "images; its increases made monotone, equal sums to the higher rank). Cells as above; the best of "
             "each column in bold.", "",
             "| method | rule | " + " | ".join(f"p = {p:g}" for p in COMPRESS_PS) + " |",
             "|" + "---|" * (2 + len(COMPRESS_PS))]
    cells = [(name, kind, rows) for name in next(iter(comp.values())) for kind in COMPRESS_RULES
             if name in comp.get(kind, {}) for rows in [comp[kind][name]]]
    best = []
    for j in range(len(COMPRESS_PS)):
        vals = [rows[j][task.value_key] for _, _, rows in cells]
        best.append(min(vals) if task.lower_is_better else max(vals))
    for name, kind, rows in cells:
        txt = [task.cell(r) for r in rows]
        txt = [f"**{t}**" if r[task.value_key] == b else t for t, r, b in zip(txt, rows, best)]
        lines.append(f"| {name} | {COMPRESS_WORDS[kind]} | " + " | ".join(txt) + " |")
    lines.append("")
    return lines + best_rule_markdown(task, comp, summary)


def best_rule_rows(task, comp, name):
    """one method's best rule at each p of COMPRESS_PS, among the rules swept on the most seeds of that
    method: [(row, tags)], tags the letters of every rule that reaches the best value as printed"""
    kinds = [k for k in COMPRESS_RULES if name in comp.get(k, {})]
    most = max(len(comp[k][name][0]["seed_list"]) for k in kinds)
    kinds = [k for k in kinds if len(comp[k][name][0]["seed_list"]) == most]
    out = []
    for j in range(len(COMPRESS_PS)):
        vals = {k: comp[k][name][j] for k in kinds}
        shown = {k: round(r[task.value_key], task.value_digits) for k, r in vals.items()}
        best = (min if task.lower_is_better else max)(shown.values())
        out.append((vals[next(k for k in kinds if shown[k] == best)],
                    ", ".join(COMPRESS_SHORT[k] for k in kinds if shown[k] == best)))
    return out


def best_rule_markdown(task, comp, summary):
    """per method and p, the best of its rules (best_rule_rows), after its untruncated model"""
    lines = [f"## The best compression rule of each method (`--targets {REG_TARGETS}`)", "",
             "Each cell is the method's best rule at that p (mean over its seeds, as above) and, after it, every "
             "rule that reaches that mean as printed: " + "; ".join(f"{COMPRESS_SHORT[k]}: {COMPRESS_WORDS[k]}" for k in COMPRESS_RULES)
             + ".", "",
             "| method | untruncated | " + " | ".join(f"p = {p:g}" for p in COMPRESS_PS) + " |",
             "|" + "---|" * (2 + len(COMPRESS_PS))]
    for name in next(iter(comp.values())):
        dense = summary[REG_TARGETS].get(name)  # None in a --report before both target sweeps of a method exist
        txt = [task.cell(dense[0]) if dense else "?"]
        txt += [f"{task.cell(row)} {tags}" for row, tags in best_rule_rows(task, comp, name)]
        lines.append(f"| {name} | " + " | ".join(txt) + " |")
    lines.append("")
    return lines


def kept_means(per):
    """the mean kept fractions (targeted, whole model) of one p over the seeds"""
    return mean_spread([r["targeted_kept"] for r in per])[0], mean_spread([r["total_kept"] for r in per])[0]


def markdown(task, summary, plan, results=None):
    seeds = plan["seeds"]
    lines = [task.title(plan), ""]
    have = {len(rows[0]["seed_list"]) for rows in summary[TARGET_SETS[0]].values()}
    over = (f"; mean over {len(seeds)} seeds, +- half the range between them" if have == {len(seeds)} else
            "; mean over the seeds a method has, +- half the range between them" if max(have) > 1 else "")
    lines.append(task.note(summary, plan, over if len(seeds) > 1 else ""))
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
        lines.append(f"## Truncating {targets_words(targets)} (`--targets {targets}`)")
        lines.append("")
        header = "| method | untruncated | " + " | ".join(f"p = {p:g}" for p in PS) + " |"
        lines.append(header)
        lines.append("|" + "---|" * (2 + len(PS)))
        for name, rows in summary[targets].items():
            lines.append(f"| {name} | " + " | ".join(task.cell(r) for r in rows) + " |")
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
    if results:
        lines += compress_markdown(task, summarize_compress(task, results, list(plan["methods"]), seeds), summary)
    lines += task.extra_md(summary, plan, results or {})
    return "\n".join(lines)


def plot(task, summary, targets, path, title, refs=()):
    """the task's metric against kept fraction of the targeted parameters, one line per method,
    and a dashed horizontal line per reference (label, y) (gnuplot)"""
    series = [(name, [(r["targeted_kept"], r[task.value_key], task.plot_err(r)) for r in rows])
              for name, rows in summary[targets].items()]
    return plot_series(series, path, title, "kept fraction of the targeted parameters", task.metric_label, refs,
                       xrange="[0:1.03]")


def plot_rule(task, summary, comp, path, title, refs=(), kind=None):
    """every method's metric under one compression rule (kind, of COMPRESS_KINDS; None: each method's
    best rule at each p, best_rule_rows) against the kept fraction, from its untruncated model (the
    first row of its REG_TARGETS sweep) down to p = 0.1; False when no method has that sweep yet"""
    names = [n for n in (comp.get(kind, {}) if kind else next(iter(comp.values()), {})) if n in summary[REG_TARGETS]]
    series = []
    for name in names:
        rows = comp[kind][name] if kind else [row for row, _ in best_rule_rows(task, comp, name)]
        series.append((name, [(r["targeted_kept"], r[task.value_key], task.plot_err(r))
                              for r in [summary[REG_TARGETS][name][0]] + rows]))
    if not series:
        return False
    return plot_series(series, path, title, "kept fraction of the targeted parameters", task.metric_label, refs,
                       xrange="[0:1.03]")


def plot_series(series, path, title, xlabel, ylabel, refs=(), xrange=None, logx=False):
    """series: [(name, [(x, y, error bar)])], one line each, and a dashed horizontal line per
    reference (label, y), written to path as a PNG by gnuplot (False when it cannot be)"""
    if not shutil.which("gnuplot"):
        say(f"experiment: gnuplot is not on PATH, no {os.path.basename(path)} "
            "(install it with: sudo apt-get install gnuplot-nox)")
        return False
    d = os.path.dirname(os.path.abspath(path))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf"]
    with tempfile.TemporaryDirectory(dir=d, prefix=".plot-") as tmp:
        data = os.path.join(tmp, "data")
        png = os.path.join(tmp, "out.png")
        with open(data, "w") as f:
            for _, points in series:
                for x, y, err in points:
                    f.write(f"{x:.9g} {y:.9g} {err:.9g}\n")
                f.write("\n\n")

        def q(s):
            return "'" + s.replace("'", "''") + "'"
        script = [f"set terminal pngcairo size 1100,700 font 'sans,11' noenhanced",
                  f"set output {q(png)}", f"set title {q(title)}",
                  f"set xlabel {q(xlabel)}", f"set ylabel {q(ylabel)}",
                  "set grid lc rgb '#dddddd'", "set key outside right top box opaque"]
        if xrange:
            script.append(f"set xrange {xrange}")
        if logx:
            script.append("set logscale x 2")
        parts = [f"{q(data)} index {i} using 1:2:3 with yerrorlines lw 2 pt 7 ps 0.8 "
                 f"lc rgb '{colors[i % len(colors)]}' dt {1 + i // len(colors)} title {q(n)}"
                 for i, (n, _) in enumerate(series)]
        parts += [f"{y:.9g} with lines lw 1.5 dt 2 lc rgb '{c}' title {q(f'{label} ({y:.3f})')}"
                  for (label, y), c in zip(refs, ["#000000", "#555555", "#999999", "#bbbbbb"])]
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


def run(task, a, plan, ms, common, out, seeds):
    """Train every (method, seed) run not trained yet, sweep each model on both target sets,
    then write results.json, results.md and the plots (with --report: only from the runs that
    have both sweeps, running nothing). Returns the exit code."""
    q3r, threads = plan["q3r"], plan["threads"]
    if a.report and not os.path.isdir(os.path.join(out, "runs")):
        sys.exit(f"experiment: --report: {out} holds no experiment (no {os.path.join(out, 'runs')})")
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    os.makedirs(os.path.join(out, "sweeps"), exist_ok=True)
    t0 = time.time()
    ctx = {"t0": t0, "out": out, "report": a.report, "q3r": q3r, "threads": threads, "seeds": seeds,
           "plan": plan}
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
                    run_cmd([q3r, "sweep", model, "--targets", targets, "--ps", ",".join(f"{p:g}" for p in [1.0] + PS)]
                            + task.sweep_args + ["--threads", str(threads), "--json", sj])
                with open(sj) as f:
                    entry["sweeps"][targets] = json.load(f)
            entry["compress"] = {}
            for kind in COMPRESS_KINDS:
                sj = os.path.join(out, "sweeps", f"{run}-{REG_TARGETS}-{kind}.json")
                if sweep_done(sj, model):
                    say(f"[{fmt_time(time.time() - t0)}] {run}: {kind} sweep done already, skipped")
                elif a.report:
                    continue  # a report of runs made before these sweeps existed: without them
                else:
                    run_cmd([q3r, "sweep", model, "--targets", REG_TARGETS] + compress_args(kind) + task.sweep_args
                            + ["--threads", str(threads), "--json", sj])
                with open(sj) as f:
                    entry["compress"][kind] = json.load(f)
            results[run] = entry

    names = [n for n, _, _ in ms]
    summary = summarize(task, results, names, seeds)
    if not summary[TARGET_SETS[0]]:
        sys.exit(f"experiment: no run in {out} has finished both sweeps yet; nothing to report")
    task.after_runs(ctx, results)
    comp = summarize_compress(task, results, names, seeds)
    doc = {"plan": plan, "runs": results, "summary": summary, "compress": comp, "seconds": time.time() - t0}
    write_atomic(os.path.join(out, "results.json"), json.dumps(doc, indent=1) + "\n")
    md = markdown(task, summary, plan, results)
    write_atomic(os.path.join(out, "results.md"), md)
    pngs = []
    for targets in TARGET_SETS:
        pngs.append(task.plot_name(targets))
        plot(task, summary, targets, os.path.join(out, pngs[-1]), task.plot_title(plan, targets), task.refs(plan))
    for kind, suffix, words in ((COMPRESS_KINDS[-1], "-loss-rule.png", "by the loss rule (whitened, ranks by measured loss)"),
                                (None, "-best-rule.png", "by each method's best rule at each p")):
        png = task.plot_name(REG_TARGETS)[:-len(".png")] + suffix
        if plot_rule(task, summary, comp, os.path.join(out, png),
                     task.plot_title(plan, REG_TARGETS).split(":")[0] + ": every block matrix cut " + words,
                     task.refs(plan), kind):
            pngs.append(png)
    say("")
    say(md)
    say(f"experiment: {'report written' if a.report else 'done'} in {fmt_time(time.time() - t0)}; "
        f"{out}/results.md, results.json, " + ", ".join(pngs) + task.more_outputs)
    return 0
