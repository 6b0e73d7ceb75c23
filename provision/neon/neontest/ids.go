package neontest

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"strings"
)

// Identifier shapes follow docs/neon-api.md §1: projects
// "<adjective>-<noun>-<8 digits>", branches "br-<adjective>-<noun>-<8
// lowercase alnum>", endpoints "ep-...", organisations "org-...-<8 digits>",
// operations UUIDs and passwords "npg_" + 12 alphanumerics.

var adjectives = []string{
	"aged", "ancient", "autumn", "billowing", "bitter", "black", "blue", "bold",
	"broad", "calm", "cool", "crimson", "curly", "damp", "dark", "dawn",
	"delicate", "divine", "dry", "empty", "falling", "fancy", "flat", "floral",
	"fragrant", "frosty", "gentle", "green", "hidden", "holy", "icy", "jolly",
	"late", "lingering", "little", "lively", "long", "lucky", "misty", "morning",
	"muddy", "mute", "nameless", "noisy", "odd", "old", "orange", "patient",
	"plain", "polished", "proud", "purple", "quiet", "rapid", "raspy", "red",
	"restless", "rough", "round", "royal", "shiny", "shrill", "shy", "silent",
	"small", "snowy", "soft", "solitary", "sparkling", "spring", "square", "steep",
	"still", "summer", "super", "sweet", "throbbing", "tight", "tiny", "twilight",
	"wandering", "weathered", "white", "wild", "winter", "wispy", "withered", "yellow",
	"young",
}

var nouns = []string{
	"art", "band", "bar", "base", "bird", "block", "boat", "bonus",
	"bread", "breeze", "brook", "bush", "butterfly", "cake", "cell", "cherry",
	"cloud", "credit", "darkness", "dawn", "dew", "disk", "dream", "dust",
	"feather", "field", "fire", "firefly", "flower", "fog", "forest", "frog",
	"frost", "glade", "glitter", "grass", "hall", "hat", "haze", "heart",
	"hill", "king", "lab", "lake", "leaf", "limit", "math", "meadow",
	"mode", "moon", "morning", "mountain", "mouse", "mud", "night", "paper",
	"pine", "poetry", "pond", "queen", "rain", "recipe", "resonance", "rice",
	"river", "salad", "scene", "sea", "shadow", "shape", "silence", "sky",
	"smoke", "snow", "snowflake", "sound", "star", "sun", "sunset", "surf",
	"term", "thunder", "tooth", "tree", "truth", "union", "unit", "violet",
	"voice", "water", "waterfall", "wave", "wildflower", "wind", "wood",
}

const (
	lowerAlnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	mixedAlnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	digits     = "0123456789"
)

// randString returns n characters drawn uniformly from alphabet, using
// crypto/rand (passwords come from here too).
func randString(alphabet string, n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	limit := 256 - 256%len(alphabet)
	var sb strings.Builder
	sb.Grow(n)
	for sb.Len() < n {
		for _, c := range b {
			if int(c) < limit && sb.Len() < n { // rejection sampling: no modulo bias
				sb.WriteByte(alphabet[int(c)%len(alphabet)])
			}
		}
		_, _ = rand.Read(b)
	}
	return sb.String()
}

func adjNoun() string {
	return adjectives[mrand.N(len(adjectives))] + "-" + nouns[mrand.N(len(nouns))]
}

func newProjectID() string  { return adjNoun() + "-" + randString(digits, 8) }
func newBranchID() string   { return "br-" + adjNoun() + "-" + randString(lowerAlnum, 8) }
func newEndpointID() string { return "ep-" + adjNoun() + "-" + randString(lowerAlnum, 8) }
func newOrgID() string      { return "org-" + adjNoun() + "-" + randString(digits, 8) }
func newPassword() string   { return "npg_" + randString(mixedAlnum, 12) }

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
