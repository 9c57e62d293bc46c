//go:build linux

package loopback

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uloop/uloop/stack"
)

// collector exports stack.Metrics and gVisor's drop counts. The data path
// counts with plain atomics (no label lookups per packet); this reads them
// when scraped.
type collector struct {
	m     *stack.Metrics
	drops func() map[string]uint64
	descs []metricDesc
	// dropsDesc is labelled by reason.
	dropsDesc *prometheus.Desc
}

type metricDesc struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(*stack.Metrics) float64
}

func newCollector(m *stack.Metrics, drops func() map[string]uint64) *collector {
	c := &collector{m: m, drops: drops, dropsDesc: prometheus.NewDesc("uloop_stack_dropped_packets_total",
		"Packets the gVisor stack dropped, by reason (malformed, bad checksum, ...).", []string{"reason"}, nil)}
	add := func(name, help string, kind prometheus.ValueType, value func(*stack.Metrics) float64) {
		c.descs = append(c.descs, metricDesc{prometheus.NewDesc(name, help, nil, nil), kind, value})
	}
	counter := func(name, help string, value func(*stack.Metrics) uint64) {
		add(name, help, prometheus.CounterValue, func(m *stack.Metrics) float64 { return float64(value(m)) })
	}
	gauge := func(name, help string, value func(*stack.Metrics) int64) {
		add(name, help, prometheus.GaugeValue, func(m *stack.Metrics) float64 { return float64(value(m)) })
	}
	counter("uloop_tun_rx_packets_total", "Packets read from the TUN device.", func(m *stack.Metrics) uint64 { return m.TUNRxPackets.Load() })
	counter("uloop_tun_rx_bytes_total", "Bytes read from the TUN device.", func(m *stack.Metrics) uint64 { return m.TUNRxBytes.Load() })
	counter("uloop_tun_tx_packets_total", "Packets written to the TUN device.", func(m *stack.Metrics) uint64 { return m.TUNTxPackets.Load() })
	counter("uloop_tun_tx_bytes_total", "Bytes written to the TUN device.", func(m *stack.Metrics) uint64 { return m.TUNTxBytes.Load() })
	counter("uloop_tun_rx_checksum_trusted_total", "Packets read from the TUN device whose checksums the kernel vouched for (built by a local socket, or verified): not checksummed again.", func(m *stack.Metrics) uint64 { return m.TUNRxChecksumTrusted.Load() })
	counter("uloop_tun_write_errors_total", "Writes to the TUN device that failed.", func(m *stack.Metrics) uint64 { return m.TUNWriteErrors.Load() })
	counter("uloop_tcp_connections_total", "TCP connections relayed.", func(m *stack.Metrics) uint64 { return m.TCPConnections.Load() })
	gauge("uloop_tcp_connections_active", "TCP connections being relayed now.", func(m *stack.Metrics) int64 { return m.TCPConnectionsActive.Load() })
	counter("uloop_tcp_refused_total", "TCP connects answered with a reset because the local server refused or did not answer.", func(m *stack.Metrics) uint64 { return m.TCPRefused.Load() })
	counter("uloop_udp_flows_total", "UDP flows relayed.", func(m *stack.Metrics) uint64 { return m.UDPFlows.Load() })
	gauge("uloop_udp_flows_active", "UDP flows being relayed now.", func(m *stack.Metrics) int64 { return m.UDPFlowsActive.Load() })
	counter("uloop_udp_flows_expired_total", "UDP flows closed after the idle timeout.", func(m *stack.Metrics) uint64 { return m.UDPFlowsExpired.Load() })
	counter("uloop_icmp_echo_replies_total", "ICMP echo requests answered.", func(m *stack.Metrics) uint64 { return m.ICMPEchoReplies.Load() })
	counter("uloop_passthrough_packets_total", "Packets handed back to the kernel unchanged (other protocols, ICMP errors).", func(m *stack.Metrics) uint64 { return m.PassthroughPackets.Load() })
	counter("uloop_flows_rejected_total", "New TCP connections and UDP flows refused because --max-flows were relayed.", func(m *stack.Metrics) uint64 { return m.FlowsRejected.Load() })
	counter("uloop_tcp_acks_coalesced_total", "Pure ACKs from the stack that were never written because a later segment of the same flow carried them.", func(m *stack.Metrics) uint64 { return m.ACKsCoalesced.Load() })
	counter("uloop_tun_tx_udp_gso_datagrams_total", "UDP datagrams written to the TUN device as part of a UDP GSO packet (several datagrams of one flow in one write).", func(m *stack.Metrics) uint64 { return m.UDPGSODatagrams.Load() })
	counter("uloop_dropped_packets_total", "Packets dropped as malformed, not IPv4, or not relayable.", func(m *stack.Metrics) uint64 { return m.DroppedPackets.Load() })
	return c
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d.desc
	}
	ch <- c.dropsDesc
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, d := range c.descs {
		ch <- prometheus.MustNewConstMetric(d.desc, d.kind, d.value(c.m))
	}
	for reason, n := range c.drops() {
		ch <- prometheus.MustNewConstMetric(c.dropsDesc, prometheus.CounterValue, float64(n), reason)
	}
}
