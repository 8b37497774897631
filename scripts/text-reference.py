#!/usr/bin/env python3
"""Reference lines for the language models' bits per byte: the held-out cost of general-purpose
compressors on the split q3r trains and validates on.

    scripts/text-reference.py [FILE] [--val-fraction F] [--val-bytes N]

The split is q3r's: the last floor(n F) bytes validate, the rest train (FILE defaults to
data/kjv.txt, F to 0.1). For each of gzip -9, xz -9 and bzip2 -9 (Debian's programs, run on the
bytes; nothing is downloaded) the cost of the validation bytes given the training bytes is
(compressed size of train + validation - compressed size of train) x 8 / validation bytes, in
bits per validation byte: what the compressor pays for the held-out text once it has seen the
training text (within the reach of its window). --val-bytes N scores only the first N validation
bytes (train + those N, minus train, over N): the bytes a model scored on its first validation
windows only is compared on (N = windows x context). Prints one JSON object."""
import argparse
import json
import math
import os
import subprocess
import sys


def compressed_size(cmd, data):
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, check=True)
    return len(p.stdout)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?", default=os.path.join(root, "data", "kjv.txt"))
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--val-bytes", type=int, default=0, help="score only the first N validation bytes (0: all)")
    a = ap.parse_args()
    if not 0 < a.val_fraction < 1:
        sys.exit(f"text-reference: --val-fraction {a.val_fraction} is not in (0, 1)")
    try:
        with open(a.file, "rb") as f:
            data = f.read()
    except OSError as e:
        sys.exit(f"text-reference: {a.file}: {e.strerror}")
    n = len(data)
    val_n = math.floor(n * a.val_fraction)
    if val_n < 1 or val_n >= n:
        sys.exit(f"text-reference: {a.file}: {n} bytes leave no validation split at fraction {a.val_fraction}")
    if a.val_bytes < 0:
        sys.exit(f"text-reference: --val-bytes {a.val_bytes} is negative")
    train = data[: n - val_n]
    scored = min(a.val_bytes, val_n) if a.val_bytes else val_n
    data = data[: n - val_n + scored]
    out = {"file": os.path.abspath(a.file), "bytes": n, "train_bytes": n - val_n, "val_bytes": val_n,
           "val_fraction": a.val_fraction, "scored_val_bytes": scored, "unit": "bits per validation byte",
           "compressors": {}}
    for name, cmd in (("gzip -9", ["gzip", "-9", "-c", "-n"]), ("xz -9", ["xz", "-9", "-c"]),
                      ("bzip2 -9", ["bzip2", "-9", "-c"])):
        whole, part = compressed_size(cmd, data), compressed_size(cmd, train)
        out["compressors"][name] = {"train_bytes_compressed": part, "all_bytes_compressed": whole,
                                    "bpb": 8.0 * (whole - part) / scored}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
