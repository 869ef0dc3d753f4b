#!/usr/bin/env bash
# Scale: `plan` on a checkpoint with exactly the shape of Kimi-K2 (61 layers, 384 experts,
# ~70k tensors, 2.05 TB of BF16 in 64 shards whose data sections are holes) for 1024 ranks
# succeeds, counts what the shape implies, and stays under 1 GB of memory; the same for
# Kimi-K2-Thinking's INT4 release (208k tensors, 62 shards) with --quantize mlp, its usual
# recipe. Those times are printed, not asserted. Then DeepSeek-V4-Pro as released (61 layers x
# 384 MXFP4 experts, 145116 tensors, ~860 GB in 64 shards, tests/gen_dsv4.py sparse): under
# 10 s (asserted in optimized builds without sanitizers) and 1 GB.
source "$(dirname "$0")/lib.sh"
W=$(work_dir scale)
K=$W/kimi
trap 'rm -rf "$K"' EXIT

# The shape (tests/gen_kimi_sparse.py): L layers, the first D dense, E routed experts.
L=61 D=1 E=384
MOE=$((L - D))
TENSORS=$((3 + D * 12 + MOE * (9 + 2 + 3 * E + 3)))
# Default policy: the 5 MLA linears of every layer, the dense MLPs, every routed and shared
# expert projection; never routers, embeddings or lm_head.
QUANT=$((L * 5 + D * 3 + MOE * (3 * E + 3)))
# Fused groups: q_a_proj+kv_a_proj_with_mqa, q_b_proj, kv_b_proj, o_proj; gate+up, down.
NGROUPS=$((L * 4 + D * 2 + MOE * (2 * E + 2)))
SLOTS=$((MOE * 2))           # (MoE layer, gate/up | down) input-amax slots
EXCLUDED=$((2 + MOE))        # embed_tokens, lm_head, one router per MoE layer
OUT_TENSORS=$((4 * QUANT + TENSORS - QUANT))   # no calibration: no KV scales

check "generate Kimi-K2-shaped sparse checkpoint" \
    "$NX_PYTHON" "$NX_TESTS/gen_kimi_sparse.py" --out "$K"
small_on_disk() {
    local kb apparent
    kb=$(du -sk "$K" | cut -f1)
    apparent=$(du -sk --apparent-size "$K" | cut -f1)
    echo "sparse checkpoint: $((apparent / 1024 / 1024)) GiB apparent, $((kb / 1024)) MiB on disk"
    [ "$kb" -lt 102400 ] && [ "$apparent" -gt 1900000000 ]
}
check "sparse checkpoint: ~2 TB apparent, < 100 MB on disk" small_on_disk

# timed_plan NAME SHAPE MODEL [ARGS...]: plan for 1024 ranks into $W/NAME.txt (errors in
# NAME.err) under /usr/bin/time; sets rc, secs and rss_kb and prints them.
timed_plan() {
    local name=$1 shape=$2 model=$3
    shift 3
    rc=0
    /usr/bin/time -f '%e %M' -o "$W/$name.time" "$NX_BIN" plan --model "$model" --ranks 1024 \
        "$@" >"$W/$name.txt" 2>"$W/$name.err" </dev/null || rc=$?
    read -r secs rss_kb < <(tail -n 1 "$W/$name.time" 2>/dev/null) || true
    echo "plan on the $shape shape, 1024 ranks: ${secs} s, peak RSS $((rss_kb / 1024)) MiB" \
        "(exit $rc)"
    [ "$rc" -eq 0 ] || cat "$W/$name.err"
}
timed_plan plan Kimi-K2 "$K"

has() { grep -qxF -- "$1" "$W/plan.txt" || { echo "missing line: $1"; return 1; }; }
check "plan exit status 0" test "$rc" -eq 0
check "plan names the model and its tensors" \
    has "model: $K (kimi_k2), $TENSORS tensors, 64 files"
check "plan: $QUANT quantized linears, $NGROUPS groups, $SLOTS expert slots" \
    has "quantized linears: $QUANT in $NGROUPS fused groups; MoE expert slots: $SLOTS"
check "plan: $EXCLUDED excluded modules" has "excluded modules: $EXCLUDED, exclude_modules:"
check "plan: lm_head and embeddings excluded; no MTP pattern" bash -c '
    grep -qx "  lm_head" "$1" && grep -qx "  model.embed_tokens" "$1" &&
    ! grep -q "^  model\.layers\.61" "$1"' _ "$W/plan.txt"
check "plan: $OUT_TENSORS output tensors" \
    grep -q "^output: $OUT_TENSORS tensors in [0-9]* shards$" "$W/plan.txt"
check "plan: 1024 ranks" has "ranks: 1024"
check "plan: per-rank balance and memory" bash -c '
    grep -q "^  rank 0: " "$1" && grep -q "^balance: .* per rank; largest tensor on a rank: " "$1" &&
    grep -q "^predicted peak memory per rank: " "$1"' _ "$W/plan.txt"
check "plan: peak RSS < 1 GB" test "${rss_kb:-99999999}" -lt 1000000

rm -rf "$K"
check "sparse checkpoint deleted" test ! -e "$K"

