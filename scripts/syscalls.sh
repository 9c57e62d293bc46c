#!/usr/bin/env bash
# uloopd's system calls per unit of work, counted by the kernel's syscall
# tracepoints with perf stat. Unlike timings, the counts hardly move with
# what else the machine is doing, so they show the effect of a change to the
# data path on a shared machine in one run: per 1-byte TCP round trip
# (scripts/pingpong, 10,000 of them), per TCP connection (connect, 1-byte
# request and response, close; uloop-bench's _tcp-crr for 3 s), per MB of
# one iperf3 stream (-n 1G). Each case in a fresh namespace. As root, with
# perf (linux-perf) installed and bin/ built (make build).
#
#   scripts/syscalls.sh [rr|udp-rr|crr|bulk]...     # default: all four
#   ULOOPD=/path/to/other/uloopd scripts/syscalls.sh rr
set -euo pipefail
cd "$(dirname "$0")/.."
uloopd=$(realpath "${ULOOPD:-bin/uloopd}")
bench=$(realpath bin/uloop-bench)
cases=("${@:-rr}")
[ $# -gt 0 ] || cases=(rr udp-rr crr bulk)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/pingpong" ./scripts/pingpong
events=raw_syscalls:sys_enter
for s in readv writev epoll_pwait futex nanosleep; do events+=,syscalls:sys_enter_$s; done

one() { # one CASE
	local ns=sysc-$$-$RANDOM pid perfpid echopid="" units unit
	ip netns add "$ns"
	"$uloopd" --netns "$ns" >"$tmp/log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do grep -q ready "$tmp/log" && break; sleep 0.05; done
	case $1 in
	rr | udp-rr)
		local udp=()
		[ "$1" = rr ] || udp=(-udp)
		ip netns exec "$ns" "$tmp/pingpong" "${udp[@]}" -n 1000 >/dev/null
		perf stat -x, -e "$events" -p "$pid" -o "$tmp/stat" &
		perfpid=$!
		sleep 0.3
		ip netns exec "$ns" "$tmp/pingpong" "${udp[@]}" -n 10000 >"$tmp/out"
		units=10000 unit="round trip"
		;;
	crr)
		ip netns exec "$ns" "$bench" _echo-server >"$tmp/echo" &
		echopid=$!
		for _ in $(seq 100); do [ -s "$tmp/echo" ] && break; sleep 0.05; done
		perf stat -x, -e "$events" -p "$pid" -o "$tmp/stat" &
		perfpid=$!
		sleep 0.3
		ip netns exec "$ns" "$bench" _tcp-crr -addr "127.0.0.1:$(head -1 "$tmp/echo")" -duration 3s >"$tmp/out"
		units=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connections"])' "$tmp/out")
		unit=connection
		;;
	bulk)
		ip netns exec "$ns" iperf3 -s -1 -D >/dev/null
		sleep 0.3
		perf stat -x, -e "$events" -p "$pid" -o "$tmp/stat" &
		perfpid=$!
		sleep 0.3
		ip netns exec "$ns" iperf3 -c 127.0.0.1 -n 1G >"$tmp/out"
		units=1024 unit=MB
		;;
	esac
	kill -INT "$perfpid"
	wait "$perfpid" 2>/dev/null || true
	awk -F, -v n="$units" -v c="$1" -v u="$unit" '
		/sys_enter/ { split($3, e, ":"); name = e[2]; sub("sys_enter_", "", name); if (name == "sys_enter") name = "all"; v[name] = $1 / n; order[++k] = name }
		END { printf "%-6s per %s:", c, u; for (i = 1; i <= k; i++) printf " %s %.2f", order[i], v[order[i]]; printf "\n" }' "$tmp/stat"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	[ -z "$echopid" ] || kill "$echopid" 2>/dev/null || true
	ip netns del "$ns"
}
for c in "${cases[@]}"; do one "$c"; done
