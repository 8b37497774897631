"""The budget's loss rule (`q3r truncate --budget B --budget-rule loss`) on a small trained GPT,
against torch and numpy on the same weights and windows:

- each measured increase (the mean loss on the calibration windows with that one matrix cut to
  rank r by plain SVD, minus the untruncated loss) equals the one a float64 torch nanoGPT gives
  with numpy's rank-r truncation of that matrix, on the windows tool_calib draws for the seed;
- the untruncated loss and the measured ranks (geometric from 1 to the highest budget rank);
- the table the budget uses is the measurements' monotone envelope (at least 0, never less at a
  lower rank than at a higher one), linearly interpolated between the measured ranks;
- the chosen ranks minimise the summed increase within the budget, as an independent dynamic
  program over the same table finds, the budget is spent (no matrix below its highest rank could
  take one more within it), and the file holds them;
- `q3r sweep --budgets B --budget-rule loss` scores that same model (its row = q3r eval of the
  truncated file), with "rule": "loss-budget";
- the default sample count: 64 windows of a text model, 512 images of an image model;
- bad flags: exit 2 (the loss rule without a budget, its options without it, one point); too many
  samples: exit 1 naming the flag and the counts, nothing written."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import safetensors_np  # noqa: E402
from q3r_testing import Checks, budget_knapsack, run_q3r, tool_path, write_corpus  # noqa: E402

check = Checks()
calib = tool_path("tool_calib")
B, SAMPLES, POINTS, SEED = 0.3, 20, 4, 7

tmp = tempfile.mkdtemp(prefix="q3r-lossrule-")
try:
    import torch
    from torch_reference import GPT, gpt_config
    text = write_corpus(os.path.join(tmp, "corpus.txt"), 4, 3000)
    run_dir = os.path.join(tmp, "run")
    p = run_q3r(["train", "--model", "gpt-tiny", "--data", text, "--width", "32", "--depth", "2", "--heads", "2",
                 "--mlp", "64", "--context", "16", "--batch", "8", "--epochs", "1", "--epoch-steps", "200",
                 "--val-windows", "10", "--threads", "1", "--quiet", "--reg", "none", "--out", run_dir],
                expect_ok=True)
    model = os.path.join(run_dir, "model.safetensors")
    out = os.path.join(tmp, "cut.safetensors")
    flags = ["--targets", "all", "--budget", str(B), "--budget-rule", "loss", "--loss-samples", str(SAMPLES),
             "--loss-points", str(POINTS), "--seed", str(SEED), "--threads", "1"]
    t = run_q3r(["truncate"] + flags + ["--json", model, out], expect_ok=True)
    wins = os.path.join(tmp, "windows.safetensors")
    q = subprocess.run([calib, model, text, str(SAMPLES), str(SEED), wins], capture_output=True, text=True) \
        if calib else None
    if check(p.returncode == 0 and t.returncode == 0 and q is not None and q.returncode == 0,
             "trained, truncated with the loss rule, windows drawn"):
        rep = json.loads(t.stdout)
        lr = rep["loss_rule"]
        check(rep["rule"] == f"loss budget {B:g}", f"rule: {rep['rule']}")
        w, meta = safetensors_np.read(model)
        win = safetensors_np.read(wins)[0]
        X, Y = torch.from_numpy(win["tokens"]), torch.from_numpy(win["targets"])
        net = GPT(**gpt_config(meta)).double()
        state = {k: torch.from_numpy(v).double() for k, v in w.items()}
        net.load_state_dict(state, strict=True)
        d = int(meta["model.width"])

        def mean_loss():
            with torch.no_grad():
                logits = net(X)
                return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1)).item()

        base = mean_loss()
        check(abs(lr["base_loss"] - base) < 2e-5, f"untruncated loss {lr['base_loss']:.7f} = torch's {base:.7f}")
        check(lr["samples"] == SAMPLES, f"measured on {lr['samples']} windows")

        def weight(name):
            """(state key, row slice) of a matrix name"""
            if name.endswith((".q", ".k", ".v")):
                j = "qkv".index(name[-1])
                return name[:-2] + ".c_attn.weight", slice(j * d, (j + 1) * d)
            return name + ".weight", slice(None)

        mats = lr["matrices"]
        check(len(mats) == 12, f"12 block matrices measured ({len(mats)})")
        worst, measured = 0.0, 0
        for m in mats:
            key, rows = weight(m["name"])
            W = w[key][rows].astype(np.float64)
            rmax = m["max_rank"]
            rm, cm = W.shape
            check(rmax == min(min(rm, cm), rm * cm // (rm + cm)), f"{m['name']}: highest budget rank {rmax}")
            want_ranks = sorted({1, rmax} | {int(round(rmax ** (t / (POINTS - 1)))) for t in range(POINTS)})
            got_ranks = [r for r, _ in m["measured"]]
            check(got_ranks == want_ranks, f"{m['name']}: measured ranks {got_ranks} (want {want_ranks})")
            U, s, Vt = np.linalg.svd(W, full_matrices=False)
            for r, inc in m["measured"]:
                full = state[key].clone()
                full[rows] = torch.from_numpy((U[:, :r] * s[:r]) @ Vt[:r])
                net.load_state_dict({**state, key: full}, strict=True)
                want = mean_loss() - base
                worst = max(worst, abs(inc - want))
                measured += 1
                check(abs(inc - want) < 2e-6 + 1e-4 * abs(want),
                      f"{m['name']} at rank {r}: increase {inc:.7f}, torch {want:.7f}")
            net.load_state_dict(state, strict=True)
            table = m["increase"]
            check(len(table) == rmax, f"{m['name']}: a value per rank")
            env = [v for _, v in m["measured"]]
            for t in range(len(env) - 1, -1, -1):
                env[t] = max(env[t], env[t + 1] if t + 1 < len(env) else 0.0)
            ranks_env = list(zip([r for r, _ in m["measured"]], env))
            for (r0, v0), (r1, v1) in zip(ranks_env, ranks_env[1:]):
                for r in range(r0, r1 + 1):
                    want = v0 + (v1 - v0) * (r - r0) / (r1 - r0)
                    if abs(table[r - 1] - want) > 1e-7 * (1 + abs(want)):
                        check(False, f"{m['name']}: rank {r} interpolated {table[r - 1]} (want {want})")
                        break
        incs = [inc for m in mats for _, inc in m["measured"]]
        print(f"loss rule: {measured} measured increases from {min(incs):.2e} to {max(incs):.2e}, largest "
              f"difference from torch {worst:.2e}")
        check(max(incs) > 1e-2, "some matrix's cut costs the model clearly (the check has something to see)")

        # the choice: the independent reference search over the same table
        shapes = [w[weight(m["name"])[0]][weight(m["name"])[1]].shape for m in mats]
        costs = [rm + cm for rm, cm in shapes]
        _, best, allowed = budget_knapsack(shapes, [[-x for x in m["increase"]] for m in mats], B)
        chosen = {x["name"]: x["rank"] for x in rep["matrices"]}
        total = sum(m["increase"][chosen[m["name"]] - 1] for m in mats)
        spent = sum(chosen[m["name"]] * c for m, c in zip(mats, costs))
        check(spent <= allowed, f"spent {spent} of {allowed} parameters")
        grow = [m["name"] for m, c in zip(mats, costs) if chosen[m["name"]] < m["max_rank"] and spent + c <= allowed]
        check(not grow, f"the budget is spent: no matrix could take one more rank within it ({grow})")
        # a large budget, where most matrices' increases are flat at 0 past some rank: equal sums go to the
        # higher rank, so the budget is still spent rather than left over at the first rank that is free
        big = run_q3r(["truncate"] + [x if x != str(B) else "0.9" for x in flags] + ["--json", model,
                                                                                     os.path.join(tmp, "big.safetensors")],
                      expect_ok=True)
        if check(big.returncode == 0, "truncated at budget 0.9"):
            rb = json.loads(big.stdout)
            cb = {x["name"]: x["rank"] for x in rb["matrices"]}
            allowed9 = int(0.9 * sum(rm * cm for rm, cm in shapes) * (1 + 1e-12))
            spent9 = sum(cb[m["name"]] * c for m, c in zip(mats, costs))
            grow9 = [m["name"] for m, c in zip(mats, costs) if cb[m["name"]] < m["max_rank"] and spent9 + c <= allowed9]
            check(spent9 <= allowed9 and not grow9, f"budget 0.9 spent: {spent9} of {allowed9} ({grow9} could grow)")
        noisy = sum(1 for m in mats for _, inc in m["measured"] if inc < 0)
        print(f"loss rule: {noisy} measured increases below 0 (the envelope lifts them)")
        check(abs(-total - best) < 1e-9, f"summed increase {total:.9f} = the optimum {-best:.9f}")
        cmeta = safetensors_np.read(out)[1]
        file_ranks = [int(x) for x in cmeta["model.ranks"].split(",")]
        check(file_ranks[:len(mats)] == [chosen[m["name"]] for m in mats], f"the file's ranks: {file_ranks}")

        # the sweep with the same rule scores the same model
        sj = os.path.join(tmp, "sweep.json")
        sw = run_q3r(["sweep", "--targets", "all", "--budgets", str(B), "--budget-rule", "loss", "--loss-samples",
                      str(SAMPLES), "--loss-points", str(POINTS), "--seed", str(SEED), "--threads", "1", "--json", sj,
                      model], expect_ok=True)
        ev = run_q3r(["eval", "--threads", "1", "--json", out], expect_ok=True)
        if check(sw.returncode == 0 and ev.returncode == 0, "sweep and eval ran"):
            sd = json.load(open(sj))
            check(sd["rule"] == "loss-budget", f"sweep rule {sd['rule']}")
            e = json.loads(ev.stdout.strip().splitlines()[-1])
            row = sd["rows"][-1]
            check(abs(row["bpb"] - e["bpb"]) < 1e-6, f"sweep row {row['bpb']} = eval of the file {e['bpb']}")

    # bad input
    bad = os.path.join(tmp, "bad.safetensors")
    for args, what in ((["--rank", "0.3", "--budget-rule", "loss"], "the loss rule without a budget"),
                       (["--budget", "0.3", "--loss-points", "4"], "--loss-points without the loss rule"),
                       (["--budget", "0.3", "--budget-rule", "loss", "--loss-points", "1"], "one point")):
        r = run_q3r(["truncate", "--targets", "all"] + args + [model, bad])
        check(r.returncode == 2 and not os.path.exists(bad), f"{what}: exit 2 ({r.stderr.strip()[:90]})")
    r = run_q3r(["truncate", "--targets", "all", "--budget", "0.3", "--budget-rule", "loss", "--loss-samples",
                 "100000000", model, bad])
    check(r.returncode == 1 and "--budget-rule loss" in r.stderr and "100000000" in r.stderr and model in r.stderr
          and not os.path.exists(bad), f"too many samples: exit 1, naming the model file ({r.stderr.strip()[:160]})")
    r = run_q3r(["sweep", "--targets", "all", "--budget-rule", "loss", model])
    check(r.returncode == 2, f"sweep: the loss rule without --budgets: exit 2 ({r.stderr.strip()[:90]})")

    # the default sample count follows the model's input: 64 windows of text, 512 images (one label each)
    def default_samples(mdl, data_args):
        r = run_q3r(["truncate", "--targets", "qkv", "--budget", "0.5", "--budget-rule", "loss", "--loss-points",
                     "2", "--threads", "1", "--json", *data_args, mdl, os.path.join(tmp, "default.safetensors")])
        return json.loads(r.stdout)["loss_rule"]["samples"] if r.returncode == 0 else f"exit {r.returncode}: {r.stderr}"
    got = default_samples(model, [])
    check(got == 64, f"text: the loss rule's default is 64 windows ({got})")
    vit_dir = os.path.join(tmp, "vit")
    v = run_q3r(["train", "--model", "vit-fmnist", "--width", "32", "--depth", "1", "--heads", "2", "--mlp", "64",
                 "--train-limit", "600", "--test-limit", "100", "--batch", "100", "--epochs", "1", "--reg", "none",
                 "--threads", "1", "--quiet", "--out", vit_dir])
    if check(v.returncode == 0, f"a tiny ViT trained ({v.stderr.strip()[:120]})"):
        got = default_samples(os.path.join(vit_dir, "model.safetensors"), [])
        check(got == 512, f"images: the loss rule's default is 512 images ({got})")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
sys.exit(check.finish())