# Kimi-K2-Thinking: every routed expert projection is weight_packed + weight_scale +
# weight_shape; the plan decodes nothing but reads the 69,120 weight_shape values.
T=$W/kimi-thinking
trap 'rm -rf "$K" "$T"' EXIT
TT=$((3 + D * 12 + MOE * (9 + 2 + 9 * E + 3)))
ENC=$((MOE * 3 * E))                       # INT4 weights
QMLP=$((D * 3 + MOE * (3 * E + 3)))        # --quantize mlp: dense MLP, routed and shared experts
GMLP=$((D * 2 + MOE * (2 * E + 2)))
XMLP=$((2 + MOE + L * 5))                  # embed_tokens, lm_head, routers, the MLA linears
OUT_T=$((4 * QMLP + TT - 2 * ENC - QMLP))  # scales and weight shapes are not written
check "generate Kimi-K2-Thinking-shaped sparse INT4 checkpoint" \
    "$NX_PYTHON" "$NX_TESTS/gen_kimi_sparse.py" --out "$T" --int4
timed_plan plan-t "Kimi-K2-Thinking INT4" "$T" --quantize mlp
hast() { grep -qxF -- "$1" "$W/plan-t.txt" || { echo "missing line: $1"; return 1; }; }
check "INT4 plan exit status 0" test "$rc" -eq 0
check "INT4 plan: $TT tensors in 62 files" hast "model: $T (kimi_k2), $TT tensors, 62 files"
check "INT4 plan: $ENC INT4 weights" hast "source encoding: INT4 pack-quantized, group 32 \
(compressed-tensors); $ENC encoded weights decoded to BF16 on read"
check "INT4 plan: $QMLP quantized linears, $GMLP groups" \
    hast "quantized linears: $QMLP in $GMLP fused groups; MoE expert slots: $SLOTS"
check "INT4 plan: $XMLP excluded modules, attention among them" bash -c '
    grep -qxF "excluded modules: $2, exclude_modules:" "$1" &&
    grep -qx "  model.layers.0.self_attn\*" "$1" && grep -qx "  model.layers.60.self_attn\*" "$1"
' _ "$W/plan-t.txt" "$XMLP"
check "INT4 plan: $OUT_T output tensors" \
    grep -q "^output: $OUT_T tensors in [0-9]* shards$" "$W/plan-t.txt"
check "INT4 plan: peak RSS < 1 GB" test "${rss_kb:-99999999}" -lt 1000000
rm -rf "$T"

# DeepSeek-V4-Pro as released: every main-layer routed expert projection becomes four tensors
# (its .scale dropped), the rest is copied, the 64 source shards are kept.
V=$W/dsv4pro
trap 'rm -rf "$K" "$V"' EXIT
V_TENSORS=145116 V_QUANT=$((61 * 384 * 3)) V_GROUPS=$((61 * 384 * 2))
V_OUT=$((V_TENSORS - V_QUANT + 3 * V_QUANT))
check "generate DeepSeek-V4-Pro-shaped sparse checkpoint" \
    "$NX_PYTHON" "$NX_TESTS/gen_dsv4.py" sparse --out "$V"
timed_plan v4plan DeepSeek-V4-Pro "$V"
v4has() { grep -qxF -- "$1" "$W/v4plan.txt" || { echo "missing line: $1"; return 1; }; }
check "V4 plan exit status 0" test "$rc" -eq 0
check "V4 plan names the model and its tensors" \
    v4has "model: $V (deepseek_v4), $V_TENSORS tensors, 64 files"
check "V4 plan: $V_QUANT quantized expert projections, $V_GROUPS groups, 3 fallback slots" \
    v4has "quantized linears: $V_QUANT in $V_GROUPS fused groups; MoE expert slots: 3"
check "V4 plan: 61 layers, 23424 experts, MTP experts kept" grep -q \
    "^DeepSeek-V4: 61 main MoE layers, $V_QUANT routed expert projections to NVFP4 (23424 experts;.* 1152 MTP expert projections" \
    "$W/v4plan.txt"
check "V4 plan: $V_OUT output tensors in the 64 source shards" \
    v4has "output: $V_OUT tensors in 64 shards"
check "V4 plan: shard names kept" grep -q "^  model-00064-of-00064.safetensors  " "$W/v4plan.txt"
check "V4 plan: bytes per rank for 1024 ranks" bash -c '
    grep -qx "ranks: 1024" "$1" && grep -q "^  rank 1023: " "$1" && grep -q "^balance: " "$1"' \
    _ "$W/v4plan.txt"
# The time is asserted for an optimized build without sanitizers (they make it 20x slower).
if "$NX_BIN" --version | grep -qE '^build: (Release|RelWithDebInfo), [^,]*$'; then
    check "V4 plan: under 10 s" awk -v s="${secs:-99}" 'BEGIN { exit !(s < 10) }'
else
    echo "V4 plan time not asserted: $("$NX_BIN" --version | grep '^build:')"
fi
check "V4 plan: peak RSS < 1 GB" test "${rss_kb:-99999999}" -lt 1000000
rm -rf "$V"
finish
