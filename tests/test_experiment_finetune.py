"""scripts/experiment_finetune.py in its hidden --smoke mode: tiny ViT and GPT (width 32, depth 2),
512 training images, 10-20 GPT steps on two small generated text files, r = 1, 2: seconds.

q3r-ctest-label: slow

Checks, against q3r run separately:
- every method (lora, q3r-update, lora-q3r, full-extract at r = 1, 2; full untruncated) has its
  row in results.json for both tasks, and a row in each table of results.md;
- each row's metric is `q3r eval BASE --adapter DIR` of the adapter it names, run here for every
  adapter (and `q3r eval` of the untruncated model for the upper bound); the summary and the
  table cell ("metric (params)") are those numbers;
- each adapter's parameters equal r_module (in + out) summed over its modules, from its
  adapter_config.json (r, rank_pattern) and the shapes of its lora_A / lora_B tensors;
- a second invocation runs no command and writes the same results.md;
- --dry-run prints the plan and the estimate and creates nothing."""
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.environ.get("Q3R_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Q3R, Checks, skip_without_fashion_mnist  # noqa: E402
skip_without_fashion_mnist("test_experiment_finetune")
SCRIPT = os.path.join(ROOT, "scripts", "experiment_finetune.py")
check = Checks()
tmp = tempfile.mkdtemp(prefix="q3r-experiment-finetune-test-")
out = os.path.join(tmp, "out")
files = {}
rng = random.Random(3)
for name, words in (("pre", "the lord said unto moses and god saw the land of egypt"),
                    ("ft", "a fool and his money are soon parted never trust a computer you cannot lift")):
    files[name] = os.path.join(tmp, name + ".txt")
    ws = words.split()
    with open(files[name], "w") as f:
        n = 0
        while n < 20000:
            line = " ".join(rng.choice(ws) for _ in range(rng.randint(5, 12))) + ".\n"
            f.write(line)
            n += len(line)


def script(args):
    return subprocess.run([sys.executable, SCRIPT, "--q3r", Q3R, "--threads", "1", "--smoke", "--pretrain-data",
                           files["pre"], "--finetune-data", files["ft"]] + args, capture_output=True, text=True)


def commands(stdout):
    return [ln for ln in stdout.splitlines() if ln.startswith("$ ")]


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def q3r_eval(args):
    p = subprocess.run([Q3R, "eval"] + args + ["--threads", "1", "--json"], capture_output=True, text=True)
    check(p.returncode == 0, f"q3r eval {args}: {p.stderr}")
    return json.loads(p.stdout) if p.returncode == 0 else {}


p = script(["--out", out, "--dry-run"])
check(p.returncode == 0 and "estimate" in p.stdout and not os.path.exists(out), f"dry run: {p.stdout} {p.stderr}")
p = script(["--out", out])
check(p.returncode == 0, f"smoke run failed: {p.stdout[-3000:]} {p.stderr[-3000:]}")
res = json.load(open(os.path.join(out, "results.json")))
md = open(os.path.join(out, "results.md")).read()
METHODS = ["lora", "q3r-update", "lora-q3r", "full-extract"]
for task, metric in (("images", "acc"), ("text", "bpb")):
    rows = [r for r in res["rows"] if r["task"] == task]
    for m in METHODS:
        got = sorted(r["r"] for r in rows if r["method"] == m)
        check(got == [1, 2], f"{task} {m}: rows at r {got}")
        check(any(ln.startswith(f"| {m} |") for ln in md.split(f"## {task}:")[1].split("\n## ")[0].splitlines()),
              f"results.md {task}: row for {m}")
    check(len([r for r in rows if r["method"] == "full"]) == 1, f"{task}: the untruncated row")
    base = os.path.join(out, task, "probe" if task == "images" else "pretrain", "model.safetensors")
    extra = ["--limit", "200"] if task == "images" else ["--data", files["ft"]]
    for r in rows:
        if r["adapter"] is None:
            continue
        cfg = json.load(open(os.path.join(r["adapter"], "adapter_config.json")))
        h = header(os.path.join(r["adapter"], "adapter_model.safetensors"))
        want = 0
        for name, t in h.items():
            if name.endswith(".lora_A.weight"):
                mod = name[len("base_model.model."):-len(".lora_A.weight")]
                pat = [v for k, v in (cfg.get("rank_pattern") or {}).items()  # PEFT's keys: regexes
                       if re.fullmatch(k, mod) or re.fullmatch(rf"(.*\.)?{k}", mod)]
                rank = pat[0] if pat else cfg["r"]
                b = h[name.replace("lora_A", "lora_B")]
                check(t["shape"][0] == rank and b["shape"][1] == rank, f"{r['adapter']} {mod}: rank {rank}")
                want += rank * (t["shape"][1] + b["shape"][0])
        check(want > 0 and r["params"] == want, f"{task} {r['method']} r={r['r']}: params {r['params']} vs {want}")
        modules = {n for n in h if n.endswith(".lora_A.weight")}
        check(cfg["r"] in (r["r"], 3 * r["r"]) and len(modules) > 0, f"{r['adapter']}: r {cfg['r']} for rank {r['r']}")
    for r in rows:  # every cut adapter's score recomputed here (tiny models: a fraction of a second each)
        if r["adapter"] is not None:
            e = q3r_eval([base, "--adapter", r["adapter"]] + extra)
            check(e.get(metric) == r["metric"], f"{task} {r['method']} r={r['r']}: eval {e.get(metric)} vs {r['metric']}")
            cells = [c for c in res["summary"][task][r["method"]] if c["r"] == r["r"]]
            check(len(cells) == 1 and cells[0]["metric"] == r["metric"] and cells[0]["params"] == r["params"]
                  and f"{r['metric']:.4f} ({r['params']})" in md, f"{task} {r['method']} r={r['r']}: summary and table")
    full = [x for x in rows if x["method"] == "full"][0]
    e = q3r_eval([os.path.join(out, task, "runs", "full-s1", "model.safetensors")] + extra)
    check(e.get(metric) == full["metric"], f"{task} full: eval {e.get(metric)} vs {full['metric']}")
if shutil.which("gnuplot"):
    for task in ("images", "text"):
        png = os.path.join(out, f"{task}-metric.png")
        check(os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n", f"{png} is a PNG")

p2 = script(["--out", out])
check(p2.returncode == 0 and not commands(p2.stdout), f"second run ran commands: {commands(p2.stdout)[:5]}")
check(open(os.path.join(out, "results.md")).read() == md, "second run changed results.md")
shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
