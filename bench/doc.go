// Package bench measures how a Postgres connection router behaves under
// fan-out: many tenants, many connections each, connection storms, idle
// connections held by the thousand, and tenants connecting for the first
// time. `pgtenant bench` is its command-line front end.
//
// It is a client like any other: it drives targets given by connection
// strings, in which "{tenant}" is replaced by tenant IDs (TenantPrefix+"0",
// TenantPrefix+"1", ...), e.g. postgres://{tenant}:secret@127.0.0.1:6432/app
// for pgtenant, which takes the tenant from the user name. A connection
// string without "{tenant}" is used as is, e.g. Postgres itself as the
// baseline. It opens connections with pgconn, one goroutine per
// connection, so one process can hold tens of thousands of them (raise the
// open-file limit first: RaiseFileLimit).
//
// # Scenarios
//
//   - steady: Tenants x ConnsPerTenant connections held at once, each
//     running Query in a closed loop (or, with Rate, open-loop arrivals)
//   - storm: a fresh connection for every query
//   - idle: connections held without traffic, then probed once
//   - scale: steady at 1, 2, 4, ... Tenants tenants
//   - cold: the first connect of NewTenants tenants that do not exist yet;
//     a target may do its own work per new tenant instead (Target.Cold),
//     e.g. a bare CREATE DATABASE as the baseline routers are held to
//   - fairness: a heavy tenant (HeavyConns clients) next to small ones
//     (ConnsPerTenant each), closed loop, in two steps: fairness-alone, the
//     small tenants alone, then fairness, all together; each reports the
//     small tenants' and the heavy tenant's query latencies apart
//
// Every scenario runs against each target in turn, in rounds (A B A B ...),
// because on a shared, noisy machine only side-by-side ratios mean
// something; the figures of all rounds are merged per target, and each
// figure is also given as a ratio to the first target's.
//
// Latencies go to a Histogram: log-scaled buckets, accurate to 0.4%, fixed
// size, lock-free and allocation-free to record into. Failures are counted
// by SQLSTATE, or as "network" or "timeout" when there is none.
//
// # JSON report
//
// Report.WriteJSON writes this shape, which is stable: fields may be added,
// never renamed or removed.
//
//	{
//	  "scenarios": [                  // in the order they ran; scale: one per step
//	    {
//	      "name": "steady",             // steady | storm | idle | scale | cold | fairness-alone | fairness
//	      "tenants": 4,                 // tenants driven (cold: new tenants per target)
//	      "conns_per_tenant": 4,        // connections (storm: workers) per tenant (fairness: per small tenant)
//	      "heavy_conns": 400,           // fairness step only: the heavy tenant's connections
//	      "rounds": 3,
//	      "duration_ms": 5000,          // planned time per target over all rounds (cold: 0)
//	      "rate": 0,                    // open-loop queries/s, 0 = closed loop
//	      "query": "SELECT 1",
//	      "results": [                  // one per target, the first target first
//	        {
//	          "target": "direct",       // the target's label
//	          "ratio": {"query_p50_ms": 1.0, ...},  // each figure / the first target's (omitted where that is 0)
//	          "elapsed_ms": 5003.1,     // measured time, summed over rounds
//	          "held_conns": 16,         // connections open at once (steady, scale, idle)
//	          "connects": 48,           // successful connects
//	          "connect_p50_ms": 1.9, "connect_p90_ms": 2.4, "connect_p99_ms": 3.0, "connect_max_ms": 3.1,
//	          "connections_per_s": 0,   // connects / elapsed (storm, cold)
//	          "queries": 81234,         // successful queries
//	          "query_p50_ms": 0.09, "query_p90_ms": 0.15, "query_p99_ms": 0.4, "query_max_ms": 7.2,
//	          "queries_per_s": 16237.0, // queries / elapsed (steady, scale, storm, fairness)
//	          "ttfq_count": 5,          // cold only: new tenants that answered a first query,
//	          "ttfq_p50_ms": 210.0, "ttfq_p90_ms": 260.1, "ttfq_p99_ms": 270.3, "ttfq_max_ms": 270.3,
//	                                    //   and the time from starting to connect to that answer
//	                                    //   (a target with a Cold hook: its calls, and their time)
//	          "small_queries": 9000,    // fairness steps only: the small tenants' queries,
//	          "small_query_p50_ms": 0.2, "small_query_p95_ms": 0.4, "small_query_p99_ms": 0.9,
//	          "small_p99_vs_alone": 1.6,//   fairness: small_query_p99_ms / the same target's in fairness-alone,
//	          "heavy_queries": 90000,   //   and the heavy tenant's (0 in fairness-alone)
//	          "heavy_query_p50_ms": 4.1, "heavy_query_p99_ms": 9.8, "heavy_queries_per_s": 9000.0,
//	          "rss_before_kb": 20480,   // only for a target with a PID: VmRSS before the first round,
//	          "rss_after_kb": 24576,    //   at the end of the last round (connections still open),
//	          "rss_delta_kb": 4096,     //   mean growth per round,
//	          "rss_per_conn_kb": 256,   //   and per held connection (steady, scale, idle)
//	          "threads_before": 8, "threads_after": 9,
//	          "errors_total": 0,
//	          "errors": {"28P01": 3, "network": 1}  // by SQLSTATE, "network" or "timeout"; {} if none
//	        }
//	      ]
//	    }
//	  ],
//	  "partial": true                 // only when the run was interrupted
//	}
//
// Units: every *_ms figure is in milliseconds (a float), *_per_s figures
// are per second, *_kb figures are kilobytes (1024 bytes) as Linux reports
// VmRSS. Percentiles use the nearest-rank definition. Query latency counts
// from when the query was due: in a closed loop when the client sent it, in
// an open loop (rate > 0) its scheduled arrival, so queueing behind slow
// queries is included. In storm, open-loop latency thus includes connecting.
//
// # HTML report
//
// WriteHTML writes a report as one self-contained HTML page (inline CSS and
// SVG, no script, nothing fetched) with, per scenario, its parameters, the
// figures of WriteTable with their ratios to the first target, and plots,
// each target in the same colour throughout:
//
//   - latency CDFs of connects and queries (cold: and of first queries):
//     latency on a log scale, fraction of the values up to it from 0 to 1
//   - open connections over time, and (steady, scale, storm, fairness)
//     queries per second, each target's rounds laid end to end
//
// The plots are drawn from Result fields that the JSON report leaves out:
// ConnectCDF, QueryCDF and TTFQCDF (at most about 400 points each, taken
// from the histograms) and Timeline (a Sample of the open connections and
// the counts when a round starts, every 100ms or, in rounds shorter than
// 10s, more often, and when it ends, before its connections are closed).
// A report decoded from JSON therefore renders without plots.
package bench
