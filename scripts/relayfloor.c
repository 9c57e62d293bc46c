// relayfloor: the round-trip latency floor of a userspace relay on this
// machine, with no network stack and no work at all. A client and a server
// process ping-pong one byte over pipes, either directly (two wake-ups per
// round trip, as over kernel lo) or through a third process that forwards
// every byte, as uloopd forwards every packet (four wake-ups). "spin" is the
// same relay polling without ever sleeping.
//
//   cc -O2 -o /tmp/relayfloor scripts/relayfloor.c
//   /tmp/relayfloor direct 20000; /tmp/relayfloor relay 20000; /tmp/relayfloor spin 20000
//
// See docs/performance.md, "What a relay costs before it does anything".
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

// keep closes every pipe end in all[8] but a and b (and c, d), so that each
// process sees EOF once the others exit.
static void keep(const int *all, int a, int b, int c, int d) {
	for (int i = 0; i < 8; i++)
		if (all[i] != a && all[i] != b && all[i] != c && all[i] != d) close(all[i]);
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv) {
	if (argc != 3 || (strcmp(argv[1], "direct") && strcmp(argv[1], "relay") && strcmp(argv[1], "spin"))) {
		fprintf(stderr, "usage: relayfloor direct|relay|spin ROUNDTRIPS\n");
		return 2;
	}
	int n = atoi(argv[2]), relay = strcmp(argv[1], "direct") != 0, spin = strcmp(argv[1], "spin") == 0;
	if (n < 100) n = 100;
	int fds[8], *c2r = fds, *r2s = fds + 2, *s2r = fds + 4, *r2c = fds + 6;
	if (pipe(c2r) || pipe(r2s) || pipe(s2r) || pipe(r2c)) return 1;
	int cw = c2r[1], cr = r2c[0];
	if (!relay) cw = r2s[1], cr = s2r[0];
	char c = 'x';
	if (fork() == 0) { // server: echo
		keep(fds, r2s[0], s2r[1], -1, -1);
		for (;;) {
			if (read(r2s[0], &c, 1) != 1) _exit(0);
			if (write(s2r[1], &c, 1) != 1) _exit(1);
		}
	}
	if (relay && fork() == 0) { // relay: one thread, poll(2), as an event loop does
		keep(fds, c2r[0], r2s[1], s2r[0], r2c[1]);
		struct pollfd p[2] = {{.fd = c2r[0], .events = POLLIN}, {.fd = s2r[0], .events = POLLIN}};
		for (;;) {
			while (poll(p, 2, spin ? 0 : -1) == 0)
				;
			if (p[0].revents) {
				if (read(c2r[0], &c, 1) != 1) _exit(0);
				if (write(r2s[1], &c, 1) != 1) _exit(1);
			}
			if (p[1].revents) {
				if (read(s2r[0], &c, 1) != 1) _exit(0);
				if (write(r2c[1], &c, 1) != 1) _exit(1);
			}
		}
	}
	keep(fds, cw, cr, -1, -1);
	double *rt = malloc(n * sizeof *rt);
	for (int i = 0; i < n; i++) {
		double t = now_us();
		if (write(cw, &c, 1) != 1 || read(cr, &c, 1) != 1) return 1;
		rt[i] = now_us() - t;
	}
	qsort(rt, n, sizeof *rt, cmp);
	printf("%-6s round trips %d: p50 %.1f us, p90 %.1f, p99 %.1f, p99.9 %.1f\n", argv[1], n,
	       rt[n / 2], rt[n * 9 / 10], rt[n * 99 / 100], rt[n * 999 / 1000]);
	return 0; // our pipe ends close: the children read EOF and exit
}
