package impair

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Table is the live set of rules. Readers on the data path call Active,
// one atomic load that is nil while there are no rules; changes replace the
// whole list (copy on write), so a packet sees either the old rules or the
// new ones, and a running flow feels a change at its next packet.
type Table struct {
	active atomic.Pointer[[]*Rule]

	mu sync.Mutex
	// +checklocks:mu
	rules []*Rule
	// +checklocks:mu
	nextID int
	// +checklocks:mu
	watchers []func()
}

// Active returns the rules in force, in the order they act; nil when none.
// The slice must not be changed.
func (t *Table) Active() []*Rule {
	if t == nil {
		return nil
	}
	if p := t.active.Load(); p != nil {
		return *p
	}
	return nil
}

// Add parses spec and appends the rule; it returns the rule with its ID.
func (t *Table) Add(spec string) (*Rule, error) {
	r, err := Parse(spec)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.nextID++
	r.ID = t.nextID
	t.rules = append(slices.Clip(t.rules), r)
	t.publishLocked()
	return r, nil
}

// Delete removes the rule with id; false if there is none.
func (t *Table) Delete(id int) bool {
	t.mu.Lock()
	i := slices.IndexFunc(t.rules, func(r *Rule) bool { return r.ID == id })
	if i < 0 {
		t.mu.Unlock()
		return false
	}
	t.rules = slices.Delete(slices.Clone(t.rules), i, i+1)
	t.publishLocked()
	return true
}

// Rules returns the rules, in the order they act.
func (t *Table) Rules() []*Rule {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.rules)
}

// Watch registers fn to run after every change (on the changer's
// goroutine), so that what acts on flows rather than packets can look at
// the flows already running.
func (t *Table) Watch(fn func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.watchers = append(t.watchers, fn)
}

// publishLocked makes t.rules the active list, unlocks, and tells the
// watchers.
//
// +checklocks:t.mu
func (t *Table) publishLocked() {
	if len(t.rules) == 0 {
		t.active.Store(nil)
	} else {
		rules := t.rules
		t.active.Store(&rules)
	}
	watchers := slices.Clone(t.watchers)
	t.mu.Unlock()
	for _, fn := range watchers {
		fn()
	}
}
