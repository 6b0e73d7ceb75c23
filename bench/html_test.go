package bench_test

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/bench"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

const evilLabel = `<script>alert("x")</script>&`

// lognormalCDF returns a CDF of a log-normal latency with the given median
// (ms) and spread, at 200 quantiles.
func lognormalCDF(median, sigma float64) []bench.CDFPoint {
	var pts []bench.CDFPoint
	for i := 1; i <= 200; i++ {
		q := float64(i) / 200
		z := math.Sqrt2 * math.Erfinv(2*min(q, 0.9995)-1)
		pts = append(pts, bench.CDFPoint{Ms: median * math.Exp(sigma*z), Fraction: q})
	}
	return pts
}

// syntheticTimeline ramps up to held connections over ramp, holds them,
// and runs at qps, over rounds of length round.
func syntheticTimeline(rounds int, round, ramp time.Duration, held int64, qps float64) []bench.Sample {
	var tl []bench.Sample
	var queries int64
	for r := range rounds {
		off := time.Duration(r) * round
		for t := time.Duration(0); t <= round; t += 100 * time.Millisecond {
			open := held
			if t < ramp {
				open = held * int64(t) / int64(ramp)
			}
			if t >= ramp && t > 0 {
				queries += int64(qps / 10 * (1 + 0.1*math.Sin(float64(t)/1e8)))
			}
			tl = append(tl, bench.Sample{Round: r, T: off + t, Open: open, Connects: held * int64(r+1), Queries: queries})
		}
	}
	return tl
}

// syntheticReport has a steady, an idle and a cold scenario against three
// targets, one with a label that is an XSS attempt.
func syntheticReport() *bench.Report {
	labels := []string{"direct", "router", evilLabel}
	rep := &bench.Report{}
	for _, sc := range []bench.Scenario{bench.Steady, bench.Idle, bench.Cold} {
		s := bench.ScenarioReport{Name: sc, Tenants: 4, ConnsPerTenant: 4, Rounds: 2, DurationMs: 4000, Query: "SELECT 1 -- <b>bold</b>"}
		for i, l := range labels {
			f := float64(i + 1)
			r := bench.Result{
				Target: l, HeldConns: 16, Connects: 32, ConnectP50Ms: 2 * f, ConnectP99Ms: 5 * f, ConnectMaxMs: 9 * f,
				Queries: int64(40000 / f), QueryP50Ms: 0.1 * f, QueryP99Ms: 0.5 * f, QueryMaxMs: 3 * f,
				QueriesPerSec: 10000 / f, ElapsedMs: 4000, Errors: map[string]int64{},
				ConnectCDF: lognormalCDF(2*f, 0.3), QueryCDF: lognormalCDF(0.1*f, 0.5),
				Timeline: syntheticTimeline(2, 2*time.Second, time.Duration(i+1)*200*time.Millisecond, 16, 10000/f),
			}
			if i == 2 {
				r.Errors = map[string]int64{"28P01": 2}
				r.ErrorsTotal = 2
			}
			if sc == bench.Cold {
				r.TTFQ = &bench.TTFQ{Count: 4, P50Ms: 100 * f, P90Ms: 150 * f, P99Ms: 200 * f, MaxMs: 210 * f}
				r.TTFQCDF = lognormalCDF(100*f, 0.2)
			}
			s.Results = append(s.Results, r)
		}
		rep.Scenarios = append(rep.Scenarios, s)
	}
	// Ratios as Run sets them: through the JSON round trip of a real
	// report would lose the plot data, so compute them by hand.
	for si := range rep.Scenarios {
		res := rep.Scenarios[si].Results
		for i := range res {
			res[i].Ratio = map[string]float64{
				"query_p50_ms":  res[i].QueryP50Ms / res[0].QueryP50Ms,
				"queries_per_s": res[i].QueriesPerSec / res[0].QueriesPerSec,
			}
		}
	}
	return rep
}

// svgDoc is the part of a plot's SVG the tests look at.
type svgDoc struct {
	Title string `xml:"title"`
	Texts []struct {
		Value string `xml:",chardata"`
	} `xml:"g>text"`
	Paths []struct {
		Class  string `xml:"class,attr"`
		Target string `xml:"data-target,attr"`
		Stroke string `xml:"stroke,attr"`
		D      string `xml:"d,attr"`
	} `xml:"g>path"`
}

