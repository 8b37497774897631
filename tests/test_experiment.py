"""scripts/experiment.py in its hidden --smoke mode (tiny ViT, 640 images, seconds per run).

q3r-ctest-label: slow

Checks, against q3r itself run separately:
- the script prints its plan and every q3r command, trains one run per method (LoRITa and
  factorized only when `q3r train --help` offers them) and sweeps each on qkv and all;
- results.json holds every run and sweep; its summary equals the sweep rows (one seed: the
  mean is the value, the spread 0); results.md has a row per method in both tables whose cells
  are those numbers; the two PNGs are valid (when gnuplot is present), no temporary files;
- the accuracy reported for one method at p = 0.4 on qkv equals `q3r truncate` + `q3r eval` of
  that run's model;
- a second invocation trains and sweeps nothing (resumable) and writes the same table;
- --report writes the table of the finished runs only, naming the missing ones, running nothing;
- other --epochs than those of the runs already in --out are refused, naming the right value;
- --dry-run prints the plan and creates nothing.
Exit 77 (skip) without the dataset."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.environ.get("Q3R_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Q3R, Checks, check_compression_table, experiment_rows, skip_without_fashion_mnist  # noqa: E402
SCRIPT = os.path.join(ROOT, "scripts", "experiment.py")
skip_without_fashion_mnist("test_experiment")
check = Checks()


def script(args):
    return subprocess.run([sys.executable, SCRIPT, "--q3r", Q3R, "--threads", "1"] + args,
                          capture_output=True, text=True)


tmp = tempfile.mkdtemp(prefix="q3r-experiment-test-")
out = os.path.join(tmp, "out")

p = script(["--smoke", "--out", out, "--dry-run"])
check(p.returncode == 0 and "estimate" in p.stdout and not os.path.exists(out), f"dry run: {p.stdout} {p.stderr}")

p = script(["--smoke", "--out", out])
check(p.returncode == 0, f"smoke run failed: {p.stdout[-3000:]} {p.stderr[-3000:]}")
help_text = subprocess.run([Q3R, "train", "--help"], capture_output=True, text=True).stdout
methods = ["adamw", "nuclear", "q3r-r0.4-pull9", "q3r-r0.4-pull27", "q3r-r0.2-pull9", "q3r-r0.2-pull27",
           "q3r-b0.2-pull27", "q3r-bl0.2-pull27"]
if "lorita" in help_text:
    methods.append("lorita3")
if "factorized" in help_text:
    methods.append("factorized-r0.4")
train_cmds = [ln for ln in p.stdout.splitlines() if ln.startswith("$ ") and " train " in ln]
sweep_cmds = [ln for ln in p.stdout.splitlines() if ln.startswith("$ ") and " sweep " in ln]
check(len(train_cmds) == len(methods) and len(sweep_cmds) == 6 * len(methods),
      f"printed {len(train_cmds)} train and {len(sweep_cmds)} sweep commands (two target sets, four compression "
      f"rules) for {len(methods)} methods")
check(all("--seed 1" in c and "--epochs 1" in c for c in train_cmds), "train commands share seed and epochs")
check(any("--reg nuclear --lambda" in c for c in train_cmds), "nuclear has an explicit lambda")

with open(os.path.join(out, "results.json")) as f:
    res = json.load(f)
for m, targets, rows, summ in experiment_rows(check, out, res, methods):
    for r, s in zip(rows, summ):
        check(abs(s["acc"] - 100 * r["acc"]) < 1e-9 and s["acc_spread"] == 0 and
              abs(s["drop"] - r["drop_points"]) < 1e-9 and abs(s["targeted_kept"] - r["targeted_kept"]) < 1e-12,
              f"{m} {targets} p={r['p']}: summary {s} vs row {r}")

md = open(os.path.join(out, "results.md")).read()
for targets in ("qkv", "all"):
    section = md.split(f"`--targets {targets}`")[1].split("\n## ")[0]
    for m in methods:
        line = [ln for ln in section.splitlines() if ln.startswith(f"| {m} |")]
        check(len(line) == 1, f"results.md {targets}: row for {m}")
        if not line:
            continue
        cells = [c.strip() for c in line[0].strip("|").split("|")][1:]
        s = res["summary"][targets][m]
        check(len(cells) == 10 and cells[0] == f"{s[0]['acc']:.2f}" and
              cells[6].startswith(f"{s[6]['acc']:.2f} (") and abs(s[6]["p"] - 0.4) < 1e-9,
              f"results.md {targets} {m}: {cells} vs {s[0]['acc']}, {s[6]['acc']}")

if shutil.which("gnuplot"):
    for targets in ("qkv", "all", "all-loss-rule", "all-best-rule"):  # every method under the loss rule, its best rule
        png = os.path.join(out, f"accuracy-{targets}.png")
        ok = os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        check(ok, f"{png} is a PNG")
check(not [f for f in os.listdir(out) if f.startswith(".") or f.endswith(".tmp")], f"litter: {os.listdir(out)}")

# one model, truncated and scored by q3r itself
m = "q3r-r0.4-pull9"
model = os.path.join(out, "runs", f"{m}-s1", "model.safetensors")
cut = os.path.join(tmp, "cut.safetensors")
p2 = subprocess.run([Q3R, "truncate", model, cut, "--targets", "qkv", "--rank", "0.4", "--threads", "1"],
                    capture_output=True, text=True)
check(p2.returncode == 0, "truncate: " + p2.stderr)
ev = subprocess.run([Q3R, "eval", cut, "--limit", "200", "--threads", "1", "--json"], capture_output=True, text=True)
check(ev.returncode == 0, "eval: " + ev.stderr)
if ev.returncode == 0:
    e = json.loads(ev.stdout)
    s = res["summary"]["qkv"][m][6]
    check(e["n"] == 200 and round(e["acc"] * 200) == round(s["acc"] * 2), f"p = 0.4: eval {e['acc']} vs table {s['acc']}")
ev0 = subprocess.run([Q3R, "eval", model, "--limit", "200", "--threads", "1", "--json"], capture_output=True, text=True)
if ev0.returncode == 0:
    check(round(json.loads(ev0.stdout)["acc"] * 200) == round(res["summary"]["qkv"][m][0]["acc"] * 2),
          "untruncated accuracy vs q3r eval")

# the compression table: every method under the five rules, cells from the sweeps' JSON; a budget
# row keeps the budget
check_compression_table(check, md, out, methods, lambda r: f"{100 * r['acc']:.2f}", False)

# resumable: nothing is trained or swept again, the same table comes out
p3 = script(["--smoke", "--out", out])
check(p3.returncode == 0 and not [ln for ln in p3.stdout.splitlines() if ln.startswith("$ ")],
      f"second run ran commands: {p3.stdout[-2000:]}")
check(open(os.path.join(out, "results.md")).read() == md, "second run changed results.md")

# --report: the table of what has finished, running nothing. Asked for seeds 1 and 2 with only
# seed 1 trained, and with one sweep of the last method removed: every method says seed 1 only,
# the last one is named as not finished and has no row, the other rows are unchanged.
gone = methods[-1]
os.remove(os.path.join(out, "sweeps", f"{gone}-s1-all.json"))
p4 = script(["--smoke", "--out", out, "--seeds", "1,2", "--report"])
check(p4.returncode == 0 and not [ln for ln in p4.stdout.splitlines() if ln.startswith("$ ")],
      f"--report ran commands or failed: {p4.stdout[-2000:]} {p4.stderr[-2000:]}")
rep = open(os.path.join(out, "results.md")).read()
check("Unfinished experiment" in rep and f"not finished: {gone}" in rep, f"--report names what is missing: {rep[:800]}")
check(all(f"{m} has seed 1 only" in rep for m in methods[:-1]), "--report: every method has seed 1 only")
check(f"| {gone} |" not in rep, f"--report: a row for the unfinished {gone}")
old_rows = [ln.replace("**", "") for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith(f"| {gone} |")]
new_rows = [ln.replace("**", "") for ln in rep.splitlines() if ln.startswith("| ")]
check(old_rows == new_rows, "--report: the finished methods' rows are those of the full table")
check(not os.path.exists(os.path.join(out, "sweeps", f"{gone}-s1-all.json")), "--report redid a sweep")
# the runs in --out fix the epochs: other epochs are refused before anything runs
p6 = script(["--smoke", "--out", out, "--epochs", "2"])
check(p6.returncode != 0 and "--epochs 1" in p6.stderr and not [ln for ln in p6.stdout.splitlines() if ln.startswith("$ ")],
      f"other epochs into an existing experiment: rc {p6.returncode}, {p6.stderr}")
p5 = script(["--smoke", "--out", os.path.join(tmp, "nothing"), "--report"])
check(p5.returncode != 0 and "nothing" in p5.stderr, f"--report without an experiment: {p5.stderr}")

shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
