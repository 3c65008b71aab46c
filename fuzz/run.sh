#!/usr/bin/env bash
# Runs one fuzz target from the repository root: fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags]
# New inputs go to fuzz/corpus/TARGET (not committed); the committed seeds in fuzz/seeds/TARGET
# are read as a second corpus directory; crashes go to fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh v1_request|legacy_request|http_body|config|channel_options|auth_inputs|access_token [seconds] [libFuzzer flags]}
seconds=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
case $target in
  v1_request) dict=v1 ;;
  legacy_request) dict=legacy ;;
  http_body) dict=json ;;
  config) dict=config ;;
  channel_options) dict=options ;;
  auth_inputs) dict=auth ;;
  access_token) dict=jwt ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
mkdir -p "fuzz/corpus/$target"
exec nice -n 10 cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
  -dict="fuzz/dicts/$dict.dict" -max_len=4096 -max_total_time="$seconds" -print_final_stats=1 "$@"
