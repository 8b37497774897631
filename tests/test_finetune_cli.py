"""Fine-tuning through the program: q3r train --init (start from a model file), --new-head, and
--reg lora (W = W_0 + (alpha/r) B A, the rest of the model frozen):
- LoRA: every tensor but the targets is bit-identical to the --init model's; each target's update
  W - W_0 has rank <= r (numpy's SVD of every Q, K, V block); --rslora and --lora-alpha change
  nothing but the scale (the update is again of rank <= r and differs);
- --new-head: the head is fresh and trained (neither the base's nor the same as without training),
  the other tensors frozen under LoRA; the adapter carries it (modules_to_save, with the class
  split), so eval BASE --adapter scores as the run's model; a fine-tune keeps the --init model's
  input normalisation;
- --reg probe (a linear probe): only the fresh head trains, every other tensor bit-identical;
- full fine-tuning from --init moves every matrix; --resume is bit-exact for a LoRA run;
- bad combinations: a clear message naming the flag, exit 2, nothing in --out.
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Checks, require, run_q3r, skip_without_fashion_mnist  # noqa: E402

require("test_finetune_cli", "numpy")
import numpy as np
import safetensors_np as st  # noqa: E402

skip_without_fashion_mnist("test_finetune_cli")
check = Checks()
SMALL = ["--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64"]
DATA = ["--train-limit", "512", "--test-limit", "200", "--batch", "64", "--threads", "1", "--quiet"]
TARGETS = ("attn.qkv.weight",)


def train(out, *args, ok=True):
    p = run_q3r(["train", "--out", out, *DATA, *args], expect_ok=ok)
    if ok:
        check(p.returncode == 0, f"train {' '.join(args)}")
    return p


def tensors(path):
    t, meta = st.read(path)
    return t, meta


def block_ranks(delta, D):
    """Numerical ranks of the Q, K, V row blocks of a (3D x D) update."""
    out = []
    for j in range(3):
        S = np.linalg.svd(delta[j * D:(j + 1) * D].astype(np.float64), compute_uv=False)
        out.append(int(np.sum(S > 1e-4 * max(S[0], 1e-30))))
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = os.path.join(tmp, "base")
        train(base_dir, *SMALL, "--epochs", "1", "--reg", "none")
        base = os.path.join(base_dir, "model.safetensors")
        w0, _ = tensors(base)

        # ---- LoRA on Q, K, V at rank 2 ------------------------------------------------------
        lora_dir = os.path.join(tmp, "lora")
        train(lora_dir, "--init", base, "--reg", "lora", "--rank", "2", "--targets", "qkv", "--epochs", "1",
              "--lr", "3e-3")
        w1, meta = tensors(os.path.join(lora_dir, "model.safetensors"))
        check(meta.get("q3r.mode") == "lora" and meta.get("train.init") == base, f"metadata {meta.get('q3r.mode')}")
        frozen = all(np.array_equal(w1[k], w0[k]) for k in w0 if not k.endswith(TARGETS))
        check(frozen, "lora: every non-target tensor is the --init model's, bit for bit")
        moved = ranks_ok = True
        for k in w0:
            if k.endswith(TARGETS):
                d = w1[k].astype(np.float64) - w0[k]
                r = block_ranks(d, w0[k].shape[1])
                moved &= np.abs(d).max() > 0
                ranks_ok &= max(r) <= 2
                check(max(r) <= 2, f"lora: {k} update ranks {r} <= 2")
        check(moved, "lora: the targets moved")

        # rsLoRA with another alpha: still rank <= 2, another update
        rs_dir = os.path.join(tmp, "rs")
        train(rs_dir, "--init", base, "--reg", "lora", "--rank", "2", "--targets", "qkv", "--epochs", "1",
              "--lr", "3e-3", "--lora-alpha", "8", "--rslora")
        w2, _ = tensors(os.path.join(rs_dir, "model.safetensors"))
        k = "blocks.0.attn.qkv.weight"
        check(max(block_ranks(w2[k].astype(np.float64) - w0[k], w0[k].shape[1])) <= 2 and not np.array_equal(w2[k], w1[k]),
              "rslora: a different rank-2 update")

        # resume bit-exact
        a_dir, b_dir = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        common = ["--init", base, "--reg", "lora", "--rank", "2", "--targets", "qkv,fc1", "--epochs", "1"]
        train(a_dir, *common)
        train(b_dir, *common, "--stop-after", "3")
        train(b_dir, *common, "--resume")
        ta, _ = tensors(os.path.join(a_dir, "model.safetensors"))
        tb, _ = tensors(os.path.join(b_dir, "model.safetensors"))
        check(all(ta[k].tobytes() == tb[k].tobytes() for k in ta), "lora: --resume is bit-exact")

        # ---- a fresh head, trained under LoRA --------------------------------------------------
        nh_dir = os.path.join(tmp, "newhead")
        train(nh_dir, "--init", base, "--new-head", "10", "--reg", "lora", "--rank", "2", "--targets", "qkv",
              "--epochs", "1")
        w3, meta3 = tensors(os.path.join(nh_dir, "model.safetensors"))
        check(not np.array_equal(w3["head.weight"], w0["head.weight"]), "new head: not the base's head")
        others = all(np.array_equal(w3[k], w0[k]) for k in w0 if not k.endswith(TARGETS) and not k.startswith("head."))
        check(others, "new head under LoRA: the rest frozen")
        nh0 = os.path.join(tmp, "newhead0")
        train(nh0, "--init", base, "--new-head", "10", "--reg", "lora", "--rank", "2", "--targets", "qkv",
              "--epochs", "1", "--lr", "1e-12", "--min-lr", "0")
        w4, _ = tensors(os.path.join(nh0, "model.safetensors"))
        check(np.abs(w3["head.weight"] - w4["head.weight"]).max() > 1e-4, "new head: trained (moves with lr)")

        # ---- full fine-tuning from --init --------------------------------------------------------
        ft_dir = os.path.join(tmp, "full")
        train(ft_dir, "--init", base, "--reg", "none", "--epochs", "1")
        w5, _ = tensors(os.path.join(ft_dir, "model.safetensors"))
        check(all(not np.array_equal(w5[k], w0[k]) for k in w0 if k.endswith(".weight") and w0[k].ndim == 2),
              "full fine-tuning moves every matrix")

        # ---- a held-out class split: pretrain on classes 0-4, fine-tune a fresh head on 5-9 ----------
        c04 = os.path.join(tmp, "c04")
        train(c04, *SMALL, "--epochs", "1", "--reg", "none", "--classes", "0-4")
        c59 = os.path.join(tmp, "c59")
        train(c59, "--init", os.path.join(c04, "model.safetensors"), "--new-head", "5", "--classes", "5-9",
              "--reg", "lora", "--rank", "2", "--targets", "qkv", "--epochs", "1")
        w6, meta6 = tensors(os.path.join(c59, "model.safetensors"))
        check(meta6.get("data.classes") == "5-9" and w6["head.weight"].shape[0] == 5,
              f"class split: data.classes {meta6.get('data.classes')}, head {w6['head.weight'].shape}")
        p = run_q3r(["eval", os.path.join(c59, "model.safetensors"), "--json", "--threads", "1"], expect_ok=True)
        check(p.returncode == 0 and '"n": 5000' in p.stdout, f"eval scores the 5000 test images of classes 5-9: {p.stdout}")
        _, meta04 = tensors(os.path.join(c04, "model.safetensors"))
        check(all(meta6.get(k) == meta04.get(k) for k in ("data.mean", "data.std")),
              f"a fine-tune keeps its --init model's normalisation: {meta6.get('data.mean')} vs {meta04.get('data.mean')}")
        with open(os.path.join(c59, "adapter", "adapter_config.json")) as f:
            acfg = json.load(f)
        at, ameta = st.read(os.path.join(c59, "adapter", "adapter_model.safetensors"))
        check(acfg.get("modules_to_save") == ["head"] and "base_model.model.head.weight" in at
              and np.array_equal(at["base_model.model.head.weight"], w6["head.weight"])
              and ameta.get("q3r.data.classes") == "5-9",
              f"the fresh head is in the adapter (modules_to_save {acfg.get('modules_to_save')}, classes {ameta.get('q3r.data.classes')})")
        pa = run_q3r(["eval", os.path.join(c04, "model.safetensors"), "--adapter", os.path.join(c59, "adapter"),
                      "--json", "--threads", "1"], expect_ok=True)
        try:
            ea, em = json.loads(pa.stdout), json.loads(p.stdout)
            check(ea["n"] == em["n"] and abs(ea["acc"] - em["acc"]) < 1e-12 and abs(ea["loss"] - em["loss"]) < 1e-5,
                  f"eval BASE --adapter (new head) scores as the run's model: {ea['acc']} / {em['acc']}, "
                  f"loss {ea['loss']} / {em['loss']}")
        except (ValueError, KeyError):
            check(False, f"eval --adapter output: {pa.stdout!r} {pa.stderr!r}")

        # ---- a linear probe: only the fresh head of classes 5-9 trains ---------------------------------
        wc, _ = tensors(os.path.join(c04, "model.safetensors"))
        pr = os.path.join(tmp, "probe")
        train(pr, "--init", os.path.join(c04, "model.safetensors"), "--new-head", "5", "--classes", "5-9",
              "--reg", "probe", "--epochs", "1", "--lr", "1e-2")
        w7, meta7 = tensors(os.path.join(pr, "model.safetensors"))
        check(all(np.array_equal(w7[k], wc[k]) for k in wc if not k.startswith("head.")),
              "probe: every tensor but the head is the --init model's, bit for bit")
        check(w7["head.weight"].shape[0] == 5 and meta7.get("q3r.method") in (None, "probe"),
              f"probe: a 5-class head, method {meta7.get('q3r.method')}")
        pr0 = os.path.join(tmp, "probe0")
        train(pr0, "--init", os.path.join(c04, "model.safetensors"), "--new-head", "5", "--classes", "5-9",
              "--reg", "probe", "--epochs", "1", "--lr", "1e-12", "--min-lr", "0")
        w8, _ = tensors(os.path.join(pr0, "model.safetensors"))
        check(np.abs(w7["head.weight"] - w8["head.weight"]).max() > 1e-3, "probe: the head is trained")
        for args, want, what in (
                (["--reg", "probe"], "--new-head", "a probe without --new-head"),
                (["--new-head", "5", "--classes", "5-9", "--reg", "lora", "--rank", "1", "--targets", "head"],
                 "takes no adapter", "LoRA on a fresh head")):
            o = os.path.join(tmp, "refused", "run")
            p = run_q3r(["train", "--out", o, *DATA, "--init", os.path.join(c04, "model.safetensors"), *args])
            check(p.returncode != 0 and want in p.stderr and not os.path.exists(os.path.join(tmp, "refused")),
                  f"{what}: exit {p.returncode}, no directory left: {p.stderr.strip()}")

        # ---- bad combinations --------------------------------------------------------------------
        def bad(args, want, what, code=2):  # 2: a flag; 1: a file
            o = os.path.join(tmp, "bad")
            p = run_q3r(["train", "--out", o, *DATA, *args])
            check(p.returncode == code and want in p.stderr and not os.path.exists(os.path.join(o, "model.safetensors")),
                  f"{what}: exit {p.returncode}: {p.stderr.strip()}")

        bad(["--new-head", "10"], "--init", "--new-head without --init")
        bad(["--init", base, "--model", "vit-bench"], "--model", "--init with --model")
        bad(["--init", base, "--width", "64"], "--width", "--init with --width")
        bad(["--reg", "decoupled", "--lora-alpha", "4"], "--lora-alpha", "--lora-alpha without LoRA")
        bad(["--init", os.path.join(tmp, "missing.safetensors")], "missing.safetensors", "a missing --init file", 1)
        p = run_q3r(["train", "--out", os.path.join(tmp, "bad2"), *DATA, "--init", base, "--reg", "lora",
                     "--rank", "0.4"])
        check(p.returncode != 0 and "integer" in p.stderr, f"lora with a fractional rank: {p.stderr.strip()}")
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
