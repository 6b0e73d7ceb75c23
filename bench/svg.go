package bench

import (
	"html/template"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file draws the plots of the HTML report as inline SVG: line charts
// with a linear or logarithmic x axis, tick marks, grid, axis titles and a
// legend. Everything is laid out in a fixed viewBox, so the output depends
// only on the data; every piece of text goes through esc.

// point is a data point, in axis units.
type point struct{ x, y float64 }

// lineStyle is how a target's lines are drawn, the same in every plot.
type lineStyle struct {
	color string
	dash  string // stroke-dasharray, "" for solid
}

// palette is the Okabe-Ito colour set (distinguishable with the common
// colour-vision deficiencies), minus its yellow, which is unreadable on
// white. Targets past its end reuse it with dashes.
var palette = []string{"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"}

// styleOf returns the style of the i-th target (from 0).
func styleOf(i int) lineStyle {
	st := lineStyle{color: palette[i%len(palette)]}
	switch (i / len(palette)) % 3 {
	case 1:
		st.dash = "7 4"
	case 2:
		st.dash = "2 3"
	}
	return st
}

// series is one target's line in a chart: parts are drawn as separate
// subpaths of a single path (a timeline's rounds).
type series struct {
	label string
	style lineStyle
	parts [][]point
}

func (s *series) empty() bool {
	for _, p := range s.parts {
		if len(p) > 0 {
			return false
		}
	}
	return true
}

// axis is an axis of a chart. The range is fitted to the data (a
// logarithmic one to whole decades; a linear one from min, or from 0, up
// to a round number), or set by fixed.
type axis struct {
	title  string
	log    bool
	format func(float64) string // tick labels
	// integer keeps linear tick steps at 1 or more.
	integer bool
	// fixed, when set, are the ticks, the first and last being the range.
	fixed []float64
	// fromZero starts a linear axis at 0 rather than at the smallest value.
	fromZero bool
}

// ref is a labelled horizontal reference line, such as p99 on a CDF.
type ref struct {
	y     float64
	label string
}

// chart is one plot.
type chart struct {
	title  string
	x, y   axis
	series []series
	// steps draws each series as a step function (a CDF): from each point
	// horizontally to the next x, then vertically to its y. The first point
	// rises from the bottom of the plot.
	steps bool
	refs  []ref
	// empty is shown instead of lines when no series has a point.
	empty string
}

// Geometry of every chart, in viewBox units (about pixels).
const (
	chartW       = 560.0
	chartH       = 330.0
	marginLeft   = 66.0
	marginRight  = 38.0
	marginBottom = 46.0
	titleY       = 22.0
	legendTop    = 40.0
	legendRowH   = 17.0
	legendGapX   = 18.0
	legendSwatch = 22.0
	charW        = 6.7 // average width of a 12px character, for layout
	legendMax    = 30  // characters of a label shown in a legend
)

// tick is a tick mark on an axis; labelled ones get a label and a grid
// line, the others a short mark and a faint grid line.
type tick struct {
	v     float64
	label string
}

// scale maps an axis's range onto pixels.
type scale struct {
	lo, hi   float64 // range, in axis units (log10 of them on a log axis)
	p0, p1   float64 // pixels of lo and hi
	log      bool
	ticks    []tick
	minors   []float64
	rangeMin float64 // the low end in data units, where a log axis draws values <= 0
}

func (s *scale) at(v float64) float64 {
	if s.log {
		if v <= 0 {
			v = s.rangeMin
		}
		v = math.Log10(v)
	}
	f := 0.0
	if s.hi > s.lo {
		f = (v - s.lo) / (s.hi - s.lo)
	}
	f = min(max(f, 0), 1)
	return s.p0 + f*(s.p1-s.p0)
}

// fit computes a's range and ticks for values between lo and hi, on an
// axis px long; vertical axes need less room between labels.
func (a *axis) fit(lo, hi, px float64, vertical bool) scale {
	if len(a.fixed) > 0 {
		s := scale{lo: a.fixed[0], hi: a.fixed[len(a.fixed)-1], rangeMin: a.fixed[0]}
		for _, v := range a.fixed {
			s.ticks = append(s.ticks, tick{v, a.format(v)})
		}
		return s
	}
	if a.log {
		return a.fitLog(lo, hi, px, vertical)
	}
	if a.fromZero {
		lo = min(lo, 0)
	}
	if !(hi > lo) {
		hi = lo + 1
	}
	step := niceStep((hi - lo) / 5)
	if a.integer {
		step = max(step, 1)
	}
	first := math.Floor(lo/step) * step
	last := math.Ceil(hi/step-1e-9) * step
	s := scale{lo: first, hi: last, rangeMin: first}
	for i := 0; ; i++ {
		v := first + float64(i)*step
		if v > last+step/2 {
			break
		}
		s.ticks = append(s.ticks, tick{v, a.format(v)})
	}
	return s
}

// niceStep returns the smallest of 1, 2 or 5 times a power of ten that is
// at least raw.
func niceStep(raw float64) float64 {
	if !(raw > 0) {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw*(1-1e-9) {
			return m * mag
		}
	}
	return 10 * mag
}

// fitLog fits a logarithmic axis around lo..hi (lo > 0), from and to 1,
// 2 or 5 times a power of ten, on an axis px long. Ticks are at 1 to 9
// times each power of ten; of those, it labels as many as fit without
// crowding: all of them, or 1, 2 and 5 times each power of ten, or the
// powers of ten, or every other one.
func (a *axis) fitLog(lo, hi, px float64, vertical bool) scale {
	if !(lo > 0) {
		lo = hi
	}
	if !(lo > 0) {
		lo, hi = 1, 1
	}
	lo, hi = snap125(lo, false), snap125(hi, true)
	if hi <= lo*(1+1e-9) {
		hi = snap125(lo*1.01, true)
	}
	s := scale{lo: math.Log10(lo), hi: math.Log10(hi), log: true, rangeMin: lo}
	e0 := math.Floor(s.lo + 1e-9)
	type cand struct {
		v     float64
		m, e  int
		label string
	}
	var cands []cand
decades:
	for e := e0; ; e++ {
		d := math.Pow(10, e)
		for m := 1; m <= 9; m++ {
			v := float64(m) * d
			if v < lo*(1-1e-9) {
				continue
			}
			if v > hi*(1+1e-9) {
				break decades
			}
			cands = append(cands, cand{v, m, int(e - e0), a.format(v)})
		}
	}
	levels := []func(c cand) bool{
		func(c cand) bool { return true },
		func(c cand) bool { return c.m == 1 || c.m == 2 || c.m == 5 },
		func(c cand) bool { return c.m == 1 },
		func(c cand) bool { return c.m == 1 && c.e%2 == 0 },
	}
	pos := func(v float64) float64 { return px * (math.Log10(v) - s.lo) / (s.hi - s.lo) }
	room := func(a, b string) float64 {
		if vertical {
			return 16
		}
		return float64(utf8.RuneCountInString(a)+utf8.RuneCountInString(b))*charW/2 + 10
	}
	for li, keep := range levels {
		var ticks []tick
		fits := true
		for _, c := range cands {
			if !keep(c) {
				continue
			}
			if n := len(ticks); n > 0 && pos(c.v)-pos(ticks[n-1].v) < room(ticks[n-1].label, c.label) {
				fits = false
			}
			ticks = append(ticks, tick{c.v, c.label})
		}
		if fits || li == len(levels)-1 {
			s.ticks = ticks
			for _, c := range cands {
				if !keep(c) {
					s.minors = append(s.minors, c.v)
				}
			}
			return s
		}
	}
	return s // not reached
}

// snap125 rounds v > 0 down (or up) to 1, 2 or 5 times a power of ten.
func snap125(v float64, up bool) float64 {
	d := math.Pow(10, math.Floor(math.Log10(v)+1e-9))
	if up {
		for _, m := range []float64{1, 2, 5} {
			if m*d >= v*(1-1e-9) {
				return m * d
			}
		}
		return 10 * d
	}
	for _, m := range []float64{5, 2, 1} {
		if m*d <= v*(1+1e-9) {
			return m * d
		}
	}
	return d
}

// svg returns the chart as an SVG element.
func (c *chart) svg() template.HTML {
	var b svgBuilder
	legend, legendRows := c.legendLayout()
	top := legendTop + float64(legendRows)*legendRowH + 8
	plotL, plotR, plotB := marginLeft, chartW-marginRight, chartH-marginBottom

	// Ranges from the data.
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.series {
		for _, part := range s.parts {
			for _, p := range part {
				if c.x.log && p.x <= 0 {
					continue
				}
				xlo, xhi = min(xlo, p.x), max(xhi, p.x)
				ylo, yhi = min(ylo, p.y), max(yhi, p.y)
			}
		}
	}
	hasData := !math.IsInf(xlo, 0)
	if !hasData {
		xlo, xhi, ylo, yhi = 0, 1, 0, 1
		if c.x.log {
			xlo, xhi = 1, 10
		}
	}
	xs, ys := c.x.fit(xlo, xhi, plotR-plotL, false), c.y.fit(ylo, yhi, plotB-top, true)
	xs.p0, xs.p1 = plotL, plotR
	ys.p0, ys.p1 = plotB, top

	b.open("svg", "xmlns", "http://www.w3.org/2000/svg", "viewBox", "0 0 "+num(chartW)+" "+num(chartH),
		"role", "img", "font-family", "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "font-size", "12")
	b.elem("title", c.title)
	b.void("rect", "x", "0", "y", "0", "width", num(chartW), "height", num(chartH), "fill", "#ffffff")
	b.elem("text", c.title, "x", num(plotL), "y", num(titleY), "font-size", "14", "font-weight", "600", "fill", "#1f2328")

	// Grid, ticks and tick labels.
	b.open("g", "class", "grid", "stroke-width", "1")
	for _, v := range xs.minors {
		x := xs.at(v)
		b.void("line", "x1", num(x), "y1", num(top), "x2", num(x), "y2", num(plotB), "stroke", "#f0f2f4")
	}
	for _, t := range xs.ticks {
		x := xs.at(t.v)
		b.void("line", "x1", num(x), "y1", num(top), "x2", num(x), "y2", num(plotB), "stroke", "#dde1e5")
	}
	for _, t := range ys.ticks {
		y := ys.at(t.v)
		b.void("line", "x1", num(plotL), "y1", num(y), "x2", num(plotR), "y2", num(y), "stroke", "#dde1e5")
	}
	b.close("g")
	b.open("g", "class", "axes", "stroke", "#57606a", "stroke-width", "1")
	b.void("line", "x1", num(plotL), "y1", num(plotB), "x2", num(plotR), "y2", num(plotB))
	b.void("line", "x1", num(plotL), "y1", num(top), "x2", num(plotL), "y2", num(plotB))
	for _, v := range xs.minors {
		x := xs.at(v)
		b.void("line", "x1", num(x), "y1", num(plotB), "x2", num(x), "y2", num(plotB+3))
	}
	for _, t := range xs.ticks {
		x := xs.at(t.v)
		b.void("line", "x1", num(x), "y1", num(plotB), "x2", num(x), "y2", num(plotB+5))
	}
	for _, t := range ys.ticks {
		y := ys.at(t.v)
		b.void("line", "x1", num(plotL-5), "y1", num(y), "x2", num(plotL), "y2", num(y))
	}
	b.close("g")
	b.open("g", "class", "ticks", "fill", "#57606a")
	for _, t := range xs.ticks {
		b.elem("text", t.label, "x", num(xs.at(t.v)), "y", num(plotB+18), "text-anchor", "middle")
	}
	for _, t := range ys.ticks {
		b.elem("text", t.label, "x", num(plotL-8), "y", num(ys.at(t.v)+4), "text-anchor", "end")
	}
	b.close("g")
	b.open("g", "class", "axis-titles", "fill", "#1f2328")
	b.elem("text", c.x.title, "x", num((plotL+plotR)/2), "y", num(chartH-8), "text-anchor", "middle")
	ymid := (top + plotB) / 2
	b.elem("text", c.y.title, "x", num(16), "y", num(ymid), "text-anchor", "middle",
		"transform", "rotate(-90 16 "+num(ymid)+")")
	b.close("g")

	// Reference lines.
	if hasData && len(c.refs) > 0 {
		b.open("g", "class", "refs", "fill", "#57606a", "font-size", "11")
		for _, r := range c.refs {
			y := ys.at(r.y)
			b.void("line", "x1", num(plotL), "y1", num(y), "x2", num(plotR), "y2", num(y),
				"stroke", "#8c959f", "stroke-width", "1", "stroke-dasharray", "3 3")
			b.elem("text", r.label, "x", num(plotR+4), "y", num(y+4))
		}
		b.close("g")
	}

	// The series, the first target on top.
	if hasData {
		b.open("g", "class", "series", "fill", "none", "stroke-width", "2", "stroke-linejoin", "round", "stroke-linecap", "round")
		for i := len(c.series) - 1; i >= 0; i-- {
			s := &c.series[i]
			if s.empty() {
				continue
			}
			attrs := []string{"class", "line", "data-target", s.label, "d", c.pathData(s, &xs, &ys), "stroke", s.style.color}
			if s.style.dash != "" {
				attrs = append(attrs, "stroke-dasharray", s.style.dash)
			}
			b.open("path", attrs...)
			b.elem("title", s.label)
			b.close("path")
		}
		b.close("g")
	} else if c.empty != "" {
		b.elem("text", c.empty, "x", num((plotL+plotR)/2), "y", num((top+plotB)/2), "text-anchor", "middle", "fill", "#57606a")
	}

	// Legend.
	b.open("g", "class", "legend", "fill", "#1f2328")
	for _, e := range legend {
		s := &c.series[e.i]
		y := legendTop + float64(e.row)*legendRowH
		attrs := []string{"x1", num(e.x), "y1", num(y - 4), "x2", num(e.x + legendSwatch), "y2", num(y - 4),
			"stroke", s.style.color, "stroke-width", "3"}
		if s.style.dash != "" {
			attrs = append(attrs, "stroke-dasharray", s.style.dash)
		}
		b.void("line", attrs...)
		text := truncate(s.label, legendMax)
		if s.empty() {
			text += " (no data)"
		}
		b.open("text", "x", num(e.x+legendSwatch+5), "y", num(y))
		b.text(text)
		if text != s.label {
			b.elem("title", s.label)
		}
		b.close("text")
	}
	b.close("g")
	b.close("svg")
	return template.HTML(b.String()) // built by svgBuilder, which escapes all text
}

// legendEntry places series i's legend entry.
type legendEntry struct {
	i, row int
	x      float64
}

// legendLayout flows the legend entries left to right under the title,
// wrapping at the chart's width.
func (c *chart) legendLayout() ([]legendEntry, int) {
	var es []legendEntry
	x, row := marginLeft, 0
	for i := range c.series {
		text := truncate(c.series[i].label, legendMax)
		if c.series[i].empty() {
			text += " (no data)"
		}
		w := legendSwatch + 5 + float64(utf8.RuneCountInString(text))*charW
		if x > marginLeft && x+w > chartW-marginRight {
			x, row = marginLeft, row+1
		}
		es = append(es, legendEntry{i: i, row: row, x: x})
		x += w + legendGapX
	}
	if len(es) == 0 {
		return nil, 0
	}
	return es, row + 1
}

// pathData returns the d attribute of s: one subpath per part.
func (c *chart) pathData(s *series, xs, ys *scale) string {
	var b strings.Builder
	for _, part := range s.parts {
		if len(part) == 0 {
			continue
		}
		if c.steps {
			b.WriteString("M" + num(xs.at(part[0].x)) + " " + num(ys.at(0)))
			for i, p := range part {
				if i > 0 {
					b.WriteString("H" + num(xs.at(p.x)))
				}
				b.WriteString("V" + num(ys.at(p.y)))
			}
			continue
		}
		for i, p := range part {
			if i == 0 {
				b.WriteString("M")
			} else {
				b.WriteString("L")
			}
			b.WriteString(num(xs.at(p.x)) + " " + num(ys.at(p.y)))
		}
		if len(part) == 1 {
			b.WriteString("h0.01") // a dot, with round caps
		}
	}
	return b.String()
}

// svgBuilder writes SVG elements, escaping every attribute value and text.
type svgBuilder struct{ strings.Builder }

func (b *svgBuilder) start(name string, attrs []string) {
	b.WriteString("<" + name)
	for i := 0; i+1 < len(attrs); i += 2 {
		b.WriteString(" " + attrs[i] + `="` + esc(attrs[i+1]) + `"`)
	}
}

func (b *svgBuilder) open(name string, attrs ...string) {
	b.start(name, attrs)
	b.WriteString(">")
}

func (b *svgBuilder) void(name string, attrs ...string) {
	b.start(name, attrs)
	b.WriteString("/>")
}

func (b *svgBuilder) close(name string) { b.WriteString("</" + name + ">") }

func (b *svgBuilder) text(s string) { b.WriteString(esc(s)) }

// elem writes an element holding only text.
func (b *svgBuilder) elem(name, text string, attrs ...string) {
	b.open(name, attrs...)
	b.text(text)
	b.close(name)
}

// esc escapes s for HTML and XML text and attribute values, replacing
// control characters, which XML forbids even escaped.
func esc(s string) string {
	return template.HTMLEscapeString(clean(s))
}

// clean replaces the control characters of s (but tab and newline) and
// invalid UTF-8 with U+FFFD.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\t' && r != '\n') || r == 0x7f || r == utf8.RuneError {
			return utf8.RuneError
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}

// truncate shortens s to n characters, ending with an ellipsis.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// num formats a coordinate or a tick value: at most 3 decimals, no
// trailing zeros.
func num(v float64) string {
	v = math.Round(v*1000) / 1000
	if v == 0 {
		v = 0 // no "-0"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// Tick label formats.

// fmtLatency labels a latency given in milliseconds, in ns, µs, ms or s.
func fmtLatency(msv float64) string {
	switch {
	case msv == 0:
		return "0"
	case msv < 0.001:
		return num(msv*1e6) + " ns"
	case msv < 1:
		return num(msv*1000) + " µs"
	case msv < 1000:
		return num(msv) + " ms"
	default:
		return num(msv/1000) + " s"
	}
}

// fmtCount labels a count or a rate: 12, 1.5k, 2M.
func fmtCount(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return num(v/1e6) + "M"
	case a >= 1e4:
		return num(v/1e3) + "k"
	default:
		return num(v)
	}
}

func fmtPercent(v float64) string { return num(v*100) + "%" }
