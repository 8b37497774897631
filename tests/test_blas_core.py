"""The OpenBLAS core selection in `q3r --version`.

Reference: the CPU's own flags in /proc/cpuinfo. On a CPU with AVX-512 and no
OPENBLAS_CORETYPE in the environment, q3r must end up on an AVX-512 core; a value the user
set is never overridden."""
import os
import subprocess
import sys

q3r = os.environ.get("Q3R_BIN") or os.path.join(os.environ.get("Q3R_BINARY_DIR", "build"), "q3r")


def version(env_extra, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    out = subprocess.run([q3r, "--version"], env=env, capture_output=True, text=True, check=True).stdout
    core = next(l for l in out.splitlines() if l.startswith("blas:")).split("core ")[1].split(" ")[0]
    return core, out


flags = set()
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
avx512 = {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"} <= flags
failed = 0

core, out = version({}, drop=("OPENBLAS_CORETYPE", "Q3R_STARTUP_REEXEC"))
is_avx512_core = core.lower() in ("skylakex", "cooperlake", "sapphirerapids")
print(f"cpu avx512={avx512}, core unset env -> {core}")
if avx512 and not is_avx512_core:
    print("FAIL: AVX-512 CPU but q3r runs a non-AVX-512 core"); failed += 1
if ("AVX-512 yes" in out) != avx512:
    print("FAIL: q3r's AVX-512 detection disagrees with /proc/cpuinfo"); failed += 1

core, _ = version({"OPENBLAS_CORETYPE": "Haswell"}, drop=("Q3R_STARTUP_REEXEC",))
print(f"OPENBLAS_CORETYPE=Haswell -> {core}")
if core != "Haswell":
    print("FAIL: a core set by the user was overridden"); failed += 1

print(f"{3 - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
