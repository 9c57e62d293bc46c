//go:build linux

// Command uloop runs a command on a private userspace loopback, and shows
// what uloop carries.
//
//	uloop run [flags] [--] CMD [ARGS...]   # CMD in a network namespace of its own whose 127.0.0.0/8 is uloop's
//	uloop status [--json] [--netns NAME]   # counters and flows of running sessions (and uloopd instances)
//	uloop impair list|add RULE|del ID      # change a running uloop's impairments
//
// `uloop run` needs no root where the system allows unprivileged user
// namespaces and /dev/net/tun is open to the user; see docs/usage.md.
package main

import (
	"fmt"
	"os"
)

// Exit statuses of uloop's own, as env(1) and similar wrappers use them, so
// that a script can tell them from CMD's: CMD's status is passed on as it
// is, 128+N when signal N ended it.
const (
	exitFailed     = 125 // uloop itself failed (setup, bad flags)
	exitCannotExec = 126 // CMD was found but could not be run
	exitNotFound   = 127 // CMD was not found
)

// innerCommand is the hidden subcommand that `uloop run` re-executes itself
// as, inside the new namespaces (see run.go).
const innerCommand = "run-inner"

// watchdogCommand is the hidden subcommand the inner process starts to
// supervise its data path (see watchdog.go).
const watchdogCommand = "run-watchdog"

const usage = `usage:
  uloop run [flags] [--] CMD [ARGS...]   run CMD with a private loopback carried by uloop
  uloop status [flags]                   show running uloop sessions: counters and flows
  uloop impair [flags] list|add|del      show or change a running uloop's impairments

"uloop run -h", "uloop status -h" and "uloop impair -h" list the flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch args := os.Args[2:]; os.Args[1] {
	case "run":
		os.Exit(runMain(args))
	case innerCommand:
		os.Exit(innerMain(args))
	case watchdogCommand:
		os.Exit(watchdogMain(args))
	case "status":
		os.Exit(statusMain(args))
	case "impair":
		os.Exit(impairMain(args))
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "uloop: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}
