//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/netns"
)

// status is what `uloop status` shows of one running uloop: a `uloop run`
// session or a uloopd.
type status struct {
	Kind    string   `json:"kind"`              // "run" or "uloopd"
	PID     int      `json:"pid,omitempty"`     // of the `uloop run` process
	Command []string `json:"command,omitempty"` // of the `uloop run` process
	Netns   string   `json:"netns,omitempty"`   // uloopd's namespace
	Socket  string   `json:"socket"`
	// Counters are the uloop_* metrics without labels, by name.
	Counters map[string]float64 `json:"counters,omitempty"`
	// Drops are the packets the stack dropped, by reason (only reasons
	// that counted any).
	Drops map[string]float64 `json:"drops,omitempty"`
	Flows []control.Flow     `json:"flows"`
	// Impairments are the impairment rules in force and their counters.
	Impairments []control.Impairment `json:"impairments,omitempty"`
	Error       string               `json:"error,omitempty"`
}

const statusTimeout = 2 * time.Second

func statusMain(args []string) int {
	fs := flag.NewFlagSet("uloop status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON: an array with one object per uloop found")
	pid := fs.Int("pid", 0, "show only the `uloop run` session of this PID")
	nsName := fs.String("netns", "", "show only the uloopd in this named network namespace (/run/netns/NAME; needs root)")
	watch := fs.Duration("watch", 0, "show again every this long, until interrupted (e.g. 1s)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uloop status [flags]\n\n"+
			"Shows the counters and the relayed flows of your running `uloop run` sessions,\n"+
			"and, as root, of every uloopd in this or a named network namespace.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil || fs.NArg() > 0 {
		return 2
	}
	for {
		found, err := collect(*pid, *nsName)
		if *watch > 0 {
			fmt.Print("\033[H\033[2J") // clear the terminal
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "uloop status: %v\n", err)
			return 1
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			enc.Encode(found)
		} else {
			printStatus(os.Stdout, found)
		}
		if *watch <= 0 {
			if (*pid != 0 || *nsName != "") && (len(found) == 0 || found[0].Error != "") {
				return 1
			}
			return 0
		}
		time.Sleep(*watch)
	}
}

// collect reads every uloop asked for.
func collect(pid int, nsName string) ([]status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*statusTimeout)
	defer cancel()
	var found []status
	if nsName == "" {
		sessions, err := findSessions()
		if err != nil {
			return nil, err
		}
		for _, s := range sessions {
			if pid != 0 && s.pid != pid {
				continue
			}
			st := status{Kind: "run", PID: s.pid, Command: cmdline(s.pid), Socket: s.socket}
			st.read(ctx, control.NewPath(s.socket, statusTimeout))
			found = append(found, st)
		}
		if pid != 0 {
			if len(found) == 0 {
				return nil, fmt.Errorf("no uloop run session of PID %d in %s", pid, sessionDir())
			}
			return found, nil
		}
	}
	if os.Geteuid() != 0 {
		if nsName != "" {
			return nil, errors.New("--netns needs root: uloopd's control socket is root's, inside its namespace")
		}
		return found, nil
	}
	names := []string{nsName}
	if nsName == "" {
		names = append([]string{""}, namedNamespaces()...)
	}
	for _, name := range names {
		st, ok := readUloopd(ctx, name)
		if ok || nsName != "" {
			found = append(found, st)
		}
	}
	return found, nil
}

