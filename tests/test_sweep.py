"""q3r sweep end to end, against q3r truncate + q3r eval run separately and closed forms.

A tiny ViT (width 32, depth 2, heads 2, MLP 64) is trained for one short epoch with `q3r train`
on a Fashion-MNIST subset, then swept; here:
- the accuracy at each p equals `q3r truncate --rank p` followed by `q3r eval` (same images,
  same batch), its error is 1.96 sqrt(a (1 - a) / n) and its drop is 100 (a_untruncated - a);
- the p = 1 row and the untruncated row equal `q3r eval` of the model itself;
- ranks are floor(p m n / (m + n)) per kind, the kept fraction of the targeted matrices is
  sum r (m + n) / sum m n and that of the model comes from the file's tensor counts (numpy);
- --targets all cuts proj, fc1 and fc2 too; an already factored model keeps its rank where p
  would not cut it and matches truncate + eval where it would;
- the JSON file is complete and the PNG valid, with no temporary files left; without gnuplot
  --plot fails with the apt-get hint before any work;
- bad input (p out of (0, 1], not a number, a p that gives rank 0, unknown targets, a missing
  file) exits non-zero with a message naming it, and writes no JSON.
Exit 77 (skip) without numpy or the dataset."""
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Checks, require, run_q3r, skip_without_fashion_mnist  # noqa: E402
require("test_sweep", "numpy")
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402

skip_without_fashion_mnist("test_sweep")
check = Checks()


def run(args, env=None):
    return run_q3r(args, env=env)


D, DEPTH, M, LIMIT = 32, 2, 64, 300
KINDS = ["q", "k", "v", "proj", "fc1", "fc2"]
SHAPE = {"q": (D, D), "k": (D, D), "v": (D, D), "proj": (D, D), "fc1": (M, D), "fc2": (D, M)}
GROUP = {"qkv": ["q", "k", "v"], "all": KINDS}

tmp = tempfile.mkdtemp(prefix="q3r-sweep-test-")
p = run(["train", "--width", str(D), "--depth", str(DEPTH), "--heads", "2", "--mlp", str(M),
         "--train-limit", "640", "--test-limit", "200", "--epochs", "1", "--batch", "32",
         "--threads", "1", "--quiet", "--out", os.path.join(tmp, "run")])
check(p.returncode == 0, "q3r train: " + p.stderr)
model = os.path.join(tmp, "run", "model.safetensors")
tensors, _ = safetensors_np.read(model)
total_dense = sum(int(np.prod(t.shape)) for t in tensors.values())


def evaluate(path):
    p = run(["eval", path, "--limit", str(LIMIT), "--threads", "1", "--json"])
    check(p.returncode == 0, f"q3r eval {path}: {p.stderr}")
    return json.loads(p.stdout)


def sweep(path, targets, ps, name):
    out = os.path.join(tmp, name + ".json")
    p = run(["sweep", path, "--targets", targets, "--ps", ps, "--limit", str(LIMIT), "--threads", "1",
             "--json", out])
    check(p.returncode == 0, f"q3r sweep {name}: {p.stderr}")
    with open(out) as f:
        return json.load(f), p.stdout


def same_acc(a, b, n):
    """accuracies printed with different precision: compare as counts of correct images"""
    return round(a * n) == round(b * n)


dense = evaluate(model)
n = dense["n"]
check(n == LIMIT, f"eval n {n}")

