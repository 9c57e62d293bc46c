#!/usr/bin/env bash
# uloop soak: hours (or minutes) of mixed loopback traffic through one uloopd,
# watching its memory, goroutines and flows for drift.
#
#   host
#   └── netns uloop-soak-<pid>
#         uloopd (bin/uloopd --udp-timeout 5s) <-> ulo0 (TUN) carries all of 127/8
#         iperf3 -s :5201  <-- iperf3 -c, TCP, SOAK_IPERF_SECONDS at a time, back to back
#         iperf3 -s :5202  <-- iperf3 -c -u, 1400-byte datagrams at SOAK_UDP_RATE, back to back
#         churn.py: TCP echo :7001 and UDP echo :7002, and a client that opens
#                   short connections and flows to them (connect, 64 bytes, echo, close)
#         sampler (this script): every SOAK_INTERVAL, from @uloopd's metrics and /proc
#
# Environment: SOAK_DURATION (30m; s/m/h suffixes), SOAK_INTERVAL (60 s),
# SOAK_IPERF_SECONDS (300), SOAK_UDP_RATE (200M), SOAK_CHURN_RATE (200
# connections/s), ULOOPD (bin/uloopd). Prints a table of the samples and the memory at start and
# end; exits 1 if uloopd died, or any iperf3 run or churn connection failed.
# Everything it started is stopped, and the namespace deleted, on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "soak: run as root (make soak asks sudo for it)" >&2; exit 1; }

seconds() { # 90 | 90s | 3m | 2h -> seconds
	local v=$1
	case $v in
	*h) echo $((${v%h} * 3600)) ;;
	*m) echo $((${v%m} * 60)) ;;
	*s) echo "${v%s}" ;;
	*) echo "$v" ;;
	esac
}
duration=$(seconds "${SOAK_DURATION:-30m}")
interval=$(seconds "${SOAK_INTERVAL:-60}")
iperf_secs=$(seconds "${SOAK_IPERF_SECONDS:-300}")
udp_rate=${SOAK_UDP_RATE:-200M}
churn_rate=${SOAK_CHURN_RATE:-200}
uloopd=${ULOOPD:-bin/uloopd}
[ -x "$uloopd" ] || { echo "soak: $uloopd not built (make build)" >&2; exit 1; }
for cmd in iperf3 python3 curl; do
	command -v "$cmd" >/dev/null || { echo "soak: $cmd missing (make deps)" >&2; exit 1; }
done

