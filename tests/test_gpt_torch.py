"""The full-model oracle for the GPT: q3r's GPT against nanoGPT's GPT written in plain torch
(torch_reference.GPT: nanoGPT's module and parameter names, not calling q3r).

tool_gpt_dump (C) builds a small GPT, saves it as a q3r model file, writes a batch, runs
forward + backward and writes logits, loss and every parameter gradient. Here the model file
is loaded into the torch GPT by name with load_state_dict(strict=True) after mapping nothing
(the tied head: the file holds both "transformer.wte.weight" and "lm_head.weight", as nanoGPT's
state_dict does), run in float64 and compared with fp32 tolerances; once with the head tied to
wte (both gradient contributions in one tensor) and once untied. Exit 77 (skip) without torch.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Checks, require, tool_path  # noqa: E402

require("test_gpt_torch", "numpy", "torch")
import safetensors_np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch_reference import GPT, compare_forward_backward, gpt_config  # noqa: E402

torch.set_num_threads(1)


def run(tool, tie, tmp, check):
    paths = [os.path.join(tmp, f"{n}{tie}.safetensors") for n in ("model", "batch", "result")]
    subprocess.run([tool, str(tie)] + paths, check=True)
    w, meta = safetensors_np.read(paths[0])
    batch, _ = safetensors_np.read(paths[1])
    r, _ = safetensors_np.read(paths[2])
    check(meta["model.family"] == "gpt", "the model file says family gpt")
    model = GPT(**gpt_config(meta)).double()
    # the model file as it is: every name, strict, nothing mapped
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in w.items()}, strict=True)
    check(("lm_head.weight" in w) and set(w) == set(model.state_dict()),
          f"tie {tie}: the file's names are nanoGPT's state_dict names")
    if tie:
        check(model.lm_head.weight is model.transformer.wte.weight, "tied after loading")
    tokens = torch.from_numpy(batch["tokens"])
    targets = torch.from_numpy(batch["targets"])
    logits = model(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()

    compare_forward_backward(check, f"tie {tie} ", r, logits, loss, model)

def main():
    tool = tool_path("tool_gpt_dump")
    if not tool:
        return 1
    check = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        run(tool, 1, tmp, check)
        run(tool, 0, tmp, check)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
