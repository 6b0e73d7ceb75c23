package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is what Run measured. Its JSON form (see WriteJSON and the
// package documentation) is stable.
type Report struct {
	// Scenarios are in the order they ran; Scale contributes one per step.
	Scenarios []ScenarioReport `json:"scenarios"`
	// Partial is set when the run was interrupted: the last scenario may
	// lack rounds or targets, and later ones are missing.
	Partial bool `json:"partial,omitempty"`
}

// ScenarioReport is one scenario (or one Scale step) against every target.
type ScenarioReport struct {
	// Name is the scenario: steady, storm, idle, scale, cold, or one of
	// fairness's steps, fairness-alone and fairness.
	Name Scenario `json:"name"`
	// Tenants is the number of tenants driven (Cold: new tenants per
	// target; fairness-alone: the small ones only); ConnsPerTenant the
	// connections or workers per tenant (Fairness: per small tenant).
	Tenants        int `json:"tenants"`
	ConnsPerTenant int `json:"conns_per_tenant"`
	// HeavyConns is the heavy tenant's clients in the fairness step (0
	// elsewhere).
	HeavyConns int `json:"heavy_conns,omitempty"`
	// Rounds is the number of rounds each target got.
	Rounds int `json:"rounds"`
	// DurationMs is the planned time per target, over all rounds (0 for
	// Cold).
	DurationMs float64 `json:"duration_ms"`
	// Rate is the open-loop arrival rate in queries per second, 0 for a
	// closed loop.
	Rate float64 `json:"rate"`
	// Query is the SQL the clients ran.
	Query string `json:"query"`
	// Results has one entry per target, the baseline first.
	Results []Result `json:"results"`
}

// Result is one target's figures in one scenario, over all its rounds.
// Latencies are in milliseconds, rates per second.
type Result struct {
	// Target is the target's label.
	Target string `json:"target"`
	// Ratio holds, for every figure of this result whose value at the
	// first target is not zero, this value divided by that one (so the
	// first target's ratios are all 1). Keys are the figures' JSON names.
	Ratio map[string]float64 `json:"ratio"`
	// ElapsedMs is the measured time: the query windows (Steady, Scale,
	// Storm), the hold time (Idle), or from the first connect to the last
	// first query (Cold), summed over rounds.
	ElapsedMs float64 `json:"elapsed_ms"`
	// HeldConns is the most connections held open at once after the
	// connect phase of a round (Steady, Scale, Idle; 0 otherwise).
	HeldConns int64 `json:"held_conns"`
	// Connects counts successful connections; the latencies are from
	// starting to dial until the connection was ready for queries.
	Connects     int64   `json:"connects"`
	ConnectP50Ms float64 `json:"connect_p50_ms"`
	ConnectP90Ms float64 `json:"connect_p90_ms"`
	ConnectP99Ms float64 `json:"connect_p99_ms"`
	ConnectMaxMs float64 `json:"connect_max_ms"`
	// ConnectionsPerSec is Connects / elapsed (Storm, Cold; else 0).
	ConnectionsPerSec float64 `json:"connections_per_s"`
	// Queries counts successful queries; the latencies are from when the
	// query was due until its last result (see Config.Rate).
	Queries    int64   `json:"queries"`
	QueryP50Ms float64 `json:"query_p50_ms"`
	QueryP90Ms float64 `json:"query_p90_ms"`
	QueryP99Ms float64 `json:"query_p99_ms"`
	QueryMaxMs float64 `json:"query_max_ms"`
	// QueriesPerSec is Queries / elapsed (Steady, Scale, Storm; else 0).
	QueriesPerSec float64 `json:"queries_per_s"`
	// TTFQ is set in Cold only.
	*TTFQ
	// Groups is set in Fairness only.
	*Groups
	// Process is set when the target has a PID.
	*Process
	// ErrorsTotal is the sum of Errors.
	ErrorsTotal int64 `json:"errors_total"`
	// Errors counts failed connects and queries by SQLSTATE (e.g. "28P01"),
	// or "network" for failures without one, or "timeout" when
	// ConnectTimeout or QueryTimeout ran out. Never nil.
	Errors map[string]int64 `json:"errors"`

	// ConnectCDF, QueryCDF and (Cold only) TTFQCDF are the distributions
	// of the latencies above, as compact lists of points (see CDFPoint);
	// nil where nothing was recorded.
	ConnectCDF []CDFPoint `json:"-"`
	QueryCDF   []CDFPoint `json:"-"`
	TTFQCDF    []CDFPoint `json:"-"`
	// Timeline follows the open connections and the counts over the
	// target's rounds (see Sample): every 100ms, more often in rounds
	// shorter than 10s. WriteHTML draws these fields; they are not part of
	// the JSON report.
	Timeline []Sample `json:"-"`
}

// TTFQ is the time to first query of Cold's new tenants: from starting to
// connect to the first query's result (for a target with a Target.Cold
// hook, the time the hook took). Count is the number of new tenants that
// got that far.
type TTFQ struct {
	Count int64   `json:"ttfq_count"`
	P50Ms float64 `json:"ttfq_p50_ms"`
	P90Ms float64 `json:"ttfq_p90_ms"`
	P99Ms float64 `json:"ttfq_p99_ms"`
	MaxMs float64 `json:"ttfq_max_ms"`
}

// Groups splits Fairness's query figures between its two groups of
// clients, the small tenants' and the heavy tenant's; the Result's own
// query figures cover both. Latencies count as in Result.
type Groups struct {
	// SmallQueries counts the small tenants' successful queries.
	SmallQueries    int64   `json:"small_queries"`
	SmallQueryP50Ms float64 `json:"small_query_p50_ms"`
	SmallQueryP95Ms float64 `json:"small_query_p95_ms"`
	SmallQueryP99Ms float64 `json:"small_query_p99_ms"`
	// SmallP99VsAlone, in the fairness step, is SmallQueryP99Ms divided
	// by the same target's in the fairness-alone step before it: how much
	// the heavy tenant slows the small ones' tail (0 when not known).
	SmallP99VsAlone float64 `json:"small_p99_vs_alone"`
	// HeavyQueries counts the heavy tenant's successful queries (0 in
	// fairness-alone); HeavyQueriesPerSec is HeavyQueries / elapsed.
	HeavyQueries       int64   `json:"heavy_queries"`
	HeavyQueryP50Ms    float64 `json:"heavy_query_p50_ms"`
	HeavyQueryP99Ms    float64 `json:"heavy_query_p99_ms"`
	HeavyQueriesPerSec float64 `json:"heavy_queries_per_s"`
}

// Process describes the memory and threads of the process serving a
// target (Target.PID), from /proc/PID/status, in kB.
type Process struct {
	// RSSBeforeKB is VmRSS before the first round opened connections;
	// RSSAfterKB is VmRSS at the end of the last round, connections still
	// open.
	RSSBeforeKB int64 `json:"rss_before_kb"`
	RSSAfterKB  int64 `json:"rss_after_kb"`
	// RSSDeltaKB is the mean over rounds of VmRSS at the end of the round
	// minus VmRSS at its start.
	RSSDeltaKB float64 `json:"rss_delta_kb"`
	// RSSPerConnKB is the mean over rounds of the delta divided by the
	// connections held (0 in Storm and Cold, which hold none).
	RSSPerConnKB float64 `json:"rss_per_conn_kb"`
	// ThreadsBefore and ThreadsAfter are the process's OS threads, read
	// with the RSS.
	ThreadsBefore int64 `json:"threads_before"`
	ThreadsAfter  int64 `json:"threads_after"`
}

// figure is one number of a Result, named by its JSON key.
type figure struct {
	key, label string
	v          float64
	integer    bool
	times      bool // a ratio, shown as 1.23x
}

// figures lists r's numbers in table order; the keys are exactly the JSON
// keys of r that hold numbers (a test checks it).
func (r *Result) figures() []figure {
	ms := func(key, label string, v float64) figure { return figure{key: key, label: label, v: v} }
	n := func(key, label string, v int64) figure {
		return figure{key: key, label: label, v: float64(v), integer: true}
	}
	fs := []figure{
		n("held_conns", "held conns", r.HeldConns),
		n("connects", "connects", r.Connects),
		ms("connect_p50_ms", "connect p50 ms", r.ConnectP50Ms),
		ms("connect_p90_ms", "connect p90 ms", r.ConnectP90Ms),
		ms("connect_p99_ms", "connect p99 ms", r.ConnectP99Ms),
		ms("connect_max_ms", "connect max ms", r.ConnectMaxMs),
		ms("connections_per_s", "connections/s", r.ConnectionsPerSec),
		n("queries", "queries", r.Queries),
		ms("query_p50_ms", "query p50 ms", r.QueryP50Ms),
		ms("query_p90_ms", "query p90 ms", r.QueryP90Ms),
		ms("query_p99_ms", "query p99 ms", r.QueryP99Ms),
		ms("query_max_ms", "query max ms", r.QueryMaxMs),
		ms("queries_per_s", "queries/s", r.QueriesPerSec),
	}
	if t := r.TTFQ; t != nil {
		fs = append(fs,
			n("ttfq_count", "first queries", t.Count),
			ms("ttfq_p50_ms", "first query p50 ms", t.P50Ms),
			ms("ttfq_p90_ms", "first query p90 ms", t.P90Ms),
			ms("ttfq_p99_ms", "first query p99 ms", t.P99Ms),
			ms("ttfq_max_ms", "first query max ms", t.MaxMs),
		)
	}
	if g := r.Groups; g != nil {
		fs = append(fs,
			n("small_queries", "small queries", g.SmallQueries),
			ms("small_query_p50_ms", "small query p50 ms", g.SmallQueryP50Ms),
			ms("small_query_p95_ms", "small query p95 ms", g.SmallQueryP95Ms),
			ms("small_query_p99_ms", "small query p99 ms", g.SmallQueryP99Ms),
			figure{key: "small_p99_vs_alone", label: "small p99 with heavy / alone", v: g.SmallP99VsAlone, times: true},
			n("heavy_queries", "heavy queries", g.HeavyQueries),
			ms("heavy_query_p50_ms", "heavy query p50 ms", g.HeavyQueryP50Ms),
			ms("heavy_query_p99_ms", "heavy query p99 ms", g.HeavyQueryP99Ms),
			ms("heavy_queries_per_s", "heavy queries/s", g.HeavyQueriesPerSec),
		)
	}
	if p := r.Process; p != nil {
		fs = append(fs,
			n("rss_before_kb", "rss before kB", p.RSSBeforeKB),
			n("rss_after_kb", "rss after kB", p.RSSAfterKB),
			ms("rss_delta_kb", "rss delta kB", p.RSSDeltaKB),
			ms("rss_per_conn_kb", "rss per conn kB", p.RSSPerConnKB),
			n("threads_before", "threads before", p.ThreadsBefore),
			n("threads_after", "threads after", p.ThreadsAfter),
		)
	}
	fs = append(fs,
		ms("elapsed_ms", "elapsed ms", r.ElapsedMs),
		n("errors_total", "errors", r.ErrorsTotal), // the table lists the classes after it
	)
	return fs
}

// setRatios fills every result's Ratio relative to results[0].
func setRatios(results []Result) {
	if len(results) == 0 {
		return
	}
	base := map[string]float64{}
	for _, f := range results[0].figures() {
		base[f.key] = f.v
	}
	for i := range results {
		r := &results[i]
		r.Ratio = map[string]float64{}
		for _, f := range r.figures() {
			if b, ok := base[f.key]; ok && b != 0 {
				r.Ratio[f.key] = f.v / b
			}
		}
	}
}

// WriteJSON writes r as indented JSON, in the shape the package
// documentation describes.
func (r *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteTable writes r as one text table per scenario: a row per figure, a
// column per target, each value after the first followed by its ratio to
// the first target's. Rows that are zero for every target are left out.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	for i, s := range r.Scenarios {
		if i > 0 {
			b.WriteByte('\n')
		}
		s.writeTable(&b)
	}
	if r.Partial {
		b.WriteString("\n(partial report: the run was interrupted)\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (s *ScenarioReport) writeTable(b *strings.Builder) {
	fmt.Fprintf(b, "%s: %s\n", s.Name, s.describe())
	if len(s.Results) == 0 {
		b.WriteString("  (no results)\n")
		return
	}
	rows := [][]string{{""}}
	for _, r := range s.Results {
		rows[0] = append(rows[0], r.Target)
	}
	for _, tr := range s.tableRows() {
		row := []string{tr.label}
		if tr.errClass {
			row[0] = "  " + tr.label
		}
		for ri, v := range tr.values {
			switch {
			case !tr.has[ri]:
				row = append(row, "-")
			case tr.errClass:
				row = append(row, strconv.FormatFloat(v.v, 'f', 0, 64))
			default:
				row = append(row, formatFigure(v, ri, s.Results[ri].Ratio))
			}
		}
		rows = append(rows, row)
	}
	writeColumns(b, rows)
}

// tableRow is one row of a scenario's table (WriteTable, WriteHTML): a
// figure of every result, or the count of one error class.
type tableRow struct {
	label    string
	key      string   // the figure's JSON key; the class for an error row
	errClass bool     // the row counts errors of class key, after errors_total
	values   []figure // one per result
	has      []bool   // false where the result lacks the figure's group
}

// tableRows returns the rows of s's table: the figures in table order,
// leaving out those that are zero for every result, then one row per error
// class.
func (s *ScenarioReport) tableRows() []tableRow {
	// Rows follow the order of a result with every optional group; each
	// result has the figures of the groups it has.
	full := Result{TTFQ: &TTFQ{}, Groups: &Groups{}, Process: &Process{}}
	order := full.figures()
	values := make([]map[string]figure, len(s.Results))
	for i := range s.Results {
		values[i] = map[string]figure{}
		for _, f := range s.Results[i].figures() {
			values[i][f.key] = f
		}
	}
	var rows []tableRow
	always := map[string]bool{"connects": true, "queries": true, "errors_total": true}
	for _, f := range order {
		show := always[f.key]
		for _, vs := range values {
			v, ok := vs[f.key]
			show = show || (ok && (v.v != 0 || f.key == "ttfq_count"))
		}
		if !show {
			continue
		}
		row := tableRow{label: f.label, key: f.key}
		for _, vs := range values {
			v, ok := vs[f.key]
			row.values, row.has = append(row.values, v), append(row.has, ok)
		}
		rows = append(rows, row)
	}
	codes := map[string]bool{}
	for _, r := range s.Results {
		for c := range r.Errors {
			codes[c] = true
		}
	}
	for _, c := range slices.Sorted(maps.Keys(codes)) {
		row := tableRow{label: c, key: c, errClass: true}
		for _, r := range s.Results {
			row.values = append(row.values, figure{key: c, label: c, v: float64(r.Errors[c]), integer: true})
			row.has = append(row.has, true)
		}
		rows = append(rows, row)
	}
	return rows
}

func (s *ScenarioReport) describe() string {
	var d string
	if s.Name == Cold {
		d = fmt.Sprintf("%d new tenants per target over %s", s.Tenants, plural(s.Rounds, "round"))
	} else {
		who := fmt.Sprintf("%d tenants x %d conns", s.Tenants, s.ConnsPerTenant)
		switch s.Name {
		case FairnessAlone:
			who = fmt.Sprintf("%d small tenants x %d conns without the heavy one", s.Tenants, s.ConnsPerTenant)
		case Fairness:
			who = fmt.Sprintf("%d small tenants x %d conns + 1 heavy tenant x %d conns", s.Tenants-1, s.ConnsPerTenant, s.HeavyConns)
		}
		d = fmt.Sprintf("%s, %s of %v", who, plural(s.Rounds, "round"),
			(time.Duration(s.DurationMs*float64(time.Millisecond)) / time.Duration(max(s.Rounds, 1))).Round(time.Millisecond))
		if s.Rate > 0 {
			d += fmt.Sprintf(", open loop at %g queries/s", s.Rate)
		}
	}
	return d + ", query " + strconv.Quote(s.Query)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// formatFigure formats f of result ri, with its ratio after the first.
func formatFigure(f figure, ri int, ratio map[string]float64) string {
	var v string
	switch {
	case f.times:
		v = strconv.FormatFloat(f.v, 'f', 2, 64) + "x"
	case f.integer:
		v = strconv.FormatFloat(f.v, 'f', 0, 64)
	case f.v >= 100 || f.v <= -100:
		v = strconv.FormatFloat(f.v, 'f', 0, 64)
	case f.v >= 10 || f.v <= -10:
		v = strconv.FormatFloat(f.v, 'f', 1, 64)
	default:
		v = strconv.FormatFloat(f.v, 'f', 3, 64)
	}
	if ri == 0 {
		return v
	}
	if x, ok := ratio[f.key]; ok {
		return v + " (" + strconv.FormatFloat(x, 'f', 2, 64) + "x)"
	}
	return v + "        "
}

// writeColumns lays rows out with the first column left-aligned and the
// others right-aligned.
func writeColumns(b *strings.Builder, rows [][]string) {
	var widths []int
	for _, row := range rows {
		for i, c := range row {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, row := range rows {
		b.WriteString("  ")
		for i, c := range row {
			pad := strings.Repeat(" ", widths[i]-len(c))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		b.WriteByte('\n')
	}
}
