#!/usr/bin/env bash
# Installs the Debian packages that the demo, the namespace tests and the bench
# harness drive, if any is missing. Runs as the invoking user and uses sudo for
# apt-get only (directly as root); a no-op when all are there.
set -euo pipefail
need=()
for pair in iperf3:iperf3 ping:iputils-ping ip:iproute2 curl:curl nc:netcat-openbsd socat:socat python3:python3; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=()
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 || { echo "deps: missing ${need[*]}; install them as root (no sudo here)" >&2; exit 1; }
	sudo=(sudo)
fi
echo "deps: installing ${need[*]}" >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
