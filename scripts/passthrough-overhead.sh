#!/usr/bin/env bash
# Pass-through overhead of the sidecar, measured the way a sidecar is deployed:
# with its own CPU. A trivial upstream (nginx, one worker, `return 200`) and
# the load generator (wrk, one thread, closed loop) share core 0; the proxy
# under test gets core 1 (`fusionrag serve` in pass-through, GOMAXPROCS=1).
# Direct and proxied rounds alternate in the same run; each line gives the
# throughput ratio against the round's direct run and the added p50/p99.
#
# Reference proxies, measured the same way on the same core when installed
# (REFERENCES, default "nginx haproxy"): nginx as a reverse proxy (one
# worker, upstream keepalive) and HAProxy (one thread, http-reuse always).
# They show what the machine allows a proxy hop at all: on a 2-core VM the
# hop's own syscalls and the loopback wake-ups of the peers on the other
# core cost more than nginx's whole answer, so no proxy comes near the
# direct rate there (see docs/passthrough.md).
#
# Without pinning, on a 2-core machine the proxy competes with the client and
# the upstream for the same cores in a CPU-saturated closed loop, and the
# ratio measures how much CPU a proxy hop costs (about 2x the upstream's
# per-request work), not whether the proxy keeps up: use
# `go test ./proxy -bench PassthroughOverhead` for that figure.
#
# Needs: wrk, nginx (Debian: apt-get install wrk nginx-light), taskset;
# haproxy for its reference line.
# Usage: scripts/passthrough-overhead.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Environment:
#   FUSIONRAG_BIN=path  measure this binary instead of building ./cmd/fusionrag
#   BASELINE_BIN=path   also measure this binary as target "baseline" (A/B in
#                       the same run)
#   REFERENCES=list     reference proxies to measure: any of nginx, haproxy
#                       ("" for none); missing ones are skipped with a note
#   PACE_MS=n           paced instead of saturated: each connection waits n ms
#                       (an integer, wrk's delay()) after each answer, so the
#                       offered load is about CONNECTIONS/(n ms + latency) and
#                       no target is CPU-bound: the added latency a hop costs
#                       at a load it carries, without the queueing of a
#                       saturated closed loop
#   CLIENT_CPUS=list    cores for wrk and the upstream (taskset -c list;
#                       default 0)
#   PROXY_CPUS=list     cores for the proxy under test and the reference
#                       proxies (default 1); the sidecar's GOMAXPROCS, nginx's
#                       workers and HAProxy's threads follow the number of
#                       cores, so on a larger machine (e.g. PROXY_CPUS=2-5)
#                       the proxies get the CPU to keep up with the upstream
#   PROFILE=file        after the rounds, write a 10 s CPU profile of the
#                       sidecar under the same load (FUSIONRAG_PPROF listener;
#                       read it with `go tool pprof -top BIN FILE`)
set -euo pipefail
rounds=${1:-3}
secs=${2:-10}
conns=${3:-32}
refs=${REFERENCES-nginx haproxy}
client_cpus=${CLIENT_CPUS:-0}
proxy_cpus=${PROXY_CPUS:-1}
nproxy=$(taskset -c "$proxy_cpus" nproc)
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cleanup() {
	kill $(jobs -p) 2>/dev/null || true
	for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { # $1 port, $2 name, $3 log
	for _ in $(seq 50); do curl -sf "http://127.0.0.1:$1/v1/models" >/dev/null && return; sleep 0.1; done
	echo "$2 did not start:" >&2
	cat "$3" >&2 || true
	exit 1
}
up=$(free_port)

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
taskset -c "$client_cpus" nginx -c "$work/nginx.conf" -p "$work"

# targets: "name port" lines, measured in this order each round.
targets=("direct $up")

bin=${FUSIONRAG_BIN:-}
if [ -z "$bin" ]; then
	(cd "$root" && go build -o "$work/fusionrag" ./cmd/fusionrag)
	bin=$work/fusionrag
fi
dbg=$(free_port)
start_sidecar() { # $1 name, $2 binary, $3 pprof address or ""
	local port
	port=$(free_port)
	FUSIONRAG_PPROF=$3 GOMAXPROCS=$nproxy taskset -c "$proxy_cpus" "$2" serve --upstream "http://127.0.0.1:$up" \
		--listen "127.0.0.1:$port" -fusion.disabled >"$work/$1.log" 2>&1 &
	wait_up "$port" "$1" "$work/$1.log"
	targets+=("$1 $port")
}
pprof_addr=""
[ -n "${PROFILE:-}" ] && pprof_addr=127.0.0.1:$dbg
start_sidecar fusionrag "$bin" "$pprof_addr"
px=${targets[1]#* }
[ -n "${BASELINE_BIN:-}" ] && start_sidecar baseline "$BASELINE_BIN" ""

for ref in $refs; do
	port=$(free_port)
	case $ref in
	nginx)
		cat >"$work/nginx-proxy.conf" <<NGINX
worker_processes $nproxy;
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream engine { server 127.0.0.1:$up; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$port;
    location / { proxy_pass http://engine; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
		taskset -c "$proxy_cpus" nginx -c "$work/nginx-proxy.conf" -p "$work"
		;;
	haproxy)
		if ! command -v haproxy >/dev/null; then
			echo "note: haproxy not installed (apt-get install haproxy): no haproxy reference" >&2
			continue
		fi
		cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread $nproxy
  maxconn 4096
  pidfile $work/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend front
  bind 127.0.0.1:$port
  default_backend engine
backend engine
  server engine 127.0.0.1:$up
HAPROXY
		taskset -c "$proxy_cpus" haproxy -D -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1
		;;
	*)
		echo "unknown reference proxy $ref (want nginx or haproxy)" >&2
		exit 2
		;;
	esac
	wait_up "$port" "$ref" "$work/$ref.log"
	targets+=("$ref $port")
done

pace=()
mode=saturated
if [ -n "${PACE_MS:-}" ]; then
	printf 'function delay() return %d end\n' "$PACE_MS" >"$work/pace.lua"
	pace=(-s "$work/pace.lua")
	mode="paced ($PACE_MS ms between requests on each connection)"
fi
run() { # $1 url -> "rps p50_us p99_us"
	taskset -c "$client_cpus" wrk -t1 -c"$conns" -d"${secs}s" --latency "${pace[@]}" "$1" | awk '
		function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1e6; return v }
		/^ +50%/ { p50 = us($2) } /^ +99%/ { p99 = us($2) } /^Requests\/sec/ { rps = $2 }
		END { printf "%s %s %s\n", rps, p50, p99 }'
}
echo "# $mode, $conns connections, $secs s per run; client and upstream on cores $client_cpus, proxies on $proxy_cpus ($nproxy)"
echo "# ratio and added latency against the round's direct run"
printf '%-5s %-9s %8s %6s %6s %6s %10s %10s\n' round target rps ratio p50_us p99_us +p50_us +p99_us
for r in $(seq "$rounds"); do
	for t in "${targets[@]}"; do
		name=${t% *}
		port=${t#* }
		read -r rps p50 p99 < <(run "http://127.0.0.1:$port/v1/models")
		if [ "$name" = direct ]; then
			drps=$rps dp50=$p50 dp99=$p99
		fi
		awk -v r="$r" -v n="$name" -v a="$rps" -v b="$p50" -v c="$p99" -v d="$drps" -v e="$dp50" -v f="$dp99" \
			'BEGIN { printf "%-5d %-9s %8.0f %6.3f %6.0f %6.0f %10.0f %10.0f\n", r, n, a, a/d, b, c, b-e, c-f }'
	done
done
if [ -n "${PROFILE:-}" ]; then
	curl -sf -o "$PROFILE" "http://$pprof_addr/debug/pprof/profile?seconds=10" &
	cpid=$!
	sleep 0.5
	taskset -c "$client_cpus" wrk -t1 -c"$conns" -d11s "http://127.0.0.1:$px/v1/models" >/dev/null
	wait "$cpid"
	echo "CPU profile: $PROFILE (go tool pprof -top $bin $PROFILE)" >&2
fi
