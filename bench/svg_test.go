package bench

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestHistogramCDF(t *testing.T) {
	var h Histogram
	if h.cdf() != nil {
		t.Fatal("CDF of an empty histogram")
	}
	// 1..10000 µs, evenly: the fraction at x ms is about x/10.
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	pts := h.cdf()
	if len(pts) < 100 || len(pts) > cdfSteps+2 {
		t.Fatalf("%d points, want between 100 and %d", len(pts), cdfSteps+2)
	}
	for i, p := range pts {
		if i > 0 && (p.Ms < pts[i-1].Ms || p.Fraction <= pts[i-1].Fraction) {
			t.Fatalf("point %d %+v after %+v: not ascending", i, p, pts[i-1])
		}
		if want := p.Ms / 10; math.Abs(p.Fraction-want) > 1.0/cdfSteps+0.005*want+1e-4 {
			t.Fatalf("point %d: fraction %v at %v ms, want about %v", i, p.Fraction, p.Ms, want)
		}
	}
	if last := pts[len(pts)-1]; last.Fraction != 1 || last.Ms != ms(h.Max()) {
		t.Errorf("last point %+v, want 1 at max %v", last, ms(h.Max()))
	}
	if first := pts[0]; first.Ms > 0.002 {
		t.Errorf("first point %+v, want the smallest value (1µs)", first)
	}

	var one Histogram
	one.Record(3 * time.Millisecond)
	if pts := one.cdf(); len(pts) != 1 || pts[0] != (CDFPoint{Ms: 3, Fraction: 1}) {
		t.Errorf("CDF of one value: %+v", pts)
	}
}

func TestLinearAxis(t *testing.T) {
	tests := []struct {
		name   string
		ax     axis
		lo, hi float64
		want   string
	}{
		{"connections", axis{fromZero: true, integer: true, format: fmtCount}, 0, 16, "0 5 10 15 20"},
		{"few connections", axis{fromZero: true, integer: true, format: fmtCount}, 0, 3, "0 1 2 3"},
		{"nothing", axis{fromZero: true, integer: true, format: fmtCount}, 0, 0, "0 1"},
		{"rate", axis{fromZero: true, format: fmtCount}, 0, 69647, "0 20k 40k 60k 80k"},
		{"seconds", axis{fromZero: true, format: num}, 0.2, 2.6, "0 1 2 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.ax.fit(tt.lo, tt.hi, 400, false)
			var got []string
			for _, tk := range s.ticks {
				got = append(got, tk.label)
			}
			if strings.Join(got, " ") != tt.want {
				t.Errorf("ticks %q, want %q", strings.Join(got, " "), tt.want)
			}
			if s.lo > tt.lo || s.hi < tt.hi {
				t.Errorf("range %v..%v does not hold %v..%v", s.lo, s.hi, tt.lo, tt.hi)
			}
		})
	}
}

func TestLogAxis(t *testing.T) {
	tests := []struct {
		name   string
		lo, hi float64
		want   string
	}{
		{"one decade", 2.1, 17, "2 ms 5 ms 10 ms 20 ms"},
		{"less than a decade", 2.1, 4.5, "2 ms 3 ms 4 ms 5 ms"},
		{"four decades", 0.012, 140, "10 µs 100 µs 1 ms 10 ms 100 ms"},
		{"ten decades", 1e-5, 1e5, "10 ns 1 µs 100 µs 10 ms 1 s 100 s"},
		{"one value", 3, 3, "2 ms 3 ms 4 ms 5 ms"},
	}
	ax := axis{log: true, format: fmtLatency}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ax.fit(tt.lo, tt.hi, 380, false)
			var got []string
			for _, tk := range s.ticks {
				got = append(got, tk.label)
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("ticks %q, want %q", g, tt.want)
			}
			lo, hi := math.Pow(10, s.lo), math.Pow(10, s.hi)
			if lo > tt.lo*(1+1e-9) || hi < tt.hi*(1-1e-9) {
				t.Errorf("range %v..%v does not hold %v..%v", lo, hi, tt.lo, tt.hi)
			}
			// Labels never overlap.
			s.p0, s.p1 = 0, 380
			for i := 1; i < len(s.ticks); i++ {
				a, b := s.ticks[i-1], s.ticks[i]
				if gap := s.at(b.v) - s.at(a.v); gap < float64(len(a.label)+len(b.label))*charW/2 {
					t.Errorf("labels %q and %q are %v apart", a.label, b.label, gap)
				}
			}
		})
	}
}

func TestFormats(t *testing.T) {
	tests := []struct{ got, want string }{
		{fmtLatency(0.00002), "20 ns"},
		{fmtLatency(0.01), "10 µs"},
		{fmtLatency(0.5), "500 µs"},
		{fmtLatency(1), "1 ms"},
		{fmtLatency(250), "250 ms"},
		{fmtLatency(2000), "2 s"},
		{fmtCount(15), "15"},
		{fmtCount(15000), "15k"},
		{fmtCount(2.5e6), "2.5M"},
		{fmtPercent(0.25), "25%"},
		{num(0.30000000000000004), "0.3"},
		{num(-0.0001), "0"},
		{truncate("abcdef", 4), "abc…"},
		{esc("a<b>\"&'\x01"), "a&lt;b&gt;&#34;&amp;&#39;\uFFFD"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
