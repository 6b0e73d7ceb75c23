//go:build !linux

package main

import (
	"io"
	"os"
)

// promptPassword is not supported here: pgtenant turns a terminal's echo
// off on Linux only.
func promptPassword(*os.File, io.Writer, string) (string, error) { return "", errNoTerminal }
