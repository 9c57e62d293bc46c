// Command pingpong makes N 1-byte round trips over one TCP connection on
// 127.0.0.1, client and server in this process, and prints p50/p99 and the
// total. scripts/cpu.sh runs it through uloopd to measure CPU per round trip.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"time"
)

func main() {
	n := flag.Int("n", 20000, "round trips")
	flag.Parse()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b := make([]byte, 1)
	lat := make([]time.Duration, *n)
	start := time.Now()
	for i := range lat {
		t := time.Now()
		c.Write(b)
		if _, err := c.Read(b); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		lat[i] = time.Since(t)
	}
	total := time.Since(start)
	slices.Sort(lat)
	fmt.Printf("n=%d total=%v p50=%.1fus p99=%.1fus\n", *n, total.Round(time.Millisecond), float64(lat[len(lat)/2].Nanoseconds())/1e3, float64(lat[len(lat)*99/100].Nanoseconds())/1e3)
}
