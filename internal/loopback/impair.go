//go:build linux

package loopback

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/uloop/uloop/control"
	"github.com/uloop/uloop/impair"
)

// impairHandlers serves the impairment rules on the control socket:
// GET /impair lists them with their counters, POST /impair adds the rule in
// the body, DELETE /impair/ID deletes one.
func impairHandlers(mux *http.ServeMux, tab *impair.Table) {
	mux.HandleFunc("GET /impair", func(w http.ResponseWriter, _ *http.Request) {
		out := []control.Impairment{}
		for _, r := range tab.Rules() {
			out = append(out, impairment(r))
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST /impair", func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(io.LimitReader(req.Body, 4096))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r, err := tab.Add(string(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, impairment(r))
	})
	mux.HandleFunc("DELETE /impair/{id}", func(w http.ResponseWriter, req *http.Request) {
		id, err := strconv.Atoi(req.PathValue("id"))
		if err != nil || !tab.Delete(id) {
			http.Error(w, "no impairment rule "+req.PathValue("id"), http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func impairment(r *impair.Rule) control.Impairment {
	c := &r.Counters
	return control.Impairment{
		ID: r.ID, Rule: r.Spec,
		Packets: c.Packets.Load(), Bytes: c.Bytes.Load(),
		Delayed: c.Delayed.Load(), Lost: c.Lost.Load(), RateDropped: c.RateDropped.Load(),
		Blackholed: c.Blackholed.Load(), Overflow: c.Overflow.Load(), Resets: c.Resets.Load(),
	}
}

// impairCollector exports each rule's counters, labelled by its id and
// text: uloop_impair_packets_total (matched), uloop_impair_bytes_total and
// uloop_impair_actions_total{action=delayed|lost|rate_dropped|blackholed|
// overflow|reset}. A deleted rule's series go away with it.
type impairCollector struct {
	tab                    *impair.Table
	packets, bytes, action *prometheus.Desc
}

func newImpairCollector(tab *impair.Table) *impairCollector {
	labels := []string{"id", "rule"}
	return &impairCollector{
		tab:     tab,
		packets: prometheus.NewDesc("uloop_impair_packets_total", "Packets an impairment rule matched.", labels, nil),
		bytes:   prometheus.NewDesc("uloop_impair_bytes_total", "Bytes of the packets an impairment rule matched.", labels, nil),
		action: prometheus.NewDesc("uloop_impair_actions_total",
			"What an impairment rule did: packets delayed, lost, dropped by its rate limit, blackholed, dropped because the delay line was full; TCP connections reset.",
			append(labels, "action"), nil),
	}
}

func (c *impairCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.action
}

func (c *impairCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.tab.Rules() {
		id := strconv.Itoa(r.ID)
		n := &r.Counters
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(n.Packets.Load()), id, r.Spec)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(n.Bytes.Load()), id, r.Spec)
		for _, a := range []struct {
			name string
			v    uint64
		}{
			{"delayed", n.Delayed.Load()}, {"lost", n.Lost.Load()}, {"rate_dropped", n.RateDropped.Load()},
			{"blackholed", n.Blackholed.Load()}, {"overflow", n.Overflow.Load()}, {"reset", n.Resets.Load()},
		} {
			ch <- prometheus.MustNewConstMetric(c.action, prometheus.CounterValue, float64(a.v), id, r.Spec, a.name)
		}
	}
}