// plotSVGs returns the plots of an HTML report (the SVG elements inside
// div.plots), parsed.
func plotSVGs(t *testing.T, page string) []svgDoc {
	t.Helper()
	var docs []svgDoc
	for rest := page; ; {
		i := strings.Index(rest, `<div class="plots">`)
		if i < 0 {
			break
		}
		rest = rest[i:]
		end := strings.Index(rest, "</div>")
		block := rest[:end]
		rest = rest[end:]
		for {
			a := strings.Index(block, "<svg")
			if a < 0 {
				break
			}
			b := strings.Index(block, "</svg>") + len("</svg>")
			var d svgDoc
			if err := xml.Unmarshal([]byte(block[a:b]), &d); err != nil {
				t.Fatalf("plot SVG is not well-formed: %v\n%s", err, block[a:b])
			}
			docs = append(docs, d)
			block = block[b:]
		}
	}
	return docs
}

// checkWellFormed parses the whole page as XML.
func checkWellFormed(t *testing.T, page string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(page))
	d.Strict = true
	for {
		_, err := d.Token()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("page is not well-formed XML: %v", err)
		}
	}
}

func TestWriteHTML(t *testing.T) {
	rep := syntheticReport()
	var buf bytes.Buffer
	if err := bench.WriteHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	checkWellFormed(t, page)

	if strings.Contains(strings.ToLower(page), "<script") || strings.Contains(page, "<b>") {
		t.Error("a label or the query reached the page unescaped")
	}
	if !strings.Contains(page, "&lt;script&gt;") || !strings.Contains(page, "&lt;b&gt;bold&lt;/b&gt;") {
		t.Error("the escaped label or query is missing")
	}
	for _, res := range []string{"src=", "<link", "@import", "url(", "<img", "<iframe"} {
		if strings.Contains(page, res) {
			t.Errorf("page refers to an external resource: %q", res)
		}
	}
	if strings.Contains(strings.ReplaceAll(page, `xmlns="http://www.w3.org/2000/svg"`, ""), "http") {
		t.Error("page has a link besides the SVG namespace")
	}
	for _, want := range []string{"steady", "idle", "cold", "query p50 ms", "0.200", "2.00×", "28P01", "(baseline for ratios)", "time per round", "2s"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}

	plots := plotSVGs(t, page)
	// steady: 2 CDFs, open, throughput; idle: 2 CDFs, open; cold: 3 CDFs, open.
	if len(plots) != 4+3+4 {
		t.Fatalf("%d plots, want 11", len(plots))
	}
	strokes := map[string]string{}
	for _, p := range plots {
		texts := ""
		for _, tx := range p.Texts {
			texts += tx.Value + "|"
		}
		var lines []string
		for _, path := range p.Paths {
			if path.Class != "line" {
				continue
			}
			lines = append(lines, path.Target)
			if !strings.HasPrefix(path.D, "M") || len(path.D) < 20 {
				t.Errorf("%s: %s: path %q", p.Title, path.Target, path.D)
			}
			if s, ok := strokes[path.Target]; ok && s != path.Stroke {
				t.Errorf("%s: %s is drawn in %s here and %s elsewhere", p.Title, path.Target, path.Stroke, s)
			}
			strokes[path.Target] = path.Stroke
		}
		if len(lines) != 3 {
			t.Errorf("%s: lines for %q, want one per target", p.Title, lines)
		}
		for _, want := range []string{"direct", "router", evilLabel[:20]} {
			if !strings.Contains(texts, want) {
				t.Errorf("%s: legend lacks %q: %s", p.Title, want, texts)
			}
		}
		switch {
		case strings.Contains(p.Title, "latency") || strings.Contains(p.Title, "first query"):
			for _, want := range []string{"latency (log scale)", "fraction of", "50%", "100%", "p99", " ms|"} {
				if !strings.Contains(texts, want) {
					t.Errorf("%s: axes lack %q: %s", p.Title, want, texts)
				}
			}
		default:
			for _, want := range []string{"seconds into the scenario", "0|", "4|"} {
				if !strings.Contains(texts, want) {
					t.Errorf("%s: axes lack %q: %s", p.Title, want, texts)
				}
			}
		}
	}
	if len(strokes) != 3 || strokes["direct"] == strokes["router"] {
		t.Errorf("target colours %v, want three different ones", strokes)
	}

	var again bytes.Buffer
	if err := bench.WriteHTML(&again, syntheticReport()); err != nil {
		t.Fatal(err)
	}
	if again.String() != page {
		t.Error("WriteHTML is not deterministic")
	}
}

