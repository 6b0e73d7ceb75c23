package bench

import (
	"html/template"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// WriteHTML writes r as one self-contained HTML page: inline CSS and
// inline SVG, no script and no external resource, so the file can be
// mailed or attached to a CI run as is. Per scenario it shows the
// parameters, plots (latency CDFs of connects and queries, and of first
// queries in cold; open connections over time; throughput over time in
// steady, scale, storm and fairness), and the figures of WriteTable with
// their ratios to the first target. Each target has the same colour in
// every plot.
//
// The plots need the fields of Result that are not in the JSON report
// (ConnectCDF, QueryCDF, TTFQCDF, Timeline): for a Report decoded from
// JSON, the page has the tables and says the plots' data is missing. The
// output depends only on r. All text is escaped.
func WriteHTML(w io.Writer, r *Report) error {
	return htmlPage.Execute(w, newHTMLReport(r))
}

// htmlReport is the data of htmlPage.
type htmlReport struct {
	Targets   []htmlTarget
	Partial   bool
	Scenarios []htmlScenario
}

type htmlTarget struct {
	Label    string
	Swatch   template.HTML
	Baseline bool
}

type htmlScenario struct {
	ID, Title string
	Params    []htmlParam
	Plots     []template.HTML
	NoPlots   bool // none of the results has plot data
	Columns   []htmlTarget
	Rows      []htmlRow
}

type htmlParam struct{ Name, Value string }

type htmlRow struct {
	Label    string
	ErrClass bool
	Cells    []htmlCell
}

type htmlCell struct {
	Value, Ratio string
	Class        string // of the ratio: better, worse or ""
}

func newHTMLReport(r *Report) *htmlReport {
	hr := &htmlReport{Partial: r.Partial}
	// Styles go by target label, in order of first appearance, so a
	// target keeps its colour in every scenario.
	styles := map[string]lineStyle{}
	for _, s := range r.Scenarios {
		for _, res := range s.Results {
			if _, ok := styles[res.Target]; !ok {
				st := styleOf(len(styles))
				styles[res.Target] = st
				hr.Targets = append(hr.Targets, htmlTarget{Label: clean(res.Target), Swatch: swatch(st), Baseline: len(styles) == 1})
			}
		}
	}
	for i := range r.Scenarios {
		hr.Scenarios = append(hr.Scenarios, newHTMLScenario(i, &r.Scenarios[i], styles))
	}
	return hr
}

func newHTMLScenario(i int, s *ScenarioReport, styles map[string]lineStyle) htmlScenario {
	hs := htmlScenario{ID: "s" + strconv.Itoa(i+1), Title: string(s.Name)}
	if s.Name == Scale {
		hs.Title += " (" + plural(s.Tenants, "tenant") + ")"
	}
	hs.Params = s.htmlParams()
	for ri, res := range s.Results {
		hs.Columns = append(hs.Columns, htmlTarget{Label: clean(res.Target), Swatch: swatch(styles[res.Target]), Baseline: ri == 0})
	}
	for _, tr := range s.tableRows() {
		row := htmlRow{Label: tr.label, ErrClass: tr.errClass}
		for ri, v := range tr.values {
			var c htmlCell
			switch {
			case !tr.has[ri]:
				c.Value = "-"
			case tr.errClass:
				c.Value = strconv.FormatFloat(v.v, 'f', 0, 64)
			default:
				c.Value = strings.TrimSpace(formatFigure(v, 0, nil))
				if x, ok := s.Results[ri].Ratio[v.key]; ok && ri > 0 {
					c.Ratio = strconv.FormatFloat(x, 'f', 2, 64) + "×"
					c.Class = judge(v.key, x)
				}
			}
			row.Cells = append(row.Cells, c)
		}
		hs.Rows = append(hs.Rows, row)
	}
	hs.Plots, hs.NoPlots = s.plots(styles)
	return hs
}

func (s *ScenarioReport) htmlParams() []htmlParam {
	ps := []htmlParam{{"tenants", strconv.Itoa(s.Tenants)}}
	switch s.Name {
	case Cold:
		ps[0].Name = "new tenants per target"
	case Storm:
		ps = append(ps, htmlParam{"workers per tenant", strconv.Itoa(s.ConnsPerTenant)})
	default:
		ps = append(ps, htmlParam{"connections per tenant", strconv.Itoa(s.ConnsPerTenant)})
	}
	if s.HeavyConns > 0 {
		ps = append(ps, htmlParam{"heavy tenant's connections", strconv.Itoa(s.HeavyConns)})
	}
	ps = append(ps, htmlParam{"rounds", strconv.Itoa(s.Rounds)})
	if s.Name != Cold {
		per := time.Duration(s.DurationMs*float64(time.Millisecond)) / time.Duration(max(s.Rounds, 1))
		ps = append(ps, htmlParam{"time per round", per.Round(time.Millisecond).String()})
		switch s.Name {
		case Steady, Scale, Storm, FairnessAlone, Fairness:
			load := "closed loop"
			if s.Rate > 0 {
				load = "open loop, " + strconv.FormatFloat(s.Rate, 'f', -1, 64) + " queries/s"
			}
			ps = append(ps, htmlParam{"load", load})
		}
	}
	return append(ps, htmlParam{"query", s.Query})
}

// judge classes a ratio as better or worse than the first target, for
// figures where that is clear and the ratio is more than 5% off 1.
func judge(key string, ratio float64) string {
	dir := 0 // +1: higher is better, -1: lower is better
	switch key {
	case "connections_per_s", "queries_per_s", "queries", "connects", "held_conns", "ttfq_count",
		"small_queries", "heavy_queries", "heavy_queries_per_s":
		dir = 1
	case "errors_total", "rss_after_kb", "rss_delta_kb", "rss_per_conn_kb", "small_p99_vs_alone":
		dir = -1
	default:
		if strings.HasSuffix(key, "_ms") && key != "elapsed_ms" {
			dir = -1
		}
	}
	switch {
	case dir == 0 || math.Abs(ratio-1) <= 0.05:
		return ""
	case dir < 0 && ratio == 0: // a latency of 0: nothing was measured
		return ""
	case (ratio > 1) == (dir > 0):
		return "better"
	default:
		return "worse"
	}
}

// plots draws s's charts; the bool is true when there was nothing to draw
// (a report read back from JSON).
func (s *ScenarioReport) plots(styles map[string]lineStyle) ([]template.HTML, bool) {
	have := false
	for _, r := range s.Results {
		have = have || r.ConnectCDF != nil || r.QueryCDF != nil || r.Timeline != nil
	}
	if !have {
		return nil, true
	}
	cdf := func(title, what, whats string, get func(*Result) []CDFPoint) template.HTML {
		c := chart{
			title: title,
			x:     axis{title: what + " latency (log scale)", log: true, format: fmtLatency},
			y:     axis{title: "fraction of " + whats + " ≤ latency", fixed: []float64{0, 0.25, 0.5, 0.75, 1}, format: fmtPercent},
			steps: true,
			refs:  []ref{{0.5, "p50"}, {0.9, "p90"}, {0.99, "p99"}},
			empty: "no " + whats,
		}
		for i := range s.Results {
			r := &s.Results[i]
			var pts []point
			for _, p := range get(r) {
				pts = append(pts, point{p.Ms, p.Fraction})
			}
			c.series = append(c.series, series{label: clean(r.Target), style: styles[r.Target], parts: [][]point{pts}})
		}
		return c.svg()
	}
	var out []template.HTML
	out = append(out,
		cdf("Connect latency", "connect", "connects", func(r *Result) []CDFPoint { return r.ConnectCDF }),
		cdf("Query latency", "query", "queries", func(r *Result) []CDFPoint { return r.QueryCDF }))
	if s.Name == Cold {
		out = append(out, cdf("Time to first query of a new tenant", "first query", "new tenants", func(r *Result) []CDFPoint { return r.TTFQCDF }))
	}
	switch s.Name {
	case Storm:
		// Connections come and go faster than the sampling: means are
		// more readable than samples.
		out = append(out, s.timelineChart(styles, "Open connections", "open connections (mean over 100ms)", openMeanSeries))
	default:
		out = append(out, s.timelineChart(styles, "Open connections", "open connections", openSeries))
	}
	switch s.Name {
	case Steady, Scale, Storm, FairnessAlone, Fairness:
		out = append(out, s.timelineChart(styles, "Throughput", "queries/s", throughputSeries))
	}
	return out, false
}

func (s *ScenarioReport) timelineChart(styles map[string]lineStyle, title, what string, get func([]Sample) [][]point) template.HTML {
	c := chart{
		title: title,
		x:     axis{title: "seconds into the scenario (each target's rounds end to end)", fromZero: true, format: num},
		y:     axis{title: what, fromZero: true, integer: true, format: fmtCount},
		empty: "no samples",
	}
	for i := range s.Results {
		r := &s.Results[i]
		c.series = append(c.series, series{label: clean(r.Target), style: styles[r.Target], parts: get(r.Timeline)})
	}
	return c.svg()
}

// maxLinePoints bounds the points a timeline's line is drawn with.
const maxLinePoints = 800

// rounds splits a timeline into its rounds.
func rounds(tl []Sample) [][]Sample {
	var out [][]Sample
	for i := 0; i < len(tl); {
		j := i + 1
		for j < len(tl) && tl[j].Round == tl[i].Round {
			j++
		}
		out = append(out, tl[i:j])
		i = j
	}
	return out
}

// openSeries is the open connections over time, one part per round,
// thinned to about maxLinePoints points (keeping each round's last).
func openSeries(tl []Sample) [][]point {
	every := (len(tl) + maxLinePoints - 1) / maxLinePoints
	var parts [][]point
	for _, rs := range rounds(tl) {
		var pts []point
		for i, sm := range rs {
			if i%max(every, 1) == 0 || i == len(rs)-1 {
				pts = append(pts, point{sm.T.Seconds(), float64(sm.Open)})
			}
		}
		parts = append(parts, pts)
	}
	return parts
}

// throughputSeries is the queries per second over time, one part per
// round.
func throughputSeries(tl []Sample) [][]point {
	return windowed(tl, func(from, to Sample, _ []Sample) float64 {
		return float64(to.Queries-from.Queries) / (to.T - from.T).Seconds()
	})
}

// openMeanSeries is the mean of the open connections over time, one part
// per round.
func openMeanSeries(tl []Sample) [][]point {
	return windowed(tl, func(_, _ Sample, in []Sample) float64 {
		var sum int64
		for _, s := range in {
			sum += s.Open
		}
		return float64(sum) / float64(len(in))
	})
}

// windowed cuts each round of tl into windows of at least 100ms (longer in
// long runs, to keep to about maxLinePoints points) and plots f of each
// window at its middle. f gets the samples that start and end the window,
// and those after the start up to the end. A round's last window joins
// the one before when shorter than half a window, which would be noisy.
func windowed(tl []Sample, f func(from, to Sample, in []Sample) float64) [][]point {
	if len(tl) == 0 {
		return nil
	}
	win := max(100*time.Millisecond, tl[len(tl)-1].T/maxLinePoints)
	var parts [][]point
	for _, rs := range rounds(tl) {
		bounds := []int{0} // indexes of the samples between windows
		for i := 1; i < len(rs); i++ {
			if rs[i].T-rs[bounds[len(bounds)-1]].T >= win {
				bounds = append(bounds, i)
			}
		}
		if end, last := len(rs)-1, bounds[len(bounds)-1]; end != last {
			if len(bounds) > 1 && rs[end].T-rs[last].T < win/2 {
				bounds[len(bounds)-1] = end
			} else {
				bounds = append(bounds, end)
			}
		}
		var pts []point
		for k := 1; k < len(bounds); k++ {
			from, to := rs[bounds[k-1]], rs[bounds[k]]
			if d := to.T - from.T; d > 0 {
				pts = append(pts, point{(from.T + d/2).Seconds(), f(from, to, rs[bounds[k-1]+1:bounds[k]+1])})
			}
		}
		parts = append(parts, pts)
	}
	return parts
}

// swatch is a target's line style as a small inline SVG, for the legend
// and the table header.
func swatch(st lineStyle) template.HTML {
	var b svgBuilder
	b.open("svg", "xmlns", "http://www.w3.org/2000/svg", "width", "24", "height", "10", "viewBox", "0 0 24 10", "class", "swatch", "aria-hidden", "true")
	attrs := []string{"x1", "1", "y1", "5", "x2", "23", "y2", "5", "stroke", st.color, "stroke-width", "3"}
	if st.dash != "" {
		attrs = append(attrs, "stroke-dasharray", st.dash)
	}
	b.void("line", attrs...)
	b.close("svg")
	return template.HTML(b.String()) // built by svgBuilder, which escapes all text
}

// htmlPage is the report's page. It is well-formed XML as well as HTML
// (every element closed, no named entities), which the tests rely on.
var htmlPage = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>pgtenant bench report</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 16px 40px; box-sizing: border-box; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 0; }
section { background: #ffffff; border: 1px solid #d0d7de; border-radius: 8px; padding: 14px 16px 16px; margin: 18px 0; }
.targets { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 0; padding: 0; list-style: none; }
.targets li, th { white-space: nowrap; }
.swatch { vertical-align: middle; margin-right: 5px; }
.muted, .ratio { color: #57606a; }
nav { margin: 8px 0 0; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; }
dl.params { display: flex; flex-wrap: wrap; gap: 2px 22px; margin: 8px 0 12px; }
dl.params div { display: flex; gap: 6px; }
dl.params dt { color: #57606a; }
dl.params dd { margin: 0; font-weight: 600; }
dl.params code { font-weight: normal; background: #f6f8fa; padding: 1px 5px; border-radius: 4px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 12px; }
.plots svg { width: 100%; height: auto; border: 1px solid #eaeef2; border-radius: 6px; display: block; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin-top: 14px; }
th, td { padding: 3px 12px; border-bottom: 1px solid #eaeef2; text-align: right; }
th { border-bottom: 2px solid #d0d7de; font-weight: 600; }
th:first-child, td:first-child { text-align: left; color: #57606a; }
tr.err td:first-child { padding-left: 28px; }
.ratio { font-size: 12px; margin-left: 6px; }
.better { color: #1a7f37; }
.worse { color: #cf222e; }
</style>
</head>
<body>
<main>
<h1>pgtenant bench report</h1>
<ul class="targets">{{range .Targets}}
<li>{{.Swatch}}{{.Label}}{{if .Baseline}} <span class="muted">(baseline for ratios)</span>{{end}}</li>{{end}}
</ul>
{{if .Partial}}<p class="warn">Partial report: the run was interrupted, so the last scenario may lack rounds or targets, and later ones are missing.</p>
{{end}}{{if .Scenarios}}<nav>{{range .Scenarios}}<a href="#{{.ID}}">{{.Title}}</a> {{end}}</nav>
{{else}}<p>No scenario ran.</p>
{{end}}{{range .Scenarios}}
<section id="{{.ID}}">
<h2>{{.Title}}</h2>
<dl class="params">{{range .Params}}<div><dt>{{.Name}}</dt><dd>{{if eq .Name "query"}}<code>{{.Value}}</code>{{else}}{{.Value}}{{end}}</dd></div>{{end}}</dl>
{{if .Columns}}{{if .NoPlots}}<p class="muted">No plots: this report has no latency distributions or timelines (a report read back from JSON lacks them).</p>
{{else}}<div class="plots">{{range .Plots}}
{{.}}{{end}}
</div>
{{end}}<div class="table"><table>
<thead><tr><th></th>{{range .Columns}}<th>{{.Swatch}}{{.Label}}</th>{{end}}</tr></thead>
<tbody>{{range .Rows}}
<tr{{if .ErrClass}} class="err"{{end}}><td>{{.Label}}</td>{{range .Cells}}<td>{{.Value}}{{if .Ratio}}<span class="ratio{{if .Class}} {{.Class}}{{end}}">{{.Ratio}}</span>{{end}}</td>{{end}}</tr>{{end}}
</tbody>
</table></div>
{{else}}<p class="muted">No results.</p>
{{end}}</section>
{{end}}</main>
</body>
</html>
`))
