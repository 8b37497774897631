"""What the Python tests share: where the q3r program and the test tools are, a check
counter that ends a test with the plain 'N passed, N failed' line, running the program,
the skips without the dataset or without numpy/torch, and the learning-rate schedule's closed form (the reference
the optimizer tests use)."""
import json
import math
import os
import subprocess
import sys

BINDIR = os.environ.get("Q3R_BINARY_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build")
Q3R = os.environ.get("Q3R_BIN") or os.path.join(BINDIR, "q3r")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def tool_path(name):
    """The test tool `name` (tests/tool_*.c) in the build tree, or None (with a FAIL line)
    when it is not built."""
    path = os.path.join(BINDIR, name)
    if not os.path.exists(path):
        print(f"FAIL: {path} not built")
        return None
    return path


def skip_without_fashion_mnist(test):
    """Exit 77 (skip) when the Fashion-MNIST dataset is not installed."""
    if not os.path.isdir(FASHION_MNIST):
        print(f"{test}: skipped (no {FASHION_MNIST})")
        sys.exit(77)


def require(test, *modules):
    """Exit 77 (skip) when one of `modules` (names such as "numpy", "torch") cannot be imported;
    the test then imports them itself."""
    import importlib
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"{test}: skipped, {'/'.join(modules)} not available ({e})")
            sys.exit(77)


class Checks:
    """check(cond, what) counts; finish() prints the closing line and gives the exit code."""

    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL:", what)
        return bool(cond)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def write_corpus(path, seed, words=4000):
    """A small text file of `words` words drawn (random.Random(seed)) from a few Bible words: what
    the language-model tests train their tiny GPTs on. Returns path."""
    import random
    rnd = random.Random(seed)
    vocab = "in the beginning god created heaven and earth light was good said let there be".split()
    with open(path, "w") as f:
        f.write(" ".join(rnd.choice(vocab) for _ in range(words)))
    return path


def run_q3r(args, env=None, expect_ok=False):
    """Run the q3r program; with expect_ok, a failure prints the command and its stderr."""
    p = subprocess.run([Q3R] + list(args), capture_output=True, text=True, env=env)
    if expect_ok and p.returncode != 0:
        print("command failed:", " ".join(args), "\n", p.stderr)
    return p


