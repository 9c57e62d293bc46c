//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/netns"
)

const impairUsage = `usage:
  uloop impair [flags] list              the rules in force and what each did
  uloop impair [flags] add RULE          add a rule, e.g. 'tcp:5432 delay=80ms loss=1%%'
  uloop impair [flags] del ID            delete the rule with ID (as list shows it)

Changes a running uloop's impairments; they act on running flows at their
next packet. Without --pid or --netns it talks to the one uloop running
(your only uloop run session, or as root the uloopd of this namespace).
RULE: PROTO[:PORT[-PORT]] [addr=A[-B]|addr=PREFIX] [dir=to-server|to-client|both]
      [delay=D] [jitter=D] [corr=P%%] [loss=P%%] [rate=R] [burst=SIZE] [queue=D]
      [blackhole] [reset-after=SIZE|D]       (docs/usage.md has recipes)

flags:
`

func impairMain(args []string) int {
	fs := flag.NewFlagSet("uloop impair", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "the `uloop run` session of this PID")
	nsName := fs.String("netns", "", "the uloopd in this named network namespace (needs root)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), impairUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return 0
	} else if err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "uloop impair: %v\n", err)
		return 1
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		fs.Usage()
		return 2
	}
	c, closeNS, err := impairTarget(*pid, *nsName)
	if err != nil {
		return fail(err)
	}
	defer closeNS()
	ctx, cancel := context.WithTimeout(context.Background(), 2*statusTimeout)
	defer cancel()
	switch cmd[0] {
	case "list", "ls":
		rules, err := c.Impairments(ctx)
		if err != nil {
			return fail(err)
		}
		printImpairments(os.Stdout, "", rules)
	case "add":
		if len(cmd) < 2 {
			fs.Usage()
			return 2
		}
		r, err := c.AddImpairment(ctx, strings.Join(cmd[1:], " "))
		if err != nil {
			return fail(err)
		}
		fmt.Printf("%d\t%s\n", r.ID, r.Rule)
	case "del", "delete", "rm":
		if len(cmd) != 2 {
			fs.Usage()
			return 2
		}
		id, err := strconv.Atoi(cmd[1])
		if err != nil {
			return fail(fmt.Errorf("bad rule ID %q: a number, as list shows it", cmd[1]))
		}
		if err := c.DeleteImpairment(ctx, id); err != nil {
			return fail(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "uloop impair: unknown command %q\n", cmd[0])
		fs.Usage()
		return 2
	}
	return 0
}

// impairTarget finds the uloop to talk to, as status finds them: the
// session of pid, the uloopd of namespace nsName, or else the only one
// running.
func impairTarget(pid int, nsName string) (*control.Client, func(), error) {
	none := func() {}
	if nsName != "" {
		ns, err := netns.Open(nsName)
		if err != nil {
			return nil, none, err
		}
		return control.New(ns, statusTimeout), func() { ns.Close() }, nil
	}
	sessions, err := findSessions()
	if err != nil {
		return nil, none, err
	}
	if pid != 0 {
		for _, s := range sessions {
			if s.pid == pid {
				return control.NewPath(s.socket, statusTimeout), none, nil
			}
		}
		return nil, none, fmt.Errorf("no uloop run session of PID %d in %s", pid, sessionDir())
	}
	var found []string
	var c *control.Client
	for _, s := range sessions {
		found = append(found, fmt.Sprintf("uloop run --pid %d", s.pid))
		c = control.NewPath(s.socket, statusTimeout)
	}
	if os.Geteuid() == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
		defer cancel()
		if st, ok := readUloopd(ctx, ""); ok && st.Error == "" {
			found = append(found, "uloopd in this namespace")
			c = control.New(nil, statusTimeout)
		}
	}
	switch len(found) {
	case 0:
		return nil, none, errors.New("no uloop running (see uloop status)")
	case 1:
		return c, none, nil
	}
	return nil, none, fmt.Errorf("more than one uloop running (%s): choose with --pid or --netns", strings.Join(found, ", "))
}

// printImpairments prints rules as a table, each line indented by indent.
func printImpairments(w io.Writer, indent string, rules []control.Impairment) {
	if len(rules) == 0 {
		fmt.Fprintf(w, "%sno impairments\n", indent)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%sID\tRULE\tPACKETS\tDELAYED\tLOST\tRATE-DROPPED\tBLACKHOLED\tRESETS\n", indent)
	for _, r := range rules {
		fmt.Fprintf(tw, "%s%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", indent, r.ID, r.Rule, r.Packets, r.Delayed, r.Lost, r.RateDropped+r.Overflow, r.Blackholed, r.Resets)
	}
	tw.Flush()
}
