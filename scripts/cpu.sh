#!/usr/bin/env bash
# uloopd's CPU cost per unit of work, for each --procs given: CPU seconds per
# GB moved by one iperf3 stream (iperf3 -n 2G) and CPU microseconds per
# 1-byte TCP round trip (scripts/pingpong, 20,000 round trips), each run in
# a fresh namespace, the --procs values interleaved. As root.
#
#   scripts/cpu.sh [RUNS] [PROCS...]     # default: 3 runs of --procs 1 and 2
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}; shift || true
procs=("${@:-1}")
[ $# -gt 0 ] || procs=(1 2)
uloopd=$(realpath "${ULOOPD:-bin/uloopd}")
pingpong=$(mktemp -d)/pingpong
go build -o "$pingpong" ./scripts/pingpong
tk=$(getconf CLK_TCK)

one() { # one PROCS bulk|rr
	local ns=cpu-$$-$RANDOM log
	log=$(mktemp)
	ip netns add "$ns"
	"$uloopd" --netns "$ns" --procs "$1" >"$log" 2>&1 &
	local pid=$!
	for _ in $(seq 100); do grep -q ready "$log" && break; sleep 0.05; done
	cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
	if [ "$2" = bulk ]; then
		ip netns exec "$ns" iperf3 -s -1 -D >/dev/null; sleep 0.3
		local a b rate
		a=$(cpu); rate=$(ip netns exec "$ns" iperf3 -c 127.0.0.1 -n 2G | awk '/receiver/{print $7}'); b=$(cpu)
		echo "procs=$1 bulk cpu_s_per_GB=$(echo "($b-$a)/$tk/2" | bc -l | cut -c1-5) gbit_s=$rate"
	else
		ip netns exec "$ns" "$pingpong" -n 2000 >/dev/null
		local a b out
		a=$(cpu); out=$(ip netns exec "$ns" "$pingpong" -n 20000); b=$(cpu)
		echo "procs=$1 rr cpu_us_per_rt=$(echo "($b-$a)*1000000/$tk/20000" | bc -l | cut -c1-6) $out"
	fi
	kill "$pid"; wait "$pid" 2>/dev/null || true
	ip netns del "$ns"; rm -f "$log"
}
for _ in $(seq "$runs"); do
	for p in "${procs[@]}"; do one "$p" bulk; one "$p" rr; done
done
