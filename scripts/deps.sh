#!/usr/bin/env bash
# Installs the Debian packages that the demo, the namespace tests and the bench
# harness drive, if any is missing. Needs root (it is a no-op when all are there).
set -euo pipefail
need=()
for pair in iperf3:iperf3 ping:iputils-ping ip:iproute2 curl:curl nc:netcat-openbsd socat:socat python3:python3; do
	cmd=${pair%%:*} pkg=${pair#*:}
	command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing ${need[*]}; run as root to install them" >&2
	exit 0
fi
echo "deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
