package impair

import (
	"container/heap"
	"sync"
	"time"
)

// Line is a delay line: it runs each packet's action at its due time, on
// one goroutine, so a delayed packet holds up nothing but the packets of
// its own flow, and packets of one flow leave in the order they came (as
// netem without reordering): a packet is never due before the one of its
// flow that came before it.
type Line struct {
	maxBytes int

	mu sync.Mutex
	// +checklocks:mu
	q queue
	// +checklocks:mu
	seq uint64
	// +checklocks:mu
	bytes int
	// last is the latest due time given to a flow, by FlowKey modulo its
	// length. Flows that share a slot keep each other's order too, which
	// only ever delays, never reorders.
	// +checklocks:mu
	last [4096]time.Time
	// +checklocks:mu
	running, closed bool
	wake            chan struct{}
	done            chan struct{}
}

// NewLine returns a delay line that holds at most maxBytes of packets.
func NewLine(maxBytes int) *Line {
	return &Line{maxBytes: maxBytes, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

type item struct {
	due     time.Time
	seq     uint64
	size    int
	run     func()
	release func()
}

type queue []item

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].due.Equal(q[j].due) {
		return q[i].seq < q[j].seq
	}
	return q[i].due.Before(q[j].due)
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(item)) }
func (q *queue) Pop() any {
	old := *q
	it := old[len(old)-1]
	old[len(old)-1] = item{}
	*q = old[:len(old)-1]
	return it
}

// Schedule runs run after wait, and no earlier than the last packet of the
// same flow (key); release instead if the line closes first. False if the
// line is full or closed: the caller drops the packet.
func (l *Line) Schedule(key uint32, wait time.Duration, size int, run, release func()) bool {
	now := time.Now()
	due := now.Add(wait)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.bytes+size > l.maxBytes {
		return false
	}
	slot := &l.last[key%uint32(len(l.last))]
	if due.Before(*slot) {
		due = *slot
	}
	*slot = due
	l.seq++
	heap.Push(&l.q, item{due: due, seq: l.seq, size: size, run: run, release: release})
	l.bytes += size
	if !l.running {
		l.running = true
		go l.loop()
	} else if l.q[0].seq == l.seq {
		// The new packet is the first due: the loop sleeps too long.
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// loop runs what is due, sleeps until the next, and ends when the line is
// empty: an idle line holds no goroutine.
func (l *Line) loop() {
	var timer *time.Timer
	for {
		l.mu.Lock()
		if l.closed || len(l.q) == 0 {
			l.running = false
			l.mu.Unlock()
			return
		}
		now := time.Now()
		if next := l.q[0].due; next.After(now) {
			l.mu.Unlock()
			if timer == nil {
				timer = time.NewTimer(next.Sub(now))
			} else {
				timer.Reset(next.Sub(now))
			}
			select {
			case <-timer.C:
			case <-l.wake:
				timer.Stop()
			case <-l.done:
				return
			}
			continue
		}
		it := heap.Pop(&l.q).(item)
		l.bytes -= it.size
		l.mu.Unlock()
		it.run()
	}
}

// Close releases every packet still waiting; later Schedules fail.
func (l *Line) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	close(l.done)
	q := l.q
	l.q = nil
	l.bytes = 0
	l.mu.Unlock()
	for _, it := range q {
		it.release()
	}
}