ns="uloop-soak-$$"
work=$(mktemp -d /tmp/uloop-soak.XXXXXX)
daemon=""
pids=()
cleanup() {
	local rc=$? p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	# The iperf3 clients the loops started: every process in our namespace
	# is ours; uloopd gets SIGTERM below instead.
	for p in $(ip netns pids "$ns" 2>/dev/null); do
		[ "$p" = "$daemon" ] || kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ -n "$daemon" ] && kill -TERM "$daemon" 2>/dev/null; then
		wait "$daemon" 2>/dev/null || true
	fi
	ip netns del "$ns" 2>/dev/null || true
	if [ "$rc" -ne 0 ] && [ -s "$work/uloopd.log" ]; then
		echo "soak: uloopd log:" >&2
		tail -20 "$work/uloopd.log" >&2
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { ip netns exec "$ns" "$@"; }
metrics() { in_ns curl -s --max-time 5 --abstract-unix-socket uloopd http://uloopd/metrics; }
# metric NAME < metrics: the value of an unlabelled series, 0 if absent.
metric() { awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$daemon/status" 2>/dev/null || echo 0; }
now() { date +%s; }
alive() { kill -0 "$daemon" 2>/dev/null; }

ip netns add "$ns"
# Not through in_ns: $! of a backgrounded function is a subshell, and
# signalling it would orphan uloopd. ip netns exec execs uloopd in place.
ip netns exec "$ns" "$uloopd" --udp-timeout 5s 2>"$work/uloopd.log" &
daemon=$!
for _ in $(seq 100); do grep -q ready "$work/uloopd.log" && break; alive || break; sleep 0.1; done
grep -q ready "$work/uloopd.log" || { echo "soak: uloopd did not get ready" >&2; exit 1; }

# Servers; each is waited for by polling for its listening socket.
ip netns exec "$ns" iperf3 -s -p 5201 >"$work/iperf3-tcp-server.log" 2>&1 &
pids+=($!)
ip netns exec "$ns" iperf3 -s -p 5202 >"$work/iperf3-udp-server.log" 2>&1 &
pids+=($!)
cat >"$work/churn.py" <<'EOF'
# Echo servers on 127.0.0.1:7001 (TCP) and :7002 (UDP), and a client that
# opens short TCP connections and UDP flows to them at about RATE per second
# (each: connect, 64 bytes, their echo, close; every 4th is UDP). Every
# second it writes "ok failed" to the state file; the first failures go to
# stderr.
import os, socket, socketserver, sys, threading, time
rate, state = float(sys.argv[1]), sys.argv[2]
class TCPEcho(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(30)
        while data := self.request.recv(4096):
            self.request.sendall(data)
class UDPEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer.allow_reuse_address = True
tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 7001), TCPEcho)
udp = socketserver.UDPServer(("127.0.0.1", 7002), UDPEcho)
for s in (tcp, udp):
    threading.Thread(target=s.serve_forever, daemon=True).start()
ok = failed = i = 0
last = time.monotonic()
msg = b"soak churn " * 6
while True:
    i += 1
    try:
        if i % 4:
            with socket.create_connection(("127.0.0.1", 7001), timeout=5) as c:
                c.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    b = c.recv(4096)
                    if not b:
                        break
                    got += b
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.settimeout(5)
                c.connect(("127.0.0.1", 7002))
                c.send(msg)
                got = c.recv(4096)
        if got != msg:
            raise IOError("echo mismatch: %r" % got[:32])
        ok += 1
    except Exception as e:
        failed += 1
        if failed <= 10:
            print("churn: %s #%d: %r" % ("tcp" if i % 4 else "udp", i, e), file=sys.stderr, flush=True)
    t = time.monotonic()
    if t - last >= 1:
        with open(state + ".tmp", "w") as f:
            f.write("%d %d\n" % (ok, failed))
        os.replace(state + ".tmp", state)
        last = t
    time.sleep(max(0.0, 1 / rate - 0.0002))
EOF
echo "0 0" >"$work/churn.state"
ip netns exec "$ns" python3 "$work/churn.py" "$churn_rate" "$work/churn.state" 2>"$work/churn.err" &
pids+=($!)
for port in 5201 5202 7001; do
	for _ in $(seq 100); do [ -n "$(in_ns ss -Hltn "sport = :$port")" ] && break; sleep 0.1; done
	[ -n "$(in_ns ss -Hltn "sport = :$port")" ] || { echo "soak: nothing listens on $port" >&2; exit 1; }
done

start=$(now)
end=$((start + duration))

# iperf3 clients, back to back until the end; each run's JSON is kept.
iperf_loop() { # tcp|udp port args...
	local kind=$1 port=$2 n=0 left
	shift 2
	while left=$((end - $(now))) && [ "$left" -ge 5 ]; do
		n=$((n + 1))
		ip netns exec "$ns" iperf3 -c 127.0.0.1 -p "$port" -t "$((left < iperf_secs ? left : iperf_secs))" -J "$@" \
			>"$work/iperf3-$kind-$n.json" 2>"$work/iperf3-$kind-$n.err" || true
	done
}
iperf_loop tcp 5201 &
pids+=($!)
iperf_loop udp 5202 -u -b "$udp_rate" -l 1400 &
pids+=($!)

m=$(metrics)
rss0=$(rss_kib)
heap0=$(metric go_memstats_heap_inuse_bytes <<<"$m")
rx_prev=$(metric uloop_tun_rx_bytes_total <<<"$m")
conns_prev=$(metric uloop_tcp_connections_total <<<"$m")
t_prev=$start
samples="$work/samples"
printf '%8s %9s %8s %10s %8s %8s %9s %10s %10s\n' elapsed Gbit/s RSS_MiB heap_MiB gorout tcp_act udp_act new_tcp/s churn_fail >"$samples"
echo "soak: ${duration}s in $ns (uloopd pid $daemon), a sample every ${interval}s; RSS at start $((rss0 / 1024)) MiB"
died=0
while [ "$(now)" -lt "$end" ]; do
	sleep $((interval < end - $(now) ? interval : end - $(now)))
	alive || { died=1; echo "soak: uloopd died" >&2; break; }
	m=$(metrics || true)
	t=$(now)
	rx=$(metric uloop_tun_rx_bytes_total <<<"$m")
	conns=$(metric uloop_tcp_connections_total <<<"$m")
	read -r _ churn_failed <"$work/churn.state"
	# Prometheus writes large counters as 1.2e+10: only awk does the sums.
	awk -v e=$((t - start)) -v dt=$((t - t_prev)) -v rx="$rx" -v rx0="$rx_prev" -v rss="$(rss_kib)" \
		-v heap="$(metric go_memstats_heap_inuse_bytes <<<"$m")" -v g="$(metric go_goroutines <<<"$m")" \
		-v ta="$(metric uloop_tcp_connections_active <<<"$m")" -v ua="$(metric uloop_udp_flows_active <<<"$m")" \
		-v nc="$conns" -v nc0="$conns_prev" -v cf="$churn_failed" \
		'BEGIN { if (dt < 1) dt = 1
			printf "%7ds %9.2f %8.1f %10.1f %8d %8d %9d %10.0f %10d\n", e, (rx-rx0)*8/dt/1e9, rss/1024, heap/1048576, g, ta, ua, (nc-nc0)/dt, cf }' |
		tee -a "$samples"
	rx_prev=$rx conns_prev=$conns t_prev=$t
