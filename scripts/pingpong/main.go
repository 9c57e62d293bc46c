// Command pingpong makes N 1-byte round trips over one TCP connection on
// 127.0.0.1 (with -udp: N 1-byte datagrams and their echoes between two UDP
// sockets), client and server in this process, and prints p50/p99 and the
// total. scripts/cpu.sh and scripts/syscalls.sh run it through uloopd to
// measure CPU and system calls per round trip.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"
)

func main() {
	n := flag.Int("n", 20000, "round trips")
	udp := flag.Bool("udp", false, "UDP datagrams instead of a TCP connection")
	flag.Parse()
	var c io.ReadWriter
	var err error
	if *udp {
		c, err = udpPair()
	} else {
		c, err = tcpPair()
	}
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

// tcpPair returns the client side of a TCP connection whose server echoes
// every byte.
func tcpPair() (io.ReadWriter, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
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
	return net.Dial("tcp4", ln.Addr().String())
}

// udpPair returns a UDP socket connected to one that echoes every
// datagram. A datagram lost on the way fails the read after a second.
func udpPair() (io.ReadWriter, error) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	go func() {
		b := make([]byte, 64)
		for {
			m, a, err := srv.ReadFromUDP(b)
			if err != nil {
				return
			}
			srv.WriteToUDP(b[:m], a)
		}
	}()
	c, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return nil, err
	}
	return deadlineConn{c}, nil
}

// deadlineConn gives each Read a second.
type deadlineConn struct{ *net.UDPConn }

func (c deadlineConn) Read(b []byte) (int, error) {
	c.SetReadDeadline(time.Now().Add(time.Second))
	return c.UDPConn.Read(b)
}
