//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// pingResult is what one ping run printed.
type pingResult struct {
	Transmitted int            `json:"transmitted"`
	Received    int            `json:"received"`
	RTT         []float64      `json:"-"` // per echo, microseconds
	Summary     latencySummary `json:"rtt"`
}

var (
	// 64 bytes from 127.0.0.1: icmp_seq=7 ttl=64 time=0.041 ms
	pingEchoRE = regexp.MustCompile(`icmp_seq=\d+ .*time=([0-9.]+) ms`)
	// 1000 packets transmitted, 1000 received, 0% packet loss, time 62ms
	pingTotalsRE = regexp.MustCompile(`(?m)^(\d+) packets transmitted, (\d+) received`)
)

// parsePing reads iputils ping output: the time of every echo reply (printed
// in ms with three decimals, so a resolution of 1 µs) and the totals line.
// Duplicate replies ("DUP!") count as echoes too; on loopback there are none.
func parsePing(out []byte) (pingResult, error) {
	var r pingResult
	for line := range bytes.SplitSeq(out, []byte("\n")) {
		m := pingEchoRE.FindSubmatch(line)
		if m == nil {
			continue
		}
		ms, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			return r, fmt.Errorf("ping: bad time in %q", line)
		}
		r.RTT = append(r.RTT, ms*1000)
	}
	m := pingTotalsRE.FindSubmatch(out)
	if m == nil {
		return r, errors.New("ping: no totals line in its output")
	}
	r.Transmitted, _ = strconv.Atoi(string(m[1]))
	r.Received, _ = strconv.Atoi(string(m[2]))
	if len(r.RTT) == 0 {
		return r, errors.New("ping: no echo replies")
	}
	r.Summary = summarizeMicros(r.RTT)
	return r, nil
}

// runPing sends cfg.pings echo requests to 127.0.0.1 from inside n, one at a
// time: -A (adaptive) sends the next request once the previous reply is in,
// so each RTT is that of an idle path, not of a queue that -i 0 would build.
// Intervals this short need root.
func (h *harness) runPing(ctx context.Context, n *netNS) (pingResult, error) {
	deadline := 60 + h.cfg.pings/500 // seconds; ~20x the time it needs
	argv := []string{"ping", "-n", "-A", "-c", strconv.Itoa(h.cfg.pings), "-w", strconv.Itoa(deadline), "127.0.0.1"}
	cctx, cancel := context.WithTimeout(ctx, time.Duration(deadline+10)*time.Second)
	defer cancel()
	stdout, err := runIn(cctx, n, argv...)
	if err != nil {
		// ping exits 1 when replies are missing: still an error here,
		// a loopback loses nothing.
		return pingResult{}, fmt.Errorf("%w%s", err, lastLines(stdout, 3))
	}
	r, err := parsePing(stdout)
	if err != nil {
		return r, err
	}
	if r.Received != r.Transmitted || len(r.RTT) < r.Received {
		return r, fmt.Errorf("ping: %d sent, %d replies, %d times parsed", r.Transmitted, r.Received, len(r.RTT))
	}
	return r, nil
}

func lastLines(b []byte, n int) []byte {
	b = bytes.TrimRight(b, "\n")
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return b[i:]
			}
		}
	}
	return b
}
