#!/usr/bin/env bash
# DeepSeek-V4 export benchmark for the 16-core device machine: nvfp4x against ModelOpt's own
# examples/deepseek/deepseek_v4/quantize_to_nvfp4.py, run from source on the same checkpoint and
# calibration, default re-quantization and --cast-mxfp4 (the script's --cast_mxfp4_to_nvfp4).
# Writes its figures to $OUT/figures.txt (and logs beside it); about 5-8 minutes.
#
#   MODELOPT_SRC=/path/to/modelopt-files OUT=/tmp/out bash tests/bench/device_v4.sh
#
# The machine has Open MPI 4.1, serial HDF5, CMake, Python with numpy, h5py and torch, but not
# cJSON, GNU time or pydantic: the .deb files carried in .deps/ are unpacked (as device_run.sh
# does), and ModelOpt is not installed but loaded from MODELOPT_SRC, a folder holding these files
# at their repository paths (a whole checkout works too):
#   examples/deepseek/deepseek_v4/quantize_to_nvfp4.py
#   modelopt/torch/quantization/qtensor/mxfp4_tensor.py
#   modelopt/torch/quantization/qtensor/nvfp4_tensor.py
#   modelopt/torch/quantization/utils/numeric_utils.py
#   modelopt/torch/quantization/utils/core_utils.py   (only reduce_amax, reduce_block_amax and
#                                                      reduce_block_padding are taken from it)
#   modelopt/torch/quantization/backends/utils.py
# A stub package tree makes `modelopt.torch.quantization.{qtensor,utils.numeric_utils}` importable
# from those files without modelopt's __init__ chain (which needs pydantic): the qtensor package
# holds only the two classes, BaseQuantizedTensor is its four-line constructor. When the
# safetensors package is missing, a shim with the same file layout stands in (said in the
# figures: the comparison then checks the numerics, not safetensors' own writer).
#
# Size: DSV4_LAYERS (3) main layers + the MTP block, DSV4_EXPERTS (64) routed experts each,
# hidden 2048, moe_inter 1024, V4's vocabulary (129280): about 2 GB, of which 0.8 GB MXFP4
# experts (0.6 GB, 1.2 G elements, converted) and 1.1 GB BF16 embed and head (copied). The
# script's CPU path is the slow side: each of its runs is cut at MO_TIMEOUT (150) seconds.
set -uo pipefail
OUT=${OUT:-/tmp/nvfp4x-device-v4}
W=${WORK:-/tmp/nvfp4x-v4}
LAYERS=${DSV4_LAYERS:-3}
EXPERTS=${DSV4_EXPERTS:-64}
MO_TIMEOUT=${MO_TIMEOUT:-150}
mkdir -p "$OUT"
FIG=$OUT/figures.txt
: "${MODELOPT_SRC:?set MODELOPT_SRC to the folder holding the ModelOpt files (see the header)}"
SCRIPT=$MODELOPT_SRC/examples/deepseek/deepseek_v4/quantize_to_nvfp4.py
Q=modelopt/torch/quantization
for f in examples/deepseek/deepseek_v4/quantize_to_nvfp4.py $Q/qtensor/mxfp4_tensor.py \
    $Q/qtensor/nvfp4_tensor.py $Q/utils/numeric_utils.py $Q/utils/core_utils.py \
    $Q/backends/utils.py; do
    [ -f "$MODELOPT_SRC/$f" ] || { echo "device_v4: $MODELOPT_SRC/$f missing" | tee "$FIG"; exit 2; }
done
T0=$(date +%s)

