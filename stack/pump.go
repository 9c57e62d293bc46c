package stack

import (
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/waiter"
)

// pumpLinger is how long a pump's goroutine waits for more to move before it
// goes away. A new goroutine starts with a small stack that gVisor's write
// path makes grow (copied, twice) before it gets anywhere, which made a
// round trip on a busy connection about half again as slow; lingering keeps
// one goroutine for a connection in use, and an idle one still holds none
// once this has passed.
const pumpLinger = 10 * time.Millisecond

// pump moves one direction of a relayed flow, from src's receive queue to
// the other endpoint, on a goroutine that exists only while there is
// something to move. An idle flow then holds no goroutine at all: with two
// goroutines per flow parked on their channels, their stacks were about
// half of the memory an idle relayed connection cost (RSS about 40 KiB per
// connection with 5,000 open).
//
// src's waiter queue calls NotifyEvent when data, a FIN or an error
// arrives; that only starts the goroutine (gVisor calls it with the
// endpoint's locks held, where reading would deadlock). The goroutine
// drains src until it would block, lingers a while for more (see
// pumpLinger), then goes away, and looks once more after saying so, so that
// an event that came in between is not lost.
type pump struct {
	src  conn
	pipe pipe

	state atomic.Int32 // pumpIdle, pumpRunning or pumpDone
	entry waiter.Entry
	// wake carries events to the goroutine while it lingers; it exists
	// only while the goroutine does (nil when idle), as the timer does.
	wake  atomic.Pointer[chan struct{}]
	timer *time.Timer
}

// A pipe is the work a pump does: one direction of a flow. The pipe types
// embed their pump and hold what they copy to, so a flow's pipes are a few
// plain structs rather than closures, channels and waiter entries: that is
// memory every idle connection holds.
type pipe interface {
	// drain reads src until it would block (false) or until this
	// direction of the flow has ended (true).
	drain() (ended bool)
	// finish runs once, on the pump's goroutine, after drain reported the
	// end.
	finish()
}

const (
	pumpIdle int32 = iota
	pumpRunning
	pumpDone
)

// pumpEvents are the events that give a pump something to do.
const pumpEvents = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr

// start registers for src's events and drains what is already there; pipe
// is what the pump runs.
func (p *pump) start(src conn, pipe pipe) {
	p.src, p.pipe = src, pipe
	p.entry.Init(p, pumpEvents)
	p.src.wq.EventRegister(&p.entry)
	p.kick()
}

// NotifyEvent implements waiter.EventListener.
func (p *pump) NotifyEvent(waiter.EventMask) { p.kick() }

// kick starts the goroutine, or wakes it if it is running.
func (p *pump) kick() {
	if p.state.CompareAndSwap(pumpIdle, pumpRunning) {
		go p.run()
		return
	}
	// Running, or just stopped: one that has stopped looks at src
	// again after the store that made it idle (see run).
	if wake := p.wake.Load(); wake != nil {
		select {
		case *wake <- struct{}{}:
		default:
		}
	}
}

func (p *pump) run() {
	wake := make(chan struct{}, 1)
	p.wake.Store(&wake)
	for {
		if p.pipe.drain() {
			p.state.Store(pumpDone)
			p.src.wq.EventUnregister(&p.entry)
			p.pipe.finish()
			return
		}
		if p.linger(wake) {
			continue
		}
		// The timer has fired; an idle pump keeps neither it nor the
		// channel.
		p.timer = nil
		p.wake.Store(nil)
		p.state.Store(pumpIdle)
		// An event between drain's last read and the store above found
		// the pump running and started nothing: look again.
		if p.src.ep.Readiness(pumpEvents) == 0 || !p.state.CompareAndSwap(pumpIdle, pumpRunning) {
			return
		}
		p.wake.Store(&wake)
	}
}

// linger waits up to pumpLinger for an event; false if none came.
func (p *pump) linger(wake chan struct{}) bool {
	if p.timer == nil {
		p.timer = time.NewTimer(pumpLinger)
	} else {
		p.timer.Reset(pumpLinger)
	}
	select {
	case <-wake:
		p.timer.Stop()
		return true
	case <-p.timer.C:
		return false
	}
}
