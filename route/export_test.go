package route

// SetStepHooks sets, for package route_test, the hooks Apply and Undo call
// after each step (see afterStep); nil, nil removes them.
func SetStepHooks(step func(int) error, undoStep func()) {
	afterStep, afterUndoStep = step, undoStep
}
