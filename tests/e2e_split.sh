#!/usr/bin/env bash
# Ownership is per tensor: a fused group and a MoE layer get split across ranks, and the result
# still equals the single-rank export byte for byte (the amax sync unifies them).
source "$(dirname "$0")/lib.sh"
W=$(work_dir split)
gen deepseek "$W"

# owners NP: "rank tensor" lines of the plan for NP ranks
owners() {
    "$NX_BIN" plan --quiet --model "$W/deepseek" --calib "$W/deepseek.h5" --ranks "$1" --owners |
        awk '/^owners/ { on = 1; next } on { print $1, $2 }'
}

# split_both NP: a fused pair (gate_proj/up_proj of one expert, or MLA q_a_proj and
# kv_a_proj_with_mqa) on two ranks, and one MoE layer's experts on two ranks.
split_both() {
    owners "$1" >"$W/owners-$1"
    "$NX_PYTHON" - "$W/owners-$1" <<'PY'
import re, sys
rank = {}
for line in open(sys.argv[1]):
    r, name = line.split()
    rank[name] = int(r)
def fused_split():
    for name, r in rank.items():
        for a, b in (("gate_proj", "up_proj"), ("q_a_proj", "kv_a_proj_with_mqa")):
            if name.endswith(a + ".weight"):
                other = name[: -len(a + ".weight")] + b + ".weight"
                if other in rank and rank[other] != r:
                    print("fused group split:", name, r, other, rank[other])
                    return True
    return False
def layer_split():
    layers = {}
    for name, r in rank.items():
        m = re.match(r"(.*\.mlp)\.experts\.\d+\.", name)
        if m:
            layers.setdefault(m.group(1), set()).add(r)
    for layer, ranks in layers.items():
        if len(ranks) > 1:
            print("MoE layer split:", layer, "ranks", sorted(ranks))
            return True
    return False
sys.exit(0 if fused_split() and layer_split() else 1)
PY
}

np=""
for n in 2 3 4 5 6; do
    if split_both "$n"; then np=$n; break; fi
done
check "a plan splits a fused group and a MoE layer across ranks" test -n "$np"
np=${np:-4}
check "export on 1 rank" nx 1 export --quiet --model "$W/deepseek" --calib "$W/deepseek.h5" \
    --output "$W/np1"
check "export on $np ranks" nx "$np" export --quiet --model "$W/deepseek" \
    --calib "$W/deepseek.h5" --output "$W/np$np"
check "split export identical to one rank" diff <(tree_sums "$W/np1") <(tree_sums "$W/np$np")
finish
