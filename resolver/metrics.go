package resolver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgtenant/pgtenant/provision"
)

// Metrics are the resolver's Prometheus metrics. Create them with
// NewMetrics and pass them in Config.Metrics; a nil *Metrics records
// nothing. No metric has a tenant label (tenant IDs are unbounded).
type Metrics struct {
	// CacheHits counts Resolve calls answered with a cached route.
	CacheHits prometheus.Counter
	// CacheNegativeHits counts Resolve calls answered with a remembered
	// failure (see Config.NegativeTTL).
	CacheNegativeHits prometheus.Counter
	// CacheMisses counts Resolve calls that had to join or start a fill.
	CacheMisses prometheus.Counter
	// CacheEvictions counts entries dropped because the cache was full.
	CacheEvictions prometheus.Counter
	// Provisions counts calls of the provider's Create (one per tenant
	// created, or adopted after a crash).
	Provisions prometheus.Counter
	// ProvisionFailures counts Create calls that failed.
	ProvisionFailures prometheus.Counter
	// ProvisionSeconds is how long Create calls took, failed ones included.
	ProvisionSeconds prometheus.Histogram
	// CatalogErrors counts fills that failed because the catalog could not
	// be read or written.
	CatalogErrors prometheus.Counter
	// CreatesRefused counts tenant creations refused, by reason:
	// create_api and create_off (tenant.create kept a client, or with off
	// the admin API, from creating a missing tenant), max_tenants and
	// creates_per_minute (a cluster-wide limit was reached).
	CreatesRefused *prometheus.CounterVec
	// BackgroundCreates is the background creations (slow providers,
	// provision.Estimator) this resolver runs now.
	BackgroundCreates prometheus.Gauge
	// BackgroundCreatesStarted counts background creations started here
	// (taking over one whose creator fell silent included).
	BackgroundCreatesStarted prometheus.Counter
	// BackgroundCreateFailures counts background creations that failed.
	BackgroundCreateFailures prometheus.Counter
	// CreatingAnswers counts resolves answered "being created" (the
	// proxy's 57P03), from this instance's creation or another's.
	CreatingAnswers prometheus.Counter
}

// NewMetrics creates the resolver metrics and registers them on reg (nil:
// not registered). It panics if they are already registered on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "pgtenant", "resolver"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &Metrics{
		CacheHits:         counter("cache_hits_total", "Resolves answered from the route cache."),
		CacheNegativeHits: counter("cache_negative_hits_total", "Resolves answered with a remembered failure (negative_ttl)."),
		CacheMisses:       counter("cache_misses_total", "Resolves that missed the route cache (and joined or started a fill)."),
		CacheEvictions:    counter("cache_evictions_total", "Routes evicted from the cache because it was full (cache.size)."),
		Provisions:        counter("provisions_total", "Calls of the provider to create a tenant's database."),
		ProvisionFailures: counter("provision_failures_total", "Calls of the provider to create a tenant's database that failed."),
		ProvisionSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "provision_seconds",
			Help:    "Time the provider took to create a tenant's database (failures included).",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300},
		}),
		CatalogErrors: counter("catalog_errors_total", "Route fills that failed on the catalog (unreachable, timed out, wrong key)."),
		CreatesRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "creates_refused_total",
			Help: "Tenant creations refused: create_api, create_off (tenant.create), max_tenants, creates_per_minute.",
		}, []string{"reason"}),
		BackgroundCreates: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "background_creates_in_flight",
			Help: "Background creations of tenants (slow providers) running on this router.",
		}),
		BackgroundCreatesStarted: counter("background_creates_total", "Background creations of tenants started on this router (takeovers included)."),
		BackgroundCreateFailures: counter("background_create_failures_total", "Background creations of tenants that failed on this router."),
		CreatingAnswers:          counter("creating_answers_total", "Resolves answered 'tenant is being created' (57P03 to clients)."),
	}
	if reg != nil {
		reg.MustRegister(m.CacheHits, m.CacheNegativeHits, m.CacheMisses, m.CacheEvictions,
			m.Provisions, m.ProvisionFailures, m.ProvisionSeconds, m.CatalogErrors, m.CreatesRefused,
			m.BackgroundCreates, m.BackgroundCreatesStarted, m.BackgroundCreateFailures, m.CreatingAnswers)
	}
	return m
}

// lookedUp records how the cache answered one Resolve.
func (m *Metrics) lookedUp(hit bool, e entry) {
	switch {
	case m == nil:
	case !hit:
		m.CacheMisses.Inc()
	case e.err != nil:
		m.CacheNegativeHits.Inc()
	default:
		m.CacheHits.Inc()
	}
}

func (m *Metrics) evicted() {
	if m != nil {
		m.CacheEvictions.Inc()
	}
}

func (m *Metrics) provisioned(start time.Time, err error) {
	if m == nil {
		return
	}
	m.Provisions.Inc()
	if err != nil {
		m.ProvisionFailures.Inc()
	}
	m.ProvisionSeconds.Observe(time.Since(start).Seconds())
}

func (m *Metrics) catalogError() {
	if m != nil {
		m.CatalogErrors.Inc()
	}
}

// refused records a refused creation; reason is a CreatesRefused label.
func (m *Metrics) refused(reason string) {
	if m != nil {
		m.CreatesRefused.WithLabelValues(reason).Inc()
	}
}

// limitReason is the CreatesRefused label of a provision.LimitError setting.
func limitReason(setting string) string {
	switch setting {
	case provision.LimitMaxTenants:
		return "max_tenants"
	case provision.LimitCreatesPerMinute:
		return "creates_per_minute"
	}
	return "limit"
}

func (m *Metrics) backgroundStarted() {
	if m != nil {
		m.BackgroundCreatesStarted.Inc()
		m.BackgroundCreates.Inc()
	}
}

func (m *Metrics) backgroundEnded() {
	if m != nil {
		m.BackgroundCreates.Dec()
	}
}

func (m *Metrics) backgroundFailed() {
	if m != nil {
		m.BackgroundCreateFailures.Inc()
	}
}

func (m *Metrics) creatingAnswer() {
	if m != nil {
		m.CreatingAnswers.Inc()
	}
}
