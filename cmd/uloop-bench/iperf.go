//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/uloop/uloop/netns"
)

// iperfReport is the part of iperf3's -J output the harness reads. Checked
// against iperf 3.12; the fields have the same names since 3.1.
type iperfReport struct {
	// Error is set, with a non-zero exit status, when the test failed.
	Error string `json:"error"`
	Start struct {
		TestStart struct {
			Protocol   string `json:"protocol"`
			NumStreams int    `json:"num_streams"`
			Blksize    int    `json:"blksize"`
			Reverse    int    `json:"reverse"`
		} `json:"test_start"`
	} `json:"start"`
	End struct {
		// TCP: what the sending side sent (with its retransmits) and
		// what the receiving side received, whichever direction -R
		// chose. UDP, since 3.11 or so: the same pair.
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
		// UDP only: the loss the receiver counted, against the
		// datagrams sent. Beware: in 3.12 its bits_per_second is the
		// rate sent, not received.
		Sum *iperfSum `json:"sum"`
	} `json:"end"`
}

type iperfSum struct {
	Seconds       float64  `json:"seconds"`
	Bytes         float64  `json:"bytes"`
	BitsPerSecond float64  `json:"bits_per_second"`
	Retransmits   *float64 `json:"retransmits"` // TCP sender only
	LostPercent   *float64 `json:"lost_percent"`
	LostPackets   *float64 `json:"lost_packets"`
	Packets       *float64 `json:"packets"`
}

// iperfFigures are the figures one iperf3 run contributes.
type iperfFigures struct {
	// ReceivedGbps is the rate the receiving side received, Gbit/s.
	ReceivedGbps float64
	// ReceivedBytes is what the receiving side received: the run's work.
	// ReceivedGbps is this over the receiver's time.
	ReceivedBytes float64
	// Retransmits (TCP) counts the sender's retransmitted segments.
	Retransmits float64
	// LostPercent (UDP) is the share of datagrams sent that the server
	// never received.
	LostPercent float64
}

// parseIperf reads iperf3's -J report.
func parseIperf(b []byte) (iperfFigures, error) {
	var r iperfReport
	if err := json.Unmarshal(b, &r); err != nil {
		return iperfFigures{}, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return iperfFigures{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	var f iperfFigures
	switch p := r.Start.TestStart.Protocol; p {
	case "TCP":
		if r.End.SumReceived == nil || r.End.SumSent == nil {
			return f, errors.New("iperf3 JSON: no end.sum_received or end.sum_sent")
		}
		f.ReceivedGbps = r.End.SumReceived.BitsPerSecond / 1e9
		f.ReceivedBytes = r.End.SumReceived.Bytes
		if r.End.SumSent.Retransmits != nil {
			f.Retransmits = *r.End.SumSent.Retransmits
		}
	case "UDP":
		s := r.End.Sum
		if s == nil || s.LostPercent == nil {
			return f, errors.New("iperf3 JSON: no end.sum.lost_percent")
		}
		f.LostPercent = *s.LostPercent
		switch {
		case r.End.SumReceived != nil:
			// In 3.12 sum_received.bytes is what arrived: the
			// datagrams received ((packets - lost_packets) x -l),
			// not those sent, and bits_per_second is it over the
			// receiver's time.
			f.ReceivedGbps = r.End.SumReceived.BitsPerSecond / 1e9
			f.ReceivedBytes = r.End.SumReceived.Bytes
		case s.Packets != nil && s.LostPackets != nil && s.Seconds > 0 && r.Start.TestStart.Blksize > 0:
			// Before sum_received existed for UDP: the datagrams
			// that arrived, over the receiver's time.
			f.ReceivedBytes = (*s.Packets - *s.LostPackets) * float64(r.Start.TestStart.Blksize)
			f.ReceivedGbps = f.ReceivedBytes * 8 / s.Seconds / 1e9
		default:
			return f, errors.New("iperf3 JSON: no received rate for UDP")
		}
	default:
		return f, fmt.Errorf("iperf3 JSON: unexpected protocol %q", p)
	}
	return f, nil
}

// tcpOutput is a TCP case's figures and work.
func (f iperfFigures) tcpOutput(raw json.RawMessage) runOutput {
	return runOutput{Values: map[string]float64{"gbps": f.ReceivedGbps, "retransmits": f.Retransmits}, Work: f.ReceivedBytes, Raw: raw}
}

// rawIperfEnd returns iperf3's "end" object (every stream's figures, CPU use,
// congestion control) to keep in the results file.
func rawIperfEnd(b []byte) json.RawMessage {
	var r struct {
		End json.RawMessage `json:"end"`
	}
	if json.Unmarshal(b, &r) != nil || len(r.End) == 0 {
		return nil
	}
	var c bytes.Buffer
	if json.Compact(&c, r.End) != nil {
		return nil
	}
	return c.Bytes()
}

// runIperf runs one iperf3 test in n: a one-shot server (`iperf3 -s -1`)
// started for this run alone, polled until it listens, then the client with
// clientArgs for the configured duration.
func (h *harness) runIperf(ctx context.Context, n *netNS, clientArgs []string) (iperfFigures, json.RawMessage, error) {
	return h.runIperfOn(ctx, n, "127.0.0.1", []string{"-B", "127.0.0.1"}, clientArgs)
}

// runIperf6 is runIperf over ::1, the server on [::] (as `iperf3 -s -6`
// listens by default), so that the client's connection to ::1 is what
// crosses uloop.
func (h *harness) runIperf6(ctx context.Context, n *netNS, clientArgs []string) (iperfFigures, json.RawMessage, error) {
	return h.runIperfOn(ctx, n, "::1", []string{"-6"}, append([]string{"-6"}, clientArgs...))
}

// runIperfOn runs iperf3's client against addr, the one-shot server
// started with serverArgs.
func (h *harness) runIperfOn(ctx context.Context, n *netNS, addr string, serverArgs, clientArgs []string) (iperfFigures, json.RawMessage, error) {
	port := h.nextPort()
	srvLog := &netns.Output{Max: 20}
	srv, err := startIn(ctx, n, srvLog, append(append([]string{"iperf3", "-s", "-1"}, serverArgs...), "-p", strconv.Itoa(port))...)
	if err != nil {
		return iperfFigures{}, nil, err
	}
	// The server exits by itself after its one test, unless the client
	// never reached it.
	defer srv.Stop(3 * time.Second)
	if err := srv.WaitListening(ctx, "tcp", port, 10*time.Second); err != nil {
		return iperfFigures{}, nil, fmt.Errorf("iperf3 server: %w\n%s", err, srvLog.Tail(10))
	}

	secs := int(h.cfg.duration.Round(time.Second) / time.Second)
	argv := append([]string{"iperf3", "-c", addr, "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs),
		"--connect-timeout", "5000", "-J"}, clientArgs...)
	limit := h.cfg.duration + 30*time.Second
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	stdout, runErr := runIn(cctx, n, argv...)
	// A failed test still prints JSON with its reason in "error" (and
	// iperf 3.12 may exit 0 all the same), so the JSON is read first.
	f, perr := parseIperf(stdout)
	switch {
	case cctx.Err() != nil && ctx.Err() == nil:
		return f, nil, fmt.Errorf("iperf3 client did not finish within %v", limit)
	case perr != nil && (runErr == nil || len(stdout) > 0):
		return f, nil, perr
	case runErr != nil:
		return f, nil, runErr
	}
	return f, rawIperfEnd(stdout), nil
}
