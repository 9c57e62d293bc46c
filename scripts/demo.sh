#!/usr/bin/env bash
# uloop demo: one namespace whose loopback is carried by uloopd.
#
#   host
#   └── netns uloop-demo-<pid>
#         lo (up, keeps ::1)     ulo0 (TUN, MTU 65535) <-> uloopd (gVisor stack)
#         127.0.0.0/8 from local programs -> ulo0 -> uloopd -> ulo0 -> local programs
#
# Shows ping and an iperf3 run through uloopd, with the TUN counters that
# prove the path, then tears everything down (also on Ctrl-C or failure).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (make demo asks sudo for it)" >&2; exit 1; }

ns="uloop-demo-$$"
daemon=""
cleanup() {
	[ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

in_ns() { ip netns exec "$ns" "$@"; }
counters() { in_ns cat /sys/class/net/ulo0/statistics/rx_packets /sys/class/net/ulo0/statistics/tx_packets | paste -sd' '; }

ip netns add "$ns"
log=$(mktemp)
# Not through in_ns: $! of a backgrounded shell function is a subshell,
# and signalling it would orphan uloopd.
ip netns exec "$ns" bin/uloopd 2>"$log" &
daemon=$!
for _ in $(seq 100); do grep -q ready "$log" && break; sleep 0.1; done
grep -q ready "$log" || { cat "$log" >&2; echo "demo: uloopd did not get ready" >&2; exit 1; }
cat "$log"

echo; echo "== routing in $ns: 127/8 from local programs goes to ulo0"
in_ns ip rule show
in_ns ip route show table 127

echo; echo "== ping 127.0.0.1 and 127.9.8.7 (answered by uloopd's stack)"
before=$(counters)
in_ns ping -c 3 -i 0.2 127.0.0.1 | tail -2
in_ns ping -c 3 -i 0.2 127.9.8.7 | tail -2
echo "ulo0 rx/tx packets: $before -> $(counters)"

echo; echo "== iperf3 over 127.0.0.1, 5 s (through uloopd)"
in_ns iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
for _ in $(seq 50); do [ -n "$(in_ns ss -Hltn 'sport = :5201')" ] && break; sleep 0.1; done
in_ns iperf3 -c 127.0.0.1 -p 5201 -t 5 | tail -4
echo "ulo0 rx/tx packets: $(counters)"

echo; echo "== uloopd's own counters"
in_ns curl -s --abstract-unix-socket uloopd http://uloopd/metrics | grep '^uloop_' | grep -v ' 0$'

echo; echo "== stopping uloopd: routing restored"
kill -TERM "$daemon"; wait "$daemon" || true; daemon=""
tail -2 "$log"
in_ns ip rule show
rm -f "$log"