// TestWriteHTMLFromJSON renders a report read back from JSON, which has
// no plot data, and an empty one.
func TestWriteHTMLFromJSON(t *testing.T) {
	var js bytes.Buffer
	if err := syntheticReport().WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(js.String(), "cdf") || strings.Contains(js.String(), "timeline") || strings.Contains(js.String(), "Fraction") {
		t.Errorf("plot data leaked into the JSON report")
	}
	var rep bench.Report
	if err := json.Unmarshal(js.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	rep.Partial = true
	for _, r := range []*bench.Report{&rep, {}} {
		var buf bytes.Buffer
		if err := bench.WriteHTML(&buf, r); err != nil {
			t.Fatal(err)
		}
		checkWellFormed(t, buf.String())
		if len(plotSVGs(t, buf.String())) != 0 {
			t.Error("plots without data")
		}
	}
	var buf bytes.Buffer
	_ = bench.WriteHTML(&buf, &rep)
	for _, want := range []string{"No plots", "Partial report", "query p50 ms"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestTimelineAndCDFsOfARun runs steady and idle briefly against the
// shared cluster and checks the data the HTML report draws.
func TestTimelineAndCDFsOfARun(t *testing.T) {
	pgtest.CheckGoroutines(t)
	dsn := directDSN(t)
	rep := runBench(t, bench.Config{
		Targets:        []bench.Target{{Label: "direct", DSN: dsn}, {Label: "again", DSN: dsn}},
		Scenarios:      []bench.Scenario{bench.Steady, bench.Idle},
		Tenants:        2,
		ConnsPerTenant: 2,
		Duration:       400 * time.Millisecond,
		Rounds:         2,
		NoWarmup:       true,
	})
	for _, s := range rep.Scenarios {
		for _, r := range s.Results {
			name := string(s.Name) + "/" + r.Target
			tl := r.Timeline
			if len(tl) < 6 {
				t.Fatalf("%s: %d samples, want several per round", name, len(tl))
			}
			for i := 1; i < len(tl); i++ {
				if tl[i].T < tl[i-1].T || tl[i].Round < tl[i-1].Round || tl[i].Queries < tl[i-1].Queries {
					t.Fatalf("%s: sample %d %+v goes back from %+v", name, i, tl[i], tl[i-1])
				}
			}
			last := tl[len(tl)-1]
			if tl[0].Round != 0 || last.Round != 1 || tl[0].T != 0 {
				t.Errorf("%s: samples from %+v to %+v, want rounds 0 and 1 from T=0", name, tl[0], last)
			}
			if r.HeldConns != 4 || last.Open != r.HeldConns {
				t.Errorf("%s: last sample has %d open, held %d; want 4 and 4", name, last.Open, r.HeldConns)
			}
			if last.Queries != r.Queries || last.Connects != r.Connects {
				t.Errorf("%s: last sample counts %d queries %d connects, result %d %d", name, last.Queries, last.Connects, r.Queries, r.Connects)
			}
			if span := last.T.Seconds() * 1000; span < r.ElapsedMs || span > r.ElapsedMs+5000 {
				t.Errorf("%s: timeline spans %vms, elapsed %vms", name, span, r.ElapsedMs)
			}
			for _, c := range []struct {
				what  string
				cdf   []bench.CDFPoint
				maxMs float64
			}{{"connect", r.ConnectCDF, r.ConnectMaxMs}, {"query", r.QueryCDF, r.QueryMaxMs}} {
				if len(c.cdf) == 0 {
					t.Fatalf("%s: no %s CDF", name, c.what)
				}
				for i := 1; i < len(c.cdf); i++ {
					if c.cdf[i].Ms < c.cdf[i-1].Ms || c.cdf[i].Fraction <= c.cdf[i-1].Fraction {
						t.Fatalf("%s: %s CDF not ascending at %d: %v", name, c.what, i, c.cdf)
					}
				}
				if end := c.cdf[len(c.cdf)-1]; end.Fraction != 1 || end.Ms != c.maxMs {
					t.Errorf("%s: %s CDF ends at %+v, max %v", name, c.what, end, c.maxMs)
				}
			}
		}
	}
	var buf bytes.Buffer
	if err := bench.WriteHTML(&buf, rep); err != nil {
		t.Fatal(err)
	}
	checkWellFormed(t, buf.String())
	if n := len(plotSVGs(t, buf.String())); n != 4+3 {
		t.Errorf("%d plots, want 7", n)
	}
}
