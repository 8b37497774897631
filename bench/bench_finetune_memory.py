#!/usr/bin/env python3
"""Peak memory of fine-tuning: full fine-tuning against LoRA on the same model and data, each as
one `q3r train` process whose peak resident memory (ru_maxrss, by wait4) is printed with the
ratio. Memory is measured here, by a benchmark, never by a test.

    bench/bench_finetune_memory.py [--q3r build/q3r] [--rank 4] [--batch 64] [--rounds 3]
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def maxrss_kib(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    err = p.stderr.read().decode()
    if status != 0:
        sys.exit(f"bench_finetune_memory: {' '.join(cmd)} failed:\n{err}")
    return ru.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--q3r", default=os.path.join(ROOT, "build", "q3r"))
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run([a.q3r, "train", "--out", base, "--epochs", "1", "--train-limit", "64", "--reg", "none",
                        "--quiet", "--threads", "1"], check=True, stdout=subprocess.DEVNULL)
        common = ["train", "--init", os.path.join(base, "model.safetensors"), "--train-limit", "256",
                  "--test-limit", "64", "--batch", str(a.batch), "--epochs", "1", "--threads", "1", "--quiet",
                  "--overwrite"]
        print(f"bench_finetune_memory: vit-fmnist, batch {a.batch}, 1 thread; peak resident memory of one "
              f"q3r train process (KiB)")
        print(f"{'round':<6} {'full fine-tuning':>17} {'LoRA r=' + str(a.rank) + ' (all)':>17} {'LoRA/full':>10}")
        for r in range(a.rounds):
            full = maxrss_kib([a.q3r, *common, "--out", os.path.join(tmp, "full"), "--reg", "none"])
            lora = maxrss_kib([a.q3r, *common, "--out", os.path.join(tmp, "lora"), "--reg", "lora", "--rank",
                               str(a.rank), "--targets", "all"])
            print(f"{r + 1:<6} {full:>17} {lora:>17} {lora / full:>10.3f}")


if __name__ == "__main__":
    main()
