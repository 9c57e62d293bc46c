//go:build linux

package loopback

import (
	"cmp"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/stack"
)

// Serve serves the control HTTP on ln until ln is closed: /metrics, /flows
// (control.Flow, a JSON array, sorted by protocol, server, client),
// /impair (the impairment rules: GET lists, POST adds, DELETE /impair/ID
// deletes) and /debug/pprof/. Besides the data path's counters, /metrics
// has the rules' (uloop_impair_*), the Go runtime's (go_goroutines, heap)
// and the process's (process_resident_memory_bytes, open fds), which leak
// tests watch. Who may
// connect is ln's business (uloopd checks credentials; `uloop run` relies on
// its socket's directory).
func Serve(ln net.Listener, st *stack.Stack, log *slog.Logger) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(st.Metrics(), st.Drops), newImpairCollector(st.Impair()),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/flows", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(flows(st))
	})
	impairHandlers(mux, st.Impair())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Warn("control socket stopped", "err", err)
	}
}

// flows is what /flows answers: the stack's flows, sorted so that repeated
// looks line up.
func flows(st *stack.Stack) []control.Flow {
	now := time.Now()
	out := []control.Flow{}
	for _, f := range st.Flows() {
		out = append(out, control.Flow{
			Proto: f.Proto, Client: f.Client.String(), Server: f.Server.String(),
			ToServer: f.ClientToServer, ToClient: f.ServerToClient,
			Age: now.Sub(f.Start).Seconds(), State: f.State,
		})
	}
	slices.SortFunc(out, func(a, b control.Flow) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Server, b.Server), cmp.Compare(a.Client, b.Client))
	})
	return out
}
