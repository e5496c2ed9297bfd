#!/usr/bin/env bash
# Pass-through overhead of the sidecar, measured the way a sidecar is deployed:
# with its own CPU. A trivial upstream (nginx, one worker, `return 200`) and
# the load generator (wrk, one thread) share core 0; `fusionrag serve`
# (pass-through, GOMAXPROCS=1) gets core 1. Direct and proxied rounds
# alternate in the same run; the report gives the throughput ratio and the
# added p50/p99 latency.
#
# Without pinning, on a 2-core machine the proxy competes with the client and
# the upstream for the same cores in a CPU-saturated closed loop, and the
# ratio measures how much CPU a proxy hop costs (about 2x the upstream's
# per-request work), not whether the proxy keeps up: use
# `go test ./proxy -bench PassthroughOverhead` for that figure.
#
# Needs: wrk, nginx (Debian: apt-get install wrk nginx-light), taskset.
# Usage: scripts/passthrough-overhead.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Environment:
#   FUSIONRAG_BIN=path  measure this binary instead of building ./cmd/fusionrag
#   BASELINE_BIN=path   also measure this binary (A/B in the same run: each
#                       round runs direct, baseline, proxy; both sidecars on
#                       core 1, only one loaded at a time); the report then
#                       has base_* columns
#   PROFILE=file        after the rounds, write a 10 s CPU profile of the
#                       sidecar under the same load (FUSIONRAG_PPROF listener;
#                       read it with `go tool pprof -top BIN FILE`)
set -euo pipefail
rounds=${1:-3}
secs=${2:-10}
conns=${3:-32}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
px=$(free_port)

cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$up;
    location / { return 200 '{"object":"list","data":[]}'; }
  }
}
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work"

bin=${FUSIONRAG_BIN:-}
if [ -z "$bin" ]; then
	(cd "$root" && go build -o "$work/fusionrag" ./cmd/fusionrag)
	bin=$work/fusionrag
fi
dbg=$(free_port)
start_sidecar() { # $1 binary, $2 port, $3 log, $4 pprof address or ""
	FUSIONRAG_PPROF=$4 GOMAXPROCS=1 taskset -c 1 "$1" serve --upstream "http://127.0.0.1:$up" \
		--listen "127.0.0.1:$2" -fusion.disabled true >"$3" 2>&1 &
	for _ in $(seq 50); do curl -sf "http://127.0.0.1:$2/v1/models" >/dev/null && return; sleep 0.1; done
	echo "sidecar $1 did not start:" >&2
	cat "$3" >&2
	exit 1
}
pprof_addr=""
[ -n "${PROFILE:-}" ] && pprof_addr=127.0.0.1:$dbg
start_sidecar "$bin" "$px" "$work/serve.log" "$pprof_addr"
if [ -n "${BASELINE_BIN:-}" ]; then
	bx=$(free_port)
	start_sidecar "$BASELINE_BIN" "$bx" "$work/base.log" ""
fi

run() { # $1 url -> "rps p50_us p99_us"
	taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" --latency "$1" | awk '
		function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1e6; return v }
		/^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) } /^Requests\/sec/ { rps = $2 }
		END { printf "%s %s %s\n", rps, p50, p99 }'
}
if [ -z "${BASELINE_BIN:-}" ]; then
	echo "round direct_rps proxy_rps ratio direct_p50_us proxy_p50_us direct_p99_us proxy_p99_us"
else
	echo "round direct_rps proxy_rps ratio direct_p50_us proxy_p50_us direct_p99_us proxy_p99_us base_rps base_ratio base_p50_us base_p99_us"
fi
for r in $(seq "$rounds"); do
	read -r drps dp50 dp99 < <(run "http://127.0.0.1:$up/v1/models")
	if [ -n "${BASELINE_BIN:-}" ]; then
		read -r brps bp50 bp99 < <(run "http://127.0.0.1:$bx/v1/models")
	fi
	read -r prps pp50 pp99 < <(run "http://127.0.0.1:$px/v1/models")
	if [ -z "${BASELINE_BIN:-}" ]; then
		awk -v r="$r" -v a="$drps" -v b="$prps" -v c="$dp50" -v d="$pp50" -v e="$dp99" -v f="$pp99" \
			'BEGIN { printf "%d %.0f %.0f %.3f %.0f %.0f %.0f %.0f\n", r, a, b, b/a, c, d, e, f }'
	else
		awk -v r="$r" -v a="$drps" -v b="$prps" -v c="$dp50" -v d="$pp50" -v e="$dp99" -v f="$pp99" \
			-v g="$brps" -v h="$bp50" -v i="$bp99" \
			'BEGIN { printf "%d %.0f %.0f %.3f %.0f %.0f %.0f %.0f %.0f %.3f %.0f %.0f\n", r, a, b, b/a, c, d, e, f, g, g/a, h, i }'
	fi
done
if [ -n "${PROFILE:-}" ]; then
	curl -sf -o "$PROFILE" "http://$pprof_addr/debug/pprof/profile?seconds=10" &
	cpid=$!
	sleep 0.5
	taskset -c 0 wrk -t1 -c"$conns" -d11s "http://127.0.0.1:$px/v1/models" >/dev/null
	wait "$cpid"
	echo "CPU profile: $PROFILE (go tool pprof -top $bin $PROFILE)" >&2
fi
