package bench

// FileLimit describes the open-file limit (RLIMIT_NOFILE) of this process.
type FileLimit struct {
	// Before is the soft limit RaiseFileLimit found; Soft and Hard are the
	// limits it left.
	Before, Soft, Hard uint64
}

// Raised reports whether RaiseFileLimit changed the soft limit.
func (l FileLimit) Raised() bool { return l.Soft > l.Before }
