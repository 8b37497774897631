"""scripts/experiment_text.py in its hidden --smoke mode: a tiny GPT (width 32, depth 2, context
32, 20 steps of 16 windows) on a small text file written here, seconds per run.

q3r-ctest-label: slow

Checks, against q3r and scripts/text-reference.py run separately:
- the script prints its plan and every command: one `q3r train` per method (LoRITa and
  factorized only when `q3r train --help` offers them) with the same data, steps, epochs and
  seed, two sweeps per model, the reference script once, a truncation and two samples per model;
- results.json holds every run and sweep; its summary equals the sweep rows (one seed: the mean
  is the value, the spread 0); results.md has a row per method in both tables whose cells are
  those numbers, and a claim row per method with the untruncated bpb and the increase at p = 0.3;
- every model's untruncated bits per byte in the table is `q3r eval` of that model, and the
  p = 0.3 cell of one method is `q3r truncate --targets all --rank 0.3` + `q3r eval`; the sweeps
  scored as many bytes as the reference lines were computed on;
- the reference lines (results.json, results.md) are the numbers of scripts/text-reference.py
  on the same file, split and validation bytes, run here;
- the samples: one per model dense and truncated, starting with the prompt; a dense one equals
  `q3r sample` run here with the same flags; results.md quotes them; the PNGs are PNGs (with
  gnuplot), no temporary files are left;
- a second invocation runs nothing and writes the same results.md; --report of seeds 1,2 with
  one sweep removed names what is missing and runs nothing; other --epochs than those of the
  runs in --out are refused; --report without an experiment, and a missing --data, fail;
- --dry-run prints the plan and the estimate and creates nothing."""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.environ.get("Q3R_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Q3R, Checks, check_compression_table, experiment_rows  # noqa: E402
SCRIPT = os.path.join(ROOT, "scripts", "experiment_text.py")
REFERENCE = os.path.join(ROOT, "scripts", "text-reference.py")
PROMPT = "the lord"
check = Checks()


def script(args):
    return subprocess.run([sys.executable, SCRIPT, "--q3r", Q3R, "--threads", "1", "--smoke", "--data", text,
                           "--prompt", PROMPT] + args, capture_output=True, text=True)


def commands(stdout):
    return [ln for ln in stdout.splitlines() if ln.startswith("$ ")]


tmp = tempfile.mkdtemp(prefix="q3r-experiment-text-test-")
out = os.path.join(tmp, "out")
text = os.path.join(tmp, "words.txt")
rng = random.Random(5)
words = "the lord said unto moses and god saw the land of egypt in the beginning heaven earth".split()
with open(text, "w") as f:
    n = 0
    while n < 40000:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + ".\n"
        f.write(line)
        n += len(line)

p = script(["--out", out, "--dry-run"])
check(p.returncode == 0 and "estimate" in p.stdout and not os.path.exists(out), f"dry run: {p.stdout} {p.stderr}")

p = script(["--out", out])
check(p.returncode == 0, f"smoke run failed: {p.stdout[-3000:]} {p.stderr[-3000:]}")
help_text = subprocess.run([Q3R, "train", "--help"], capture_output=True, text=True).stdout
methods = ["adamw", "nuclear", "q3r-r0.4-pull9", "q3r-r0.4-pull27", "q3r-r0.2-pull9", "q3r-r0.2-pull27",
           "q3r-b0.2-pull27", "q3r-bl0.2-pull27"]
if "lorita" in help_text:
    methods.append("lorita3")
if "factorized" in help_text:
    methods.append("factorized-r0.4")
cmds = commands(p.stdout)
train_cmds = [c for c in cmds if " train " in c]
sweep_cmds = [c for c in cmds if " sweep " in c]
check(len(train_cmds) == len(methods) and len(sweep_cmds) == 6 * len(methods),
      f"printed {len(train_cmds)} train and {len(sweep_cmds)} sweep commands (two target sets, four compression "
      f"rules) for {len(methods)} methods")
check(all(f"--data {text}" in c and "--seed 1" in c and "--epochs 1" in c and "--epoch-steps 20" in c
          and "--model gpt-tiny" in c and "--targets all" in c for c in train_cmds),
      "train commands share the data, seed, epochs and steps")
check(any("--reg nuclear --lambda" in c for c in train_cmds), "nuclear has an explicit lambda")
check(len([c for c in cmds if "text-reference.py" in c]) == 1, "the reference script runs once")
check(len([c for c in cmds if " truncate " in c]) == len(methods) and
      len([c for c in cmds if " sample " in c]) == 2 * len(methods), "a truncation and two samples per model")

with open(os.path.join(out, "results.json")) as f:
    res = json.load(f)
for m, targets, rows, summ in experiment_rows(check, out, res, methods):
    for r, s in zip(rows, summ):
        check(abs(s["bpb"] - r["bpb"]) < 1e-12 and s["bpb_spread"] == 0 and
              abs(s["increase"] - r["bpb_increase"]) < 1e-12 and
              abs(s["targeted_kept"] - r["targeted_kept"]) < 1e-12, f"{m} {targets} p={r['p']}: {s} vs {r}")

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
        check(len(cells) == 10 and cells[0] == f"{s[0]['bpb']:.3f}" and
              cells[7] == f"{s[7]['bpb']:.3f} ({s[7]['increase'] + 0.0:+.3f})" and abs(s[7]["p"] - 0.3) < 1e-9,
              f"results.md {targets} {m}: {cells} vs {s[0]['bpb']}, {s[7]}")
claim = md.split("## The claim")[1].split("\n## ")[0] if "## The claim" in md else ""
for m in methods:
    s = res["summary"]["all"][m]
    line = [ln for ln in claim.splitlines() if ln.startswith(f"| {m} | 1 |")]
    check(len(line) == 1 and f"| {s[0]['bpb']:.3f} | {s[7]['increase']:+.3f} |" in line[0],
          f"claim row for {m}: {line}")

# the table's bits per byte are q3r's own, from the model files
for m in methods:
    model = os.path.join(out, "runs", f"{m}-s1", "model.safetensors")
    ev = subprocess.run([Q3R, "eval", model, "--threads", "1", "--json"], capture_output=True, text=True)
    check(ev.returncode == 0, f"eval {m}: {ev.stderr}")
    if ev.returncode == 0:
        e = json.loads(ev.stdout)
        check(abs(e["bpb"] - res["summary"]["qkv"][m][0]["bpb"]) < 2e-6 and
              abs(e["bpb"] - res["summary"]["all"][m][0]["bpb"]) < 2e-6, f"{m}: eval {e['bpb']} vs the table")
        check(e["n"] == res["runs"][f"{m}-s1"]["sweeps"]["all"]["untruncated"]["n"], f"{m}: scored bytes")
m = "q3r-r0.4-pull9"
cut = os.path.join(tmp, "cut.safetensors")
p2 = subprocess.run([Q3R, "truncate", os.path.join(out, "runs", f"{m}-s1", "model.safetensors"), cut,
                     "--targets", "all", "--rank", "0.3", "--threads", "1"], capture_output=True, text=True)
check(p2.returncode == 0, "truncate: " + p2.stderr)
ev = subprocess.run([Q3R, "eval", cut, "--threads", "1", "--json"], capture_output=True, text=True)
check(ev.returncode == 0, "eval of the truncated model: " + ev.stderr)
if ev.returncode == 0:
    check(abs(json.loads(ev.stdout)["bpb"] - res["summary"]["all"][m][7]["bpb"]) < 2e-6,
          f"p = 0.3: eval {ev.stdout} vs table {res['summary']['all'][m][7]['bpb']}")

# the reference lines are text-reference.py's numbers on the bytes the models were scored on
scored = res["runs"]["adamw-s1"]["sweeps"]["all"]["untruncated"]["n"]
ref = subprocess.run([sys.executable, REFERENCE, text, "--val-fraction", "0.1", "--val-bytes", str(scored)],
                     capture_output=True, text=True)
check(ref.returncode == 0, "text-reference.py: " + ref.stderr)
if ref.returncode == 0:
    want = json.loads(ref.stdout)
    got = res["plan"]["reference"]
    check(want["scored_val_bytes"] == scored and got["scored_val_bytes"] == scored, f"reference on {scored} bytes")
    check(list(got["compressors"]) == ["gzip -9", "xz -9", "bzip2 -9"] and
          all(got["compressors"][c]["bpb"] == want["compressors"][c]["bpb"] for c in want["compressors"]),
          f"reference: {got['compressors']} vs {want['compressors']}")
    section = md.split("## Reference")[1].split("\n## ")[0] if "## Reference" in md else ""
    for c, v in want["compressors"].items():
        check(f"| {c} | {v['bpb']:.3f} |" in section, f"results.md reference row {c}")

# samples: dense and truncated for every model, the prompt continued, quoted in results.md, and
# the same bytes as q3r sample with the same flags
for m in methods:
    for kind in ("dense", "all-p0.3"):
        f = os.path.join(out, "samples", f"{m}-s1-{kind}.txt")
        body = open(f, encoding="utf-8", errors="replace").read() if os.path.exists(f) else ""
        check(body.startswith(PROMPT) and len(body) > len(PROMPT) + 50, f"sample {f}: {body[:80]!r}")
        check(res["runs"][f"{m}-s1"].get("samples", {}).get(kind) == body, f"results.json sample {m} {kind}")
        check(body.rstrip("\n").replace("```", "'''") in md, f"results.md quotes the sample {m} {kind}")
fresh = subprocess.run([Q3R, "sample", os.path.join(out, "runs", "adamw-s1", "model.safetensors"),
                        "--prompt", PROMPT, "--tokens", "300", "--temperature", "0.8", "--top-k", "20",
                        "--seed", "1", "--threads", "1"], capture_output=True)
check(fresh.returncode == 0 and fresh.stdout.decode("utf-8", errors="replace") ==
      open(os.path.join(out, "samples", "adamw-s1-dense.txt"), encoding="utf-8").read(), "adamw sample vs q3r sample")

if shutil.which("gnuplot"):
    for targets in ("qkv", "all", "all-loss-rule", "all-best-rule"):  # every method under the loss rule, its best rule
        png = os.path.join(out, f"bpb-{targets}.png")
        check(os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", f"{png} is a PNG")
check(not [f for f in os.listdir(out) if f.startswith(".") or f.endswith(".tmp")], f"litter: {os.listdir(out)}")

# the compression table: every method under the five rules, cells from the sweeps' JSON; a budget
# row keeps the budget
check_compression_table(check, md, out, methods, lambda r: f"{r['bpb']:.3f}", True)

# resumable: nothing runs again, the same table comes out
p3 = script(["--out", out])
check(p3.returncode == 0 and not commands(p3.stdout), f"second run ran commands: {p3.stdout[-2000:]}")
check(open(os.path.join(out, "results.md")).read() == md, "second run changed results.md")

# --report: seeds 1 and 2 asked, seed 1 trained, one sweep of the last method removed
gone = methods[-1]
os.remove(os.path.join(out, "sweeps", f"{gone}-s1-all.json"))
p4 = script(["--out", out, "--seeds", "1,2", "--report"])
check(p4.returncode == 0 and not commands(p4.stdout), f"--report ran commands or failed: {p4.stdout[-2000:]} {p4.stderr}")
rep = open(os.path.join(out, "results.md")).read()
check("Unfinished experiment" in rep and f"not finished: {gone}" in rep, f"--report names what is missing: {rep[:800]}")
check(all(f"{m} has seed 1 only" in rep for m in methods[:-1]), "--report: every method has seed 1 only")
check(f"| {gone} |" not in rep, f"--report: a row for the unfinished {gone}")
old_rows = [ln.replace("**", "") for ln in md.split("## Reference")[0].splitlines() if ln.startswith("| ") and not ln.startswith(f"| {gone} |")]
new_rows = [ln.replace("**", "") for ln in rep.split("## Reference")[0].splitlines() if ln.startswith("| ")]
check(old_rows == new_rows, "--report: the finished methods' rows are those of the full table")
check(not os.path.exists(os.path.join(out, "sweeps", f"{gone}-s1-all.json")), "--report redid a sweep")
p6 = script(["--out", out, "--epochs", "2"])
check(p6.returncode != 0 and "--epochs 1" in p6.stderr and not commands(p6.stdout),
      f"other epochs into an existing experiment: rc {p6.returncode}, {p6.stderr}")
p5 = script(["--out", os.path.join(tmp, "nothing"), "--report"])
check(p5.returncode != 0 and "nothing" in p5.stderr, f"--report without an experiment: {p5.stderr}")
p7 = subprocess.run([sys.executable, SCRIPT, "--q3r", Q3R, "--smoke", "--data", os.path.join(tmp, "none.txt"),
                     "--out", os.path.join(tmp, "o7")], capture_output=True, text=True)
check(p7.returncode != 0 and "none.txt" in p7.stderr and not os.path.exists(os.path.join(tmp, "o7")),
      f"missing --data: {p7.stderr}")

shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
