//go:build linux

package control

import (
	"context"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/uloop/uloop/netns"
)

// TestClient serves metrics on @uloopd in a namespace of its own, as uloopd
// does, and reads them back through the client.
func TestClient(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	ns, err := netns.Create("ulo-ctltest")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Delete()
	var l net.Listener
	if err := ns.Do(func() (err error) { l, err = net.Listen("unix", Socket); return err }); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	drops := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "uloop_stack_dropped_packets_total"}, []string{"reason"})
	active := prometheus.NewGauge(prometheus.GaugeOpts{Name: "uloop_tcp_connections_active"})
	reg.MustRegister(drops, active)
	drops.WithLabelValues("tcp_checksum").Add(2)
	drops.WithLabelValues("udp_checksum").Add(3)
	active.Set(7)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()

	ctx := context.Background()
	c := New(ns, 5*time.Second)
	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"uloop_stack_dropped_packets_total", nil, 5},
		{"uloop_stack_dropped_packets_total", []string{"reason", "udp_checksum"}, 3},
		{"uloop_stack_dropped_packets_total", []string{"reason", "nothing_dropped"}, 0},
		{"uloop_tcp_connections_active", nil, 7},
	} {
		if got, err := m.Value(tc.name, tc.labels...); err != nil || got != tc.want {
			t.Errorf("Value(%s, %q): got %v, %v; want %v", tc.name, tc.labels, got, err, tc.want)
		}
	}
	if _, err := m.Value("uloop_renamed_total"); err == nil {
		t.Error("Value of a metric not exported: got no error, want one")
	}
	if got, want := m.Summary(), "uloop_stack_dropped_packets_total 5\nuloop_tcp_connections_active 7\n"; got != want {
		t.Errorf("Summary: got %q, want %q", got, want)
	}
	if _, err := c.Get(ctx, "/nothing"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Get of a missing path: got %v, want a 404 error", err)
	}
}