for targets, ps_text in (("qkv", "1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1"), ("all", "0.9,0.5,0.25,0.1")):
    res, table = sweep(model, targets, ps_text, "sweep-" + targets)
    ps = [float(x) for x in ps_text.split(",")]
    check(res["targets"] == targets and res["dataset"] == "fashion-mnist" and res["split"] == "test",
          f"{targets}: header {res}")
    base = res["untruncated"]
    check(same_acc(base["acc"], dense["acc"], n) and base["n"] == n, f"{targets}: untruncated {base} vs eval {dense}")
    check(abs(base["loss"] - dense["loss"]) < 1e-5, f"{targets}: untruncated loss {base['loss']} vs {dense['loss']}")
    check(base["targeted_kept"] == 1 and base["total_kept"] == 1 and base["total_dense"] == total_dense,
          f"{targets}: untruncated accounting {base}")
    check(len(res["rows"]) == len(ps), f"{targets}: {len(res['rows'])} rows")
    kinds = GROUP[targets]
    for row, pv in zip(res["rows"], ps):
        check(abs(row["p"] - pv) < 1e-12, f"{targets}: p {row['p']} vs {pv}")
        a = row["acc"]
        check(abs(row["acc_err95"] - 1.96 * math.sqrt(a * (1 - a) / n)) < 1e-8, f"{targets} p={pv}: err95")
        check(abs(row["drop_points"] - 100 * (base["acc"] - a)) < 1e-6, f"{targets} p={pv}: drop")
        check(sorted(row["ranks"]) == sorted(kinds), f"{targets} p={pv}: kinds {row['ranks']}")
        if pv == 1.0:
            check(not row["truncated"] and same_acc(a, dense["acc"], n), f"{targets}: p = 1 row {row} vs eval {dense}")
            check(all(row["ranks"][k]["min"] == 0 for k in kinds), f"{targets}: p = 1 ranks {row['ranks']}")
            continue
        # closed forms
        ranks = {k: math.floor(pv * SHAPE[k][0] * SHAPE[k][1] / (SHAPE[k][0] + SHAPE[k][1])) for k in kinds}
        for k in kinds:
            got = row["ranks"][k]
            check(got["min"] == ranks[k] and got["max"] == ranks[k] and got["count"] == DEPTH,
                  f"{targets} p={pv} {k}: ranks {got} vs {ranks[k]}")
        tdense = DEPTH * sum(SHAPE[k][0] * SHAPE[k][1] for k in kinds)
        tkept = DEPTH * sum(ranks[k] * (SHAPE[k][0] + SHAPE[k][1]) for k in kinds)
        check(row["targeted_dense"] == tdense and row["targeted_params"] == tkept, f"{targets} p={pv}: counts {row}")
        check(abs(row["targeted_kept"] - tkept / tdense) < 1e-8, f"{targets} p={pv}: targeted kept {row['targeted_kept']} vs {tkept / tdense}")
        total_after = total_dense - tdense + tkept
        check(row["total_params"] == total_after and row["total_dense"] == total_dense,
              f"{targets} p={pv}: total {row['total_params']} vs {total_after}")
        check(abs(row["total_kept"] - total_after / total_dense) < 1e-8, f"{targets} p={pv}: total kept")
        # truncate + eval run separately
        cut = os.path.join(tmp, f"cut-{targets}-{pv}.safetensors")
        p = run(["truncate", model, cut, "--targets", targets, "--rank", repr(pv), "--threads", "1"])
        check(p.returncode == 0, f"q3r truncate {targets} {pv}: {p.stderr}")
        # the file's tensors hold the parameters the row counts
        ct, _ = safetensors_np.read(cut)
        check(sum(int(np.prod(t.shape)) for t in ct.values()) == row["total_params"], f"{targets} p={pv}: file count")
        ev = evaluate(cut)
        check(same_acc(a, ev["acc"], n) and abs(row["loss"] - ev["loss"]) < 1e-5,
              f"{targets} p={pv}: sweep {a} {row['loss']} vs truncate+eval {ev['acc']} {ev['loss']}")
    # the table shows one line per p plus the untruncated model
    lines = [ln for ln in table.splitlines() if ln.strip()]
    check(sum(1 for ln in lines if ln.split()[0] == "model") == 1 and len(lines) >= len(ps) + 3,
          f"{targets}: table\n{table}")

