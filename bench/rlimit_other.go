//go:build !unix

package bench

import "errors"

// RaiseFileLimit is not supported on this system: it returns an error
// and a zero FileLimit.
func RaiseFileLimit() (FileLimit, error) {
	return FileLimit{}, errors.New("open-file limits are not supported on this system")
}