done

# Let the last iperf3 runs finish (they end by $end) and read the results.
for p in "${pids[@]:3}"; do wait "$p" 2>/dev/null || true; done
alive || died=1
m=$(metrics || true)
read -r churn_ok churn_failed <"$work/churn.state"
echo
echo "== samples (Gbit/s: bytes uloopd read from ulo0 in the interval; new_tcp/s: relayed TCP connections opened)"
cat "$samples"
echo
echo "== iperf3 runs"
iperf_failed=$(python3 - "$work" <<'EOF'
import glob, json, sys
failed = 0
for path in sorted(glob.glob(sys.argv[1] + "/iperf3-*-*.json")):
    name = path.rsplit("/", 1)[1][:-5]
    try:
        r = json.load(open(path))
    except ValueError:
        r = {"error": "no JSON output"}
    if r.get("error"):
        failed += 1
        print("  %-14s FAILED: %s" % (name, r["error"]), file=sys.stderr)
        continue
    end = r["end"]
    if r["start"]["test_start"]["protocol"] == "TCP":
        s = end["sum_received"]
        print("  %-14s %6.0f s  %6.2f Gbit/s received" % (name, s["seconds"], s["bits_per_second"] / 1e9), file=sys.stderr)
    else:
        s = end["sum"]
        print("  %-14s %6.0f s  %6.2f Gbit/s, %d of %d datagrams lost (%.3f%%)" % (name, s["seconds"], s["bits_per_second"] / 1e9,
              s["lost_packets"], s["packets"], s["lost_percent"]), file=sys.stderr)
print(failed)
EOF
)
echo
echo "== churn: $churn_ok short connections and flows echoed, $churn_failed failed"
[ -s "$work/churn.err" ] && head -10 "$work/churn.err"
echo
rss1=$(rss_kib)
echo "== uloopd memory: RSS $((rss0 / 1024)) MiB at start, $((rss1 / 1024)) MiB at end;" \
	"heap in use $(awk -v a="$heap0" 'BEGIN { printf "%.1f", a/1048576 }') MiB at start," \
	"$(awk -v a="$(metric go_memstats_heap_inuse_bytes <<<"$m")" 'BEGIN { printf "%.1f", a/1048576 }') MiB at end"
if [ "$died" -ne 0 ] || [ "$iperf_failed" -ne 0 ] || [ "$churn_failed" -ne 0 ]; then
	echo "soak: FAIL (uloopd died: $died, iperf3 runs failed: $iperf_failed, churn failures: $churn_failed)"
	exit 1
fi
echo "soak: PASS"