// namedNamespaces lists the names in /run/netns.
func namedNamespaces() []string {
	entries, _ := os.ReadDir(netns.Dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// readUloopd reads the uloopd of the named namespace ("": this one). ok is
// false if none runs there (nothing listens on its control socket).
func readUloopd(ctx context.Context, name string) (st status, ok bool) {
	st = status{Kind: "uloopd", Netns: name, Socket: control.Socket}
	var ns *netns.Namespace
	if name != "" {
		var err error
		if ns, err = netns.Open(name); err != nil {
			st.Error = err.Error()
			return st, false
		}
		defer ns.Close()
	} else {
		st.Netns = "(this namespace)"
	}
	st.read(ctx, control.New(ns, statusTimeout))
	return st, !strings.Contains(st.Error, syscall.ECONNREFUSED.Error())
}

// read fills in the counters, drops and flows from c; a failure is recorded
// in Error.
func (st *status) read(ctx context.Context, c *control.Client) {
	m, err := c.Metrics(ctx)
	if err == nil {
		st.Flows, err = c.Flows(ctx)
		if err != nil && strings.Contains(err.Error(), "404 Not Found") {
			err = nil // a uloopd from before /flows: counters only
		}
	}
	if err == nil {
		st.Impairments, err = c.Impairments(ctx)
		if err != nil && strings.Contains(err.Error(), "404 Not Found") {
			err = nil // a uloop from before impairments
		}
	}
	if err != nil {
		st.Error = err.Error()
		return
	}
	st.Counters, st.Drops = map[string]float64{}, map[string]float64{}
	for name, f := range m {
		if !strings.HasPrefix(name, "uloop_") {
			continue
		}
		for _, s := range f.GetMetric() {
			v := s.GetCounter().GetValue() + s.GetGauge().GetValue() + s.GetUntyped().GetValue()
			switch {
			case len(s.GetLabel()) == 0:
				st.Counters[name] = v
			case name == "uloop_stack_dropped_packets_total" && v != 0:
				for _, l := range s.GetLabel() {
					if l.GetName() == "reason" {
						st.Drops[l.GetValue()] = v
					}
				}
			}
		}
	}
}

func printStatus(w io.Writer, found []status) {
	if len(found) == 0 {
		fmt.Fprintf(w, "no uloop running (sessions of uloop run are looked for in %s)\n", sessionDir())
		return
	}
	for i, st := range found {
		if i > 0 {
			fmt.Fprintln(w)
		}
		switch st.Kind {
		case "run":
			fmt.Fprintf(w, "uloop run, pid %d: %s\n", st.PID, strings.Join(st.Command, " "))
		default:
			fmt.Fprintf(w, "uloopd in %s\n", st.Netns)
		}
		fmt.Fprintf(w, "  socket  %s\n", st.Socket)
		if st.Error != "" {
			fmt.Fprintf(w, "  error   %s\n", st.Error)
			continue
		}
		c := func(name string) string { return fmt.Sprint(int64(st.Counters["uloop_"+name])) }
		b := func(name string) string { return bytesString(uint64(st.Counters["uloop_"+name])) }
		fmt.Fprintf(w, "  tun     in %s packets, %s; out %s packets, %s; %s write errors\n",
			c("tun_rx_packets_total"), b("tun_rx_bytes_total"), c("tun_tx_packets_total"), b("tun_tx_bytes_total"), c("tun_write_errors_total"))
		fmt.Fprintf(w, "  tcp     %s active, %s relayed, %s refused\n",
			c("tcp_connections_active"), c("tcp_connections_total"), c("tcp_refused_total"))
		fmt.Fprintf(w, "  udp     %s active, %s relayed, %s expired\n",
			c("udp_flows_active"), c("udp_flows_total"), c("udp_flows_expired_total"))
		fmt.Fprintf(w, "  other   %s echo replies, %s passed back to the kernel, %s flows refused at --max-flows\n",
			c("icmp_echo_replies_total"), c("passthrough_packets_total"), c("flows_rejected_total"))
		drops := []string{"malformed " + c("dropped_packets_total")}
		for _, reason := range slices.Sorted(maps.Keys(st.Drops)) {
			drops = append(drops, fmt.Sprintf("%s %d", reason, int64(st.Drops[reason])))
		}
		fmt.Fprintf(w, "  drops   %s\n", strings.Join(drops, ", "))
		if len(st.Impairments) > 0 {
			fmt.Fprintln(w, "  impairments")
			printImpairments(w, "  ", st.Impairments)
		}
		if len(st.Flows) == 0 {
			fmt.Fprintln(w, "  no flows")
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PROTO\tCLIENT\tSERVER\tTO SERVER\tTO CLIENT\tAGE\tSTATE")
		for _, f := range st.Flows {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Proto, f.Client, f.Server,
				bytesString(f.ToServer), bytesString(f.ToClient), time.Duration(f.Age*float64(time.Second)).Round(time.Second), f.State)
		}
		tw.Flush()
	}
}

// bytesString is n in B, KiB, MiB or GiB.
func bytesString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 2 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMG"[i])
}
