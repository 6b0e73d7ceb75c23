package router

import (
	"fmt"
	"io"
	"log/slog"
)

// ParseLevel parses log.level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log.level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger makes the router's logger: text or JSON (log.format) to w, at
// a level (log.level) that can change later through the returned LevelVar
// (Options.Level, set by Reload).
func NewLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar, error) {
	l, err := ParseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	lv := new(slog.LevelVar)
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv, nil
}
