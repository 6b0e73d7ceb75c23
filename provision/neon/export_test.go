package neon

// Joins reports how many Create calls have joined or led a create flight,
// so tests can wait for a follower to join instead of sleeping.
func Joins(p *Provider) int64 { return p.joins.Load() }
