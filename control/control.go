//go:build linux

// Package control is the client of uloop's control sockets: uloopd's, the
// abstract unix socket @uloopd in the daemon's network namespace, and each
// `uloop run` session's, a unix socket file. Both serve HTTP: GET /metrics
// in the Prometheus exposition format, /flows (JSON, Flow), /debug/pprof/.
// The tests, the benchmark and `uloop status` read uloop through it.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/uloop/uloop/netns"
)

// Socket is the control socket's address. An abstract socket belongs to a
// network namespace, so a client must dial it from inside the daemon's.
const Socket = "@uloopd"

// A Client talks to the uloopd of one network namespace. Its methods may be
// called from any goroutine.
type Client struct {
	ns   *netns.Namespace
	addr string // the socket: Socket, or a file's path
	http *http.Client
}

// New returns a client for the daemon in namespace ns (nil: the caller's
// own). Every request has at most timeout, and a connection of its own.
func New(ns *netns.Namespace, timeout time.Duration) *Client {
	return newClient(ns, Socket, timeout)
}

// NewPath returns a client for the control socket file at path, such as a
// `uloop run` session's. A socket file is found through the file system, so
// it is dialed from the caller's own namespace.
func NewPath(path string, timeout time.Duration) *Client {
	return newClient(nil, path, timeout)
}

func newClient(ns *netns.Namespace, addr string, timeout time.Duration) *Client {
	c := &Client{ns: ns, addr: addr}
	c.http = &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return c.dial(ctx) },
	}}
	return c
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	if c.ns == nil {
		return d.DialContext(ctx, "unix", c.addr)
	}
	var conn net.Conn
	err := c.ns.Do(func() (err error) {
		conn, err = d.DialContext(ctx, "unix", c.addr)
		return err
	})
	return conn, err
}

// Get fetches path (e.g. "/debug/pprof/heap?gc=1") and returns the body of
// a 200 response; any other status is an error.
func (c *Client) Get(ctx context.Context, path string) ([]byte, error) {
	resp, err := c.get(ctx, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://uloopd"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.where(), err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("%s: GET %s: %s: %s", c.where(), path, resp.Status, b)
	}
	return resp, nil
}

func (c *Client) where() string {
	switch {
	case c.addr != Socket:
		return "control socket " + c.addr
	case c.ns == nil:
		return "control socket " + Socket + " in this namespace"
	}
	return "control socket " + Socket + " in namespace " + c.ns.String()
}

// Flow is one relayed TCP connection or UDP flow, as GET /flows lists them
// (a JSON array).
type Flow struct {
	Proto  string `json:"proto"`  // "tcp" or "udp"
	Client string `json:"client"` // address:port
	Server string `json:"server"`
	// Bytes relayed from the client to the server, and back.
	ToServer uint64  `json:"bytes_to_server"`
	ToClient uint64  `json:"bytes_to_client"`
	Age      float64 `json:"age_seconds"`
	// State is the TCP state of uloop's end facing the client; "" for UDP.
	State string `json:"state,omitempty"`
}

// Flows fetches the flows being relayed.
func (c *Client) Flows(ctx context.Context) ([]Flow, error) {
	b, err := c.Get(ctx, "/flows")
	if err != nil {
		return nil, err
	}
	var flows []Flow
	if err := json.Unmarshal(b, &flows); err != nil {
		return nil, fmt.Errorf("parsing /flows: %w", err)
	}
	return flows, nil
}

// Metrics is one scrape of /metrics: the metric families by name.
type Metrics map[string]*dto.MetricFamily

// Metrics scrapes /metrics, in whichever exposition format the daemon
// answers with.
func (c *Client) Metrics(ctx context.Context) (Metrics, error) {
	resp, err := c.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := Metrics{}
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	for {
		f := &dto.MetricFamily{}
		if err := dec.Decode(f); errors.Is(err, io.EOF) {
			return m, nil
		} else if err != nil {
			return nil, fmt.Errorf("parsing /metrics: %w", err)
		}
		m[f.GetName()] = f
	}
}

// Value is the sum of the values of metric name's series that carry every
// label given as name, value pairs: the counter itself if it has no labels,
// Value("uloop_stack_dropped_packets_total") over all reasons,
// Value("uloop_stack_dropped_packets_total", "reason", "tcp_checksum") one.
// A metric the daemon does not export is an error, never 0: a renamed
// counter must not read as one that did not move. Counters, gauges and
// untyped metrics have values; others are an error.
func (m Metrics) Value(name string, labels ...string) (float64, error) {
	f, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("metric %s not exported (uloop_* metrics: %v)", name, m.names("uloop_"))
	}
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("metric %s: labels %q are not name, value pairs", name, labels)
	}
	var sum float64
	for _, s := range f.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.GetCounter().GetValue()
		case s.Gauge != nil:
			sum += s.GetGauge().GetValue()
		case s.Untyped != nil:
			sum += s.GetUntyped().GetValue()
		default:
			return 0, fmt.Errorf("metric %s is a %v, which has no single value", name, f.GetType())
		}
	}
	return sum, nil
}

func hasLabels(s *dto.Metric, pairs []string) bool {
	for i := 0; i < len(pairs); i += 2 {
		found := false
		for _, l := range s.GetLabel() {
			found = found || (l.GetName() == pairs[i] && l.GetValue() == pairs[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// names lists the families whose names start with prefix, sorted.
func (m Metrics) names(prefix string) []string {
	var names []string
	for _, n := range slices.Sorted(maps.Keys(m)) {
		if strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	return names
}

// Summary is one line per uloop_* metric, "name value" (summed over its
// series), sorted: for a failure message.
func (m Metrics) Summary() string {
	var b []byte
	for _, n := range m.names("uloop_") {
		v, _ := m.Value(n)
		b = fmt.Appendf(b, "%s %v\n", n, v)
	}
	return string(b)
}
