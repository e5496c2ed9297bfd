#!/usr/bin/env bash
# A/B of a `fusionrag bench` harness between two builds of the binary, in one
# run: a base revision (built from a git worktree) and the working tree. The
# two binaries run the same harness with the same arguments in alternating
# rounds (base, new, base, new, ...), so that whatever else the machine is
# doing hits both alike; every round's Markdown goes to OUT/ and the summary
# lines (tables) are printed with the binary that produced them.
#
# Usage: scripts/ab-bench.sh BASE_REV ROUNDS -- HARNESS [FLAGS...]
#   e.g. scripts/ab-bench.sh 1caeba9 3 -- ttft --contexts 4096 --strategies reuse,fusionrag
#
# Environment:
#   OUT=dir           where the per-round reports go (default out/ab-bench)
#   BASE_BIN=path     use this binary as the base instead of building BASE_REV
#   NEW_BIN=path      use this binary as the new one instead of building ./cmd/fusionrag
set -euo pipefail
cd "$(dirname "$0")/.."
base_rev=${1:?usage: scripts/ab-bench.sh BASE_REV ROUNDS -- HARNESS [FLAGS...]}
rounds=${2:?usage: scripts/ab-bench.sh BASE_REV ROUNDS -- HARNESS [FLAGS...]}
shift 2
[[ ${1:-} == -- ]] && shift
out=${OUT:-out/ab-bench}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

base=${BASE_BIN:-}
if [[ -z $base ]]; then
  git worktree add -q --detach "$tmp/base" "$base_rev"
  (cd "$tmp/base" && go build -o "$tmp/fusionrag-base" ./cmd/fusionrag)
  base=$tmp/fusionrag-base
fi
new=${NEW_BIN:-}
if [[ -z $new ]]; then
  go build -o "$tmp/fusionrag-new" ./cmd/fusionrag
  new=$tmp/fusionrag-new
fi

for r in $(seq 1 "$rounds"); do
  for side in base new; do
    bin=$base
    [[ $side == new ]] && bin=$new
    echo "== round $r: $side ($bin bench $*)"
    "$bin" bench "$@" > "$out/$side-$r.md" 2> "$out/$side-$r.log"
    grep '^|' "$out/$side-$r.md" || true
  done
done
echo "reports in $out/"
