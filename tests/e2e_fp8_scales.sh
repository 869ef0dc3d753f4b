#!/usr/bin/env bash
# FP8 sources scaled per tensor and per output channel (tests/gen_fp8.py --scheme
# tensor|channel), in transformers' "fp8" spelling (no weight_block_size) and in
# compressed-tensors' "float-quantized" one (with static input scales, which are not carried
# over): the export equals, byte for byte, the export of the BF16 decode
# RNE_bf16(fl32(fp8 * scale)), in both numerics modes, for -np 1 and 3; verify passes, also
# against the FP8 source (--model); the BF16 twin is recomputed here from the FP8 files.
source "$(dirname "$0")/lib.sh"
W=$(work_dir fp8_scales)
same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }
verify_clean() { "$NX_BIN" verify "$@" </dev/null >/dev/null; }

twin_is_decode() { # twin_is_decode FP8DIR BF16DIR: every FP8 weight decodes to the twin's bits
    "$NX_PYTHON" - "$1" "$2" <<'PY'
import os, sys
import numpy as np
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import E4M3_DECODE, load_checkpoint
f8, bf = load_checkpoint(sys.argv[1]), load_checkpoint(sys.argv[2])
bad, n = [], 0
for name, t in f8.items():
    if t.dtype != "F8_E4M3":
        continue
    s = f8[name + "_scale"]
    scale = np.frombuffer(s.data, "<f4").reshape(-1, 1)   # [] / [1] -> [1, 1]; [r, 1] as is
    codes = np.frombuffer(t.data, np.uint8).reshape(t.shape)
    prod = (E4M3_DECODE[codes] * scale).astype(np.float32)
    u = prod.view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)   # RNE to BF16
    if bits.tobytes() != bf[name].data:
        bad.append(name)
    n += 1
print("twin_is_decode: %d FP8 weights, %d differ" % (n, len(bad)), bad[:3])
sys.exit(1 if bad or n == 0 else 0)
PY
}

for scheme in tensor channel; do
    for spelling in fp8 compressed-tensors; do
        "$NX_PYTHON" "$NX_TESTS/gen_fp8.py" --family deepseek --scheme "$scheme" \
            --spelling "$spelling" --out "$W/$scheme-$spelling" --bf16-out "$W/$scheme-$spelling-bf16" \
            --calib "$W/$scheme.h5" >/dev/null
        check "$scheme/$spelling: fixture twin is the decode" \
            twin_is_decode "$W/$scheme-$spelling" "$W/$scheme-$spelling-bf16"
    done
    check "$scheme: both spellings have one BF16 twin" \
        same_tree "$W/$scheme-fp8-bf16" "$W/$scheme-compressed-tensors-bf16"
    before=$(tree_sums "$W/$scheme-fp8"; tree_sums "$W/$scheme-compressed-tensors")
    for mode in gpu cpu; do
        for np in 1 3; do
            b="$W/out-$scheme-bf16-$mode-$np"
            check "$scheme $mode np=$np: export BF16 twin" nx "$np" export --quiet \
                --model "$W/$scheme-fp8-bf16" --calib "$W/$scheme.h5" --output "$b" \
                --numerics "$mode" --max-shard-size 150KB
            for spelling in fp8 compressed-tensors; do
                a="$W/out-$scheme-$spelling-$mode-$np"
                check "$scheme/$spelling $mode np=$np: export" nx "$np" export --quiet \
                    --model "$W/$scheme-$spelling" --calib "$W/$scheme.h5" --output "$a" \
                    --numerics "$mode" --max-shard-size 150KB
                check "$scheme/$spelling $mode np=$np: byte-identical to the BF16 twin's" \
                    same_tree "$a" "$b"
                check "$scheme/$spelling $mode np=$np: verify --model FP8 source" \
                    verify_clean "$a" --model "$W/$scheme-$spelling"
            done
        done
    done
    check "$scheme: verify" verify_clean "$W/out-$scheme-fp8-gpu-1"
    check "$scheme: inputs unmodified" test "$before" = \
        "$(tree_sums "$W/$scheme-fp8"; tree_sums "$W/$scheme-compressed-tensors")"
done
check "plan names the per-channel encoding" bash -c '"$0" plan --model "$1" 2>/dev/null |
    grep -q "FP8 per-tensor/per-channel (compressed-tensors float-quantized)"' \
    "$NX_BIN" "$W/channel-compressed-tensors"
finish
