"""Install the library and compile the embedding example against it, the way a user would:
`cmake --install` into a temporary prefix, `pkg-config --cflags --libs q3r` to build
examples/embed_q3r.c with only <q3r.h>, then run it. Its Q3R run must reach rank 4 on every
block (sigma_5/sigma_1 below 1e-3) where plain descent stays far from it.
q3r-ctest-label: slow (the sanitizer build's library cannot link into a plain program)"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from q3r_testing import Checks  # noqa: E402

src = os.environ.get("Q3R_SOURCE_DIR", ".")
build = os.environ.get("Q3R_BINARY_DIR", "build")
if not shutil.which("pkg-config") or not shutil.which("cc"):
    print("test_install: skipped, pkg-config or cc missing")
    sys.exit(77)
check = Checks()


# `cmake --install` always writes install_manifest.txt into the build tree: put back what was there.
manifest = os.path.join(build, "install_manifest.txt")
old_manifest = open(manifest, "rb").read() if os.path.exists(manifest) else None
with tempfile.TemporaryDirectory() as prefix:
    try:
        subprocess.run(["cmake", "--install", build, "--prefix", prefix], check=True, capture_output=True)
    finally:
        if old_manifest is None:
            if os.path.exists(manifest):
                os.remove(manifest)
        else:
            with open(manifest, "wb") as f:
                f.write(old_manifest)
    libdir = next(os.path.join(prefix, d) for d in ("lib", "lib64", "lib/x86_64-linux-gnu")
                  if os.path.exists(os.path.join(prefix, d, "pkgconfig", "q3r.pc")))
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(libdir, "pkgconfig"), LD_LIBRARY_PATH=libdir)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "q3r"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    check(any(f.startswith("-I" + prefix) for f in flags), f"pkg-config points into the prefix: {flags}")
    exe = os.path.join(prefix, "embed")
    cc = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", os.path.join(src, "examples", "embed_q3r.c"),
                         "-o", exe] + flags + ["-lm"], env=env, capture_output=True, text=True)
    check(cc.returncode == 0, f"the example compiles against the installed header: {cc.stderr}")
    if cc.returncode == 0:
        out = subprocess.run([exe], env=env, capture_output=True, text=True, check=True).stdout
        print(out, end="")
        rows = {l.split()[0]: [float(x) for x in re.findall(r"v: ([\d.]+) ([\d.]+) ([\d.]+)", l)[0]]
                for l in out.splitlines()}
        check(max(rows["with"]) < 1e-3, "Q3R reaches rank 4 on q, k and v")
        check(min(rows["plain"]) > 0.1, "plain descent does not")
sys.exit(check.finish())