def lr_at(step, lr, min_lr, warmup, total):
    """Linear warmup (lr (step + 1) / warmup), then cosine from lr to min_lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / (total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))


def experiment_rows(check, out, res, methods):
    """(method, targets, sweep rows, summary rows) of every first-seed run of an experiment's
    results.json (res) in out, after checking the summary lists the methods, each run exists with
    its model file and each sweep has its 10 rows (p = 1, 0.9 ... 0.1)."""
    import os
    check(list(res["summary"]["qkv"]) == methods and list(res["summary"]["all"]) == methods,
          f"methods {list(res['summary']['qkv'])} vs {methods}")
    out_rows = []
    for m in methods:
        run = res["runs"].get(f"{m}-s1")
        check(run is not None and os.path.exists(os.path.join(out, "runs", f"{m}-s1", "model.safetensors")), f"{m}: run")
        if run is None:
            continue
        for targets in ("qkv", "all"):
            rows = run["sweeps"][targets]["rows"]
            summ = res["summary"][targets][m]
            check(len(rows) == 10 and len(summ) == 10, f"{m} {targets}: {len(rows)} rows")
            out_rows.append((m, targets, rows, summ))
    return out_rows


def check_compression_table(check, md, out, methods, cell_text, lower_is_better):
    """The experiments' compression table (results.md `md` of the experiment in `out`): five rows
    per method, and for the first method the whitened-budget and the loss-rule sweeps' JSON
    (whitened, their rule, keeping at most 0.3 at p = 0.3) with its p = 0.3 cells equal to the
    sweeps' rows; cell_text(row) is how a sweep row's metric is printed. Then the best-rule table:
    the first method's best rule at each p (lower_is_better: the metric's direction)."""
    comp = md.split("## Compression rules")[1].split("\n## ")[0] if "## Compression rules" in md else ""
    for m in methods:
        check(len([ln for ln in comp.splitlines() if ln.startswith(f"| {m} |")]) == 5,
              f"compression table: five rows for {m}")
    for kind, words, rule in (("whitened-budget", "whitened, budgeted ranks", "budget"),
                              ("whitened-loss-budget", "whitened, ranks by measured loss", "loss-budget")):
        sj = os.path.join(out, "sweeps", f"{methods[0]}-s1-all-{kind}.json")
        sw = json.load(open(sj)) if os.path.exists(sj) else {"rows": []}
        r03 = next((r for r in sw["rows"] if abs(r["p"] - 0.3) < 1e-9), None)
        row = [ln for ln in comp.splitlines() if ln.startswith(f"| {methods[0]} | {words} |")]
        if check(r03 is not None and len(row) == 1, f"{kind} sweep of {methods[0]} and its row"):
            check(sw.get("method") == "whitened" and sw.get("rule") == rule and 0.2 < r03["targeted_kept"] <= 0.3,
                  f"the {kind} sweep is whitened with rule {sw.get('rule')}, keeping {r03['targeted_kept']} at 0.3")
            cell = row[0].strip("|").split("|")[4].strip().replace("**", "")
            want = cell_text(r03)
            check(cell.startswith(want), f"{kind}: p = 0.3 cell {cell!r} against the sweep's {want}")
    # the best-rule table: each cell of the first method is the best of its five rows at that p,
    # tagged with the rules that reach it (one seed here, so the cells are comparable as printed)
    best = md.split("## The best compression rule")[1].split("\n## ")[0] if "## The best compression rule" in md else ""
    rows = [ln.strip("|").split("|") for ln in comp.splitlines() if ln.startswith(f"| {methods[0]} |")]
    brow = [ln.strip("|").split("|") for ln in best.splitlines() if ln.startswith(f"| {methods[0]} |")]
    if check(len(brow) == 1 and len(rows) == 5, f"best-rule table: one row for {methods[0]}"):
        for j in range(5):
            vals = [float(r[2 + j].strip().replace("**", "").split()[0]) for r in rows]
            got = brow[0][2 + j].strip().split()
            pick = min(vals) if lower_is_better else max(vals)
            short = {"plain SVD, uniform p": "s", "whitened, uniform p": "w", "plain SVD, budgeted ranks": "b",
                     "whitened, budgeted ranks": "w+b", "whitened, ranks by measured loss": "L"}
            tags = ", ".join(short[r[1].strip()] for r, v in zip(rows, vals) if v == pick)
            check(float(got[0]) == pick and brow[0][2 + j].strip().endswith(tags),
                  f"best rule at column {j}: {brow[0][2 + j].strip()!r}, want {pick} {tags}")


def budget_knapsack(shapes, gains, budget):
    """The rule of q3r_budget_ranks, solved independently by its own dynamic programme: matrices of
    `shapes` (rows, cols), gains[j][r - 1] the value of matrix j at rank r (r up to len(gains[j])),
    at most floor(budget * sum m n) parameters at r (m + n) each, in units of the gcd of the costs;
    the largest summed gain, ties to the smaller rank (ranks tried in ascending order, kept only
    when strictly better). Returns (ranks, the best sum, allowed)."""
    import numpy as np
    allowed = math.floor(budget * sum(m * n for m, n in shapes) * (1 + 1e-12))
    g = 0
    for m, n in shapes:
        g = math.gcd(g, m + n)
    units = allowed // g
    best = np.zeros(units + 1)
    choices = []
    for (m, n), gain in zip(shapes, gains):
        c = (m + n) // g
        new = np.full(units + 1, -np.inf)
        pick = np.zeros(units + 1, dtype=int)
        for r in range(1, len(gain) + 1):
            if r * c > units:
                break
            cand = np.full(units + 1, -np.inf)
            cand[r * c:] = best[:units + 1 - r * c] + gain[r - 1]
            better = cand > new
            new[better] = cand[better]
            pick[better] = r
        best = new
        choices.append(pick)
    b, ranks = units, [0] * len(shapes)
    for j in range(len(shapes) - 1, -1, -1):
        ranks[j] = int(choices[j][b])
        b -= ranks[j] * (sum(shapes[j]) // g)
    return ranks, float(best[units]), allowed
