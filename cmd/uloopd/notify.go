//go:build linux

package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/uloop/uloop/internal/loopback"
)

// notifyReady tells the service manager that uloopd is ready when it runs
// as a Type=notify unit; without NOTIFY_SOCKET it does nothing.
func notifyReady(log *slog.Logger) {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("telling systemd we are ready", "err", err)
	}
}

// superviseForSystemd runs while uloopd does when the unit has WatchdogSec=
// (systemd passes WATCHDOG_USEC): every half of that interval it probes the
// data path as the ready check does, and sends WATCHDOG=1 only when the
// probe got through. A stopped or wedged uloopd then stops sending, and
// systemd kills it (the kernel's lo takes over, as after any kill) and
// restarts it. Returns at once without a watchdog.
func superviseForSystemd(ctx context.Context, lb *loopback.Loopback, log *slog.Logger) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings", "err", err)
	}
	if interval <= 0 {
		return
	}
	every := interval / 2
	timeout := min(every, 5*time.Second)
	log.Info("systemd watchdog on", "interval", interval, "probe_every", every)
	tick := time.NewTicker(every)
	defer tick.Stop()
	healthy := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := lb.Probe(timeout)
		if err != nil {
			if healthy {
				log.Warn("data path does not answer; not telling systemd we are alive", "err", err)
			}
			healthy = false
			continue
		}
		if !healthy {
			log.Info("data path answers again")
		}
		healthy = true
		if _, err := daemon.SdNotify(false, daemon.SdNotifyWatchdog); err != nil {
			log.Warn("telling systemd we are alive", "err", err)
		}
	}
}