# an already factored model (cut at p = 0.4): p >= 0.4 leaves it as it is, p = 0.2 cuts it further
fact = os.path.join(tmp, "fact.safetensors")
p = run(["truncate", model, fact, "--targets", "qkv", "--rank", "0.4", "--threads", "1"])
check(p.returncode == 0, "truncate to 0.4: " + p.stderr)
fev = evaluate(fact)
res, _ = sweep(fact, "qkv", "0.9,0.4,0.2", "sweep-fact")
r6 = math.floor(0.4 * D * D / (2 * D))
check(res["untruncated"]["ranks"]["q"]["min"] == r6 and same_acc(res["untruncated"]["acc"], fev["acc"], n),
      f"factored: untruncated {res['untruncated']}")
for row in res["rows"][:2]:
    check(not row["truncated"] and row["ranks"]["q"]["max"] == r6 and same_acc(row["acc"], fev["acc"], n)
          and abs(row["targeted_kept"] - r6 * 2 * D / (D * D)) < 1e-8, f"factored p={row['p']}: {row}")
cut = os.path.join(tmp, "fact-0.2.safetensors")
check(run(["truncate", fact, cut, "--targets", "qkv", "--rank", "0.2", "--threads", "1"]).returncode == 0, "truncate fact")
row = res["rows"][2]
check(row["truncated"] and row["ranks"]["q"]["min"] == math.floor(0.2 * D / 2) and same_acc(row["acc"], evaluate(cut)["acc"], n),
      f"factored p=0.2: {row}")

# plot
if shutil.which("gnuplot"):
    pdir = os.path.join(tmp, "plot")
    os.mkdir(pdir)
    png = os.path.join(pdir, "acc.png")
    p = run(["sweep", model, "--ps", "0.8,0.4", "--limit", "100", "--threads", "1", "--plot", png])
    check(p.returncode == 0, "plot: " + p.stderr)
    with open(png, "rb") as f:
        head = f.read(24)
    check(head[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(head[16:20], "big") == 1000, "plot: PNG header")
    check(os.listdir(pdir) == ["acc.png"], f"plot: left behind {os.listdir(pdir)}")
env = dict(os.environ, PATH=os.path.join(tmp, "empty-path"))
png = os.path.join(tmp, "nogp.png")
p = run(["sweep", model, "--plot", png], env=env)
check(p.returncode != 0 and "apt-get install gnuplot" in p.stderr and not os.path.exists(png),
      f"no gnuplot: {p.returncode} {p.stderr}")

# bad input
bad_json = os.path.join(tmp, "bad.json")
for args, words, what in (
        (["--ps", "0"], ["ps", "0"], "p = 0"),
        (["--ps", "0.5,1.5"], ["1.5", "(0, 1]"], "p > 1"),
        (["--ps", "-0.2"], ["-0.2"], "negative p"),
        (["--ps", "0.5,abc"], ["abc", "not a number"], "p not a number"),
        (["--ps", "0.5,"], ["ps"], "trailing comma"),
        (["--ps", "0.01"], ["0.01", "blocks.0.attn.q"], "p giving rank 0"),
        (["--targets", "qkvv"], ["qkvv", "unknown target"], "unknown target"),
        (["--targets", ""], ["targets"], "empty targets")):
    p = run(["sweep", model, "--limit", "50", "--json", bad_json] + args)
    check(p.returncode != 0 and all(w in p.stderr for w in words) and not os.path.exists(bad_json),
          f"{what}: rc {p.returncode}, stderr {p.stderr!r}")
missing = os.path.join(tmp, "nope.safetensors")
p = run(["sweep", missing, "--json", bad_json])
check(p.returncode != 0 and "nope.safetensors" in p.stderr and not os.path.exists(bad_json), f"missing file: {p.stderr}")
p = run(["sweep"])
check(p.returncode != 0 and "model file" in p.stderr, f"no file: {p.stderr}")

shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