# ---- Build (as device_run.sh) ---------------------------------------------------------------
D=/tmp/nvfp4x-deps
mkdir -p "$D"
for f in .deps/*.deb; do [ -f "$f" ] && dpkg -x "$f" "$D"; done
export LD_LIBRARY_PATH=$D/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TIME=$D/usr/bin/time
[ -x "$TIME" ] || TIME=/usr/bin/time
{
    nproc; lscpu | grep -E 'Model name|Socket|Core|Thread|MHz|L3'; free -g | head -2
    df -h /tmp | tail -1; mpirun --version | head -1
    python3 -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__,
              "threads", torch.get_num_threads())'
    python3 -c 'import safetensors; print("safetensors", safetensors.__version__)' 2>&1 | tail -1
} >"$OUT/machine.txt" 2>&1
cmake -S . -B build-device-v4 -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D/usr" \
    -DPKG_CONFIG_USE_CMAKE_PREFIX_PATH=OFF >"$OUT/build.log" 2>&1 &&
    cmake --build build-device-v4 -j "$(nproc)" --target nvfp4x >>"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
NX=$PWD/build-device-v4/nvfp4x

# ---- Data: the checkpoint, ptq.py's rank dumps, the bridge --------------------------------
rm -rf "$W"
mkdir -p "$W"
python3 tests/gen_dsv4.py sized --out "$W/model" --calib "$W/generated.h5" --dumps "$W/amax" \
    --mp 2 --layers "$LAYERS" --experts "$EXPERTS" --vocab 129280 >"$OUT/generate.log" 2>&1 ||
    { cat "$OUT/generate.log"; exit 1; }
python3 launch/modelopt_amax_to_h5.py "$W/amax" "$W/calib.h5" >"$OUT/bridge.log" 2>&1 ||
    { cat "$OUT/bridge.log"; exit 1; }
GB=$(du -sb "$W/model" | awk '{ printf "%.2f", $1 / 1e9 }')
cat "$W"/model/*.safetensors >/dev/null # page cache warm for every run alike

# ---- ModelOpt from source, behind stubs ---------------------------------------------------
STUBS=$W/stubs
python3 - "$MODELOPT_SRC" "$STUBS" <<'EOF'
import ast, importlib.util, os, shutil, sys
src, out = sys.argv[1:]
q = os.path.join(out, "modelopt", "torch", "quantization")
for d in ("", "torch", "torch/quantization", "torch/quantization/qtensor",
          "torch/quantization/utils", "torch/quantization/backends"):
    os.makedirs(os.path.join(out, "modelopt", d), exist_ok=True)
    open(os.path.join(out, "modelopt", d, "__init__.py"), "w").close()
def copy(rel):
    shutil.copy(os.path.join(src, "modelopt/torch/quantization", rel), os.path.join(q, rel))
for rel in ("qtensor/mxfp4_tensor.py", "qtensor/nvfp4_tensor.py", "utils/numeric_utils.py",
            "backends/utils.py"):
    copy(rel)
open(os.path.join(q, "qtensor/__init__.py"), "w").write(
    "from .mxfp4_tensor import MXFP4QTensor\nfrom .nvfp4_tensor import NVFP4QTensor\n")
open(os.path.join(q, "qtensor/base_qtensor.py"), "w").write(
    "class BaseQuantizedTensor:\n"
    "    def __init__(self, original_shape, original_dtype, quantized_data):\n"
    "        self.metadata = {'shape': original_shape, 'dtype': original_dtype}\n"
    "        self._quantized_data = quantized_data\n")
# reduce_* are ModelOpt's own functions, lifted from core_utils.py (its imports need pydantic).
core = os.path.join(src, "modelopt/torch/quantization/utils/core_utils.py")
tree = ast.parse(open(core).read())
keep = [n for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name in
            ("reduce_amax", "reduce_block_amax", "reduce_block_padding")) or
        (isinstance(n, ast.Assign) and
         any(getattr(t, "id", "") == "_FP8_DTYPES" for t in n.targets))]
body = "\n\n".join(ast.unparse(n) for n in keep)
open(os.path.join(q, "utils/__init__.py"), "w").write(
    "import torch\nimport torch.nn.functional as F\n\n" + body + "\n")
if importlib.util.find_spec("safetensors") is None:
    os.makedirs(os.path.join(out, "safetensors"), exist_ok=True)
    open(os.path.join(out, "safetensors", "SHIM"), "w").write("shim\n")
    open(os.path.join(out, "safetensors", "__init__.py"), "w").write(r'''
import json, struct, torch
if not hasattr(torch, "float8_e8m0fnu"):
    raise ImportError("torch %s has no float8_e8m0fnu for DeepSeek-V4's scales" % torch.__version__)
ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32",
         "U32", "F32", "F64", "I64", "U64"]
DT = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn,
      "I16": torch.int16, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
      "F32": torch.float32, "F64": torch.float64, "I64": torch.int64,
      "F8_E8M0": torch.float8_e8m0fnu}
NAME = {v: k for k, v in DT.items()}
class safe_open:
    def __init__(self, path, framework="pt", device="cpu"):
        self.f = open(path, "rb")
        n = struct.unpack("<Q", self.f.read(8))[0]
        self.h = json.loads(self.f.read(n)); self.h.pop("__metadata__", None); self.base = 8 + n
    def __enter__(self): return self
    def __exit__(self, *a): self.f.close()
    def keys(self): return sorted(self.h)
    def get_tensor(self, k):
        i = self.h[k]; b, e = i["data_offsets"]; self.f.seek(self.base + b)
        raw = bytearray(self.f.read(e - b))
        dt = DT[i["dtype"]]
        t = torch.frombuffer(raw, dtype=dt) if raw else torch.empty(0, dtype=dt)
        return t.reshape(i["shape"])
''')
    open(os.path.join(out, "safetensors", "torch.py"), "w").write(r'''
import json, struct, torch
from . import ORDER, NAME
def save_file(tensors, path, metadata=None):
    items = sorted(tensors.items(), key=lambda kv: (-ORDER.index(NAME[kv[1].dtype]), kv[0]))
    hdr, off, blobs = {}, 0, []
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for k, t in items:
        b = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        hdr[k] = {"dtype": NAME[t.dtype], "shape": list(t.shape),
                  "data_offsets": [off, off + len(b)]}
        off += len(b); blobs.append(b)
    text = json.dumps(hdr, separators=(",", ":")).encode(); text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for b in blobs:
            f.write(b)
''')
EOF
SHIM=no
[ -f "$STUBS/safetensors/SHIM" ] && SHIM=yes

# ---- Runs -----------------------------------------------------------------------------------
cat >"$W/rank.sh" <<EOF
#!/bin/sh
exec "$TIME" -f '%M' -o "$W/rss.\${OMPI_COMM_WORLD_RANK:-0}" "$NX" "\$@"
EOF
chmod +x "$W/rank.sh"
row() { printf '%-34s %8s %10s  %s\n' "$@" >>"$FIG"; }

nx_run() { # nx_run MODE NP THREADS: one export, its wall time and largest rank RSS
    local mode=$1 np=$2 th=$3 out="$W/nx-$1-np$2" args=() t0 t1
    [ "$mode" = cast ] && args=(--cast-mxfp4)
    rm -rf "$out" "$W"/rss.*
    t0=$(date +%s.%N)
    timeout 150 mpirun --mca pml ob1 --mca btl self,vader --bind-to none -np "$np" \
        "$W/rank.sh" export --model "$W/model" --calib "$W/calib.h5" --output "$out" --threads "$th" --no-fsync \
        "${args[@]}" >"$OUT/nx-$mode-np$np.log" 2>&1
    local rc=$?
    t1=$(date +%s.%N)
    local rss
    rss=$(cat "$W"/rss.* 2>/dev/null | sort -n | tail -1)
    row "nvfp4x $mode np=$np threads=$th" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" \
        "$((${rss:-0} / 1024))" "exit $rc"
}

mo_run() { # mo_run MODE: the script, single process, CPU (its default device)
    local mode=$1 out="$W/mo-$1" args=()
    [ "$mode" = cast ] && args=(--cast_mxfp4_to_nvfp4)
    rm -rf "$out"
    PYTHONPATH=$STUBS timeout "$MO_TIMEOUT" "$TIME" -f '%e %M' -o "$W/mo.time" \
        python3 "$SCRIPT" --amax_path "$W/amax" --source_ckpt "$W/model" --output_ckpt "$out" \
        "${args[@]}" >"$OUT/modelopt-$mode.log" 2>&1
    local rc=$? secs rss
    read -r secs rss < <(tail -1 "$W/mo.time" 2>/dev/null) || true
    row "ModelOpt script $mode (cpu)" "${secs:-?}" "$(( ${rss:-0} / 1024 ))" \
        "exit $rc$([ "$rc" = 124 ] && echo " (timed out after ${MO_TIMEOUT}s)")"
}

compare() { # compare MODE: nvfp4x's output against the script's, file by file
    local mode=$1 a="$W/nx-$1-np16" b="$W/mo-$1"
    python3 - "$a" "$b" >"$OUT/compare-$mode.txt" 2>&1 <<'EOF'
import os, sys
sys.path.insert(0, "tests")
from nvfp4_ref import read_safetensors
a, b = sys.argv[1:]
def files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            out[os.path.relpath(os.path.join(d, n), root)] = os.path.join(d, n)
    return out
fa, fb = files(a), files(b)
same = diff = 0
for rel in sorted(set(fa) | set(fb)):
    if rel not in fa or rel not in fb:
        print("only in %s: %s" % ("nvfp4x" if rel in fa else "ModelOpt", rel)); diff += 1; continue
    if open(fa[rel], "rb").read() == open(fb[rel], "rb").read():
        same += 1; continue
    diff += 1
    print("differs: %s" % rel)
    if rel.endswith(".safetensors"):
        ta, tb = read_safetensors(fa[rel])[0], read_safetensors(fb[rel])[0]
        bad = [n for n in sorted(set(ta) | set(tb)) if n not in ta or n not in tb or
               (ta[n].dtype, ta[n].shape, ta[n].data) != (tb[n].dtype, tb[n].shape, tb[n].data)]
        print("  %d of %d tensors differ: %s" % (len(bad), len(ta), ", ".join(bad[:8])))
print("%d files identical, %d differ" % (same, diff))
EOF
    tail -1 "$OUT/compare-$mode.txt"
}

{
    echo "DeepSeek-V4 export: ${GB} GB release-format checkpoint ($LAYERS main layers + MTP," \
        "$EXPERTS MXFP4 routed experts each, hidden 2048, moe_inter 1024, vocab 129280)," \
        "$(nproc) cores"
    echo "calibration: ptq.py-style rank dumps (mp 2) -> modelopt_amax_to_h5.py -> HDF5;" \
        "safetensors shim: $SHIM; page cache warm"
    echo
} >"$FIG"
row "run" "wall s" "peak RSS MB" "status"
for mode in default cast; do
    nx_run "$mode" 1 "$(nproc)"
    nx_run "$mode" 16 1
    mo_run "$mode"
    echo "  $mode: nvfp4x (np=16) vs ModelOpt: $(compare "$mode")" >>"$FIG"
done
t0=$(date +%s.%N)
mpirun --mca pml ob1 --mca btl self,vader -np 16 "$NX" verify "$W/nx-cast-np16" --model "$W/model" \
    >"$OUT/verify.log" 2>&1
vrc=$?
row "nvfp4x verify --model, np=16" "$(awk -v a="$t0" -v b="$(date +%s.%N)" \
    'BEGIN { printf "%.1f", b - a }')" "" "exit $vrc"
grep -h '\[cast\]' "$OUT/nx-cast-np16.log" "$OUT/modelopt-cast.log" >>"$FIG" 2>/dev/null
echo "total $(( $(date +%s) - T0 )) s (build included)" >>"$FIG"
cat "$FIG"
