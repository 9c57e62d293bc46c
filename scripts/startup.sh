#!/usr/bin/env bash
# Startup cost of `uloop run`: the median wall time of N runs (default 50)
# of `uloop run -- true` and, for comparison, of `unshare -rn true`, the
# kernel-loopback equivalent (and `pasta -- true` if pasta is installed).
# With RUN_AS=USER (as root) both also run as that unprivileged user.
#
#   scripts/startup.sh [N]            # ULOOP=bin/uloop by default
set -euo pipefail
n=${1:-50}
uloop=$(realpath "${ULOOP:-bin/uloop}")

# median CMD...: median, min and max wall time of n runs, in ms.
median() {
	for _ in $(seq "$n"); do
		s=$(date +%s%N)
		"$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
		e=$(date +%s%N)
		echo $(((e - s) / 1000))
	done | sort -n | awk '{a[NR] = $1} END {printf "%7.1f ms median (min %.1f, max %.1f)", a[int((NR + 1) / 2)] / 1000, a[1] / 1000, a[NR] / 1000}'
}

as=()
if [ -n "${RUN_AS:-}" ]; then
	as=(setpriv --reuid "$RUN_AS" --regid "$RUN_AS" --init-groups)
fi
printf '%-34s %s\n' "uloop run -- true" "$(median "${as[@]}" "$uloop" run -- true)"
printf '%-34s %s\n' "unshare -rn true" "$(median "${as[@]}" unshare -rn true)"
if command -v pasta >/dev/null; then
	printf '%-34s %s\n' "pasta -- true" "$(median "${as[@]}" pasta --config-net -- true)"
fi
