// Package metrics holds brokerd's Prometheus collectors on a registry of their own, so the
// exposition carries exactly these series plus the Go runtime and process collectors. Any package
// may observe into them; only broker/daemon serves them (on an opt-in loopback TCP listener or a
// 0600 Unix socket of their own, never on the gRPC socket). Labels must come from bounded sets:
// never a token, a query, a raw client-supplied string or an upstream body.
package metrics

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry is what brokerd exposes at /metrics.
var Registry = prometheus.NewRegistry()

const namespace = "credbroker"

var (
	// Calls counts finished gRPC calls by full method, tool (Search only; a name from the tool
	// table, "unknown" for anything else) and status code.
	Calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "grpc_calls_total",
		Help: "gRPC calls handled, by full method, tool (Search only) and status code.",
	}, []string{"method", "tool", "code"})

	// CallDuration observes how long each gRPC call took, by full method.
	CallDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "grpc_call_duration_seconds",
		Help:    "gRPC call latency, by full method.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"method"})

	// UpstreamDuration observes each upstream HTTP attempt, from sending the request to the
	// response headers (retries are separate attempts), by URL path.
	UpstreamDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_request_duration_seconds",
		Help:    "Upstream HTTP attempt latency to response headers, by URL path.",
		Buckets: []float64{.025, .05, .1, .25, .5, 1, 2, 4, 8, 15, 30},
	}, []string{"path"})

	// UpstreamResponses counts upstream HTTP attempts by URL path and status code ("error" when no
	// response arrived: dial, TLS, timeout).
	UpstreamResponses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_responses_total",
		Help: "Upstream HTTP attempts, by URL path and HTTP status code (\"error\" if none arrived).",
	}, []string{"path", "status"})

	// TokenValidations counts bearer-token checks by result: "valid" or "invalid" (malformed,
	// unknown, wrong secret, revoked, expired, spent, or presented by the wrong uid).
	TokenValidations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "token_validations_total",
		Help: "Bearer token validations, by result (valid, invalid).",
	}, []string{"result"})

	// Rotations counts credential rotations that took effect, by credential name. Increment it
	// with RotationSucceeded.
	Rotations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "credential_rotations_total",
		Help: "Credential rotations that took effect, by credential.",
	}, []string{"credential"})

	// RotationFailures counts credential rotations that were attempted and failed, by credential
	// name. Increment it with RotationFailed.
	RotationFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "credential_rotation_failures_total",
		Help: "Credential rotations that were attempted and failed, by credential.",
	}, []string{"credential"})

	// CredentialsDue is how many credentials are due for rotation now. Set it with
	// SetCredentialsDue; brokerd's systemd STATUS= line reports the same number.
	CredentialsDue = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "credentials_due",
		Help: "Credentials due for rotation.",
	})

	// AuditWriteDuration observes how long making one audit record durable took (the caller's
	// wait, group commit included). Observe into it with ObserveAuditWrite.
	AuditWriteDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "audit_write_duration_seconds",
		Help:    "Time for an audit record to become durable, as seen by the call that wrote it.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})

	// AuditCommits counts audit group commits by result ("ok", "failed"); AuditRecords counts the
	// records they carried and AuditCommitDuration times them. Records per commit and the
	// commit time show whether the audit writer is the bottleneck (BENCHMARKS.md).
	AuditCommits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_commits_total",
		Help: "Audit group commits (a write and fdatasync of the audit journal, or a bbolt transaction when the group changes state), by result (ok, failed).",
	}, []string{"result"})
	AuditRecords = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_committed_records_total",
		Help: "Audit records made durable by group commits.",
	})
	AuditCommitDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "audit_commit_duration_seconds",
		Help:    "Duration of one audit group commit (the journal write or bbolt transaction with its fdatasyncs).",
		Buckets: []float64{.0002, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})

	// AuditCheckpoints counts moves of the audit journal's records into the database (one bbolt
	// transaction each, store/journal.go) by result; AuditCheckpointedRecords the records moved
	// and AuditCheckpointDuration times them: appends wait behind a checkpoint.
	AuditCheckpoints = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_checkpoints_total",
		Help: "Checkpoints of the audit journal into the database (one bbolt transaction each), by result (ok, failed).",
	}, []string{"result"})
	AuditCheckpointedRecords = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_checkpointed_records_total",
		Help: "Audit records moved from the journal into the database by checkpoints.",
	})
	AuditCheckpointDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "audit_checkpoint_duration_seconds",
		Help:    "Duration of one audit journal checkpoint (appends wait behind it).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})

	// AuditPruned counts audit records deleted by retention; AuditPruneBatchDuration times each
	// prune batch (one bbolt transaction of at most 1000 deletions, run between group commits:
	// the longest a call's audit append waits behind retention); AuditLastPrune is when the last
	// batch finished, as a Unix time (0: retention has not run). All are fed by ObserveAuditPrune.
	AuditPruned = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_pruned_records_total",
		Help: "Audit records deleted by retention (--audit-retention).",
	})
	AuditPruneBatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "audit_prune_batches_total",
		Help: "Audit retention prune batches (one bbolt transaction each), by result (ok, failed).",
	}, []string{"result"})
	AuditPruneBatchDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "audit_prune_batch_duration_seconds",
		Help:    "Duration of one audit retention prune batch (a call's audit append waits behind at most one).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})
	AuditLastPrune = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "audit_last_prune_timestamp_seconds",
		Help: "Unix time the last audit retention prune batch finished successfully (0 if none has).",
	})

	// KeysetReloads counts master keyset reloads (SIGHUP) by result: "accepted" or "rejected".
	KeysetReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "master_keyset_reloads_total",
		Help: "Master keyset reloads (SIGHUP), by result (accepted, rejected).",
	}, []string{"result"})

	// CacheLookups counts Search calls that could use the result cache, by result: "hit" or "miss".
	CacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "cache_lookups_total",
		Help: "Result cache lookups, by result (hit, miss).",
	}, []string{"result"})

	// CreditsSaved counts the upstream credits that cache hits would otherwise have cost.
	CreditsSaved = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "cache_credits_saved_total",
		Help: "Upstream credits the result cache saved.",
	})

	// KeyReflections counts upstream answers that echoed the credential they were sent with (in the
	// body, a header or error.code); the key was redacted before anything else saw the answer.
	KeyReflections = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_key_reflections_total",
		Help: "Upstream answers that echoed the credential (redacted before use), audited as key-reflected.",
	})

	// Panics counts panics recovered off the handlers' goroutines (a search's computation): each is
	// a bug in brokerd that failed its call (and the callers sharing it) instead of ending brokerd.
	Panics = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "recovered_panics_total",
		Help: "Panics in a search's computation (a bug in brokerd) that failed only their calls, with INTERNAL.",
	})

	// Refusals counts calls and connections refused before they did anything (no or bad token,
	// admin call from a non-admin, connection caps, ...), by reason: a fixed set (broker's
	// Refused* constants). The audit log keeps them coalesced per uid (broker/refusals.go).
	Refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "refusals_total",
		Help: "Calls and connections refused before doing anything, by reason.",
	}, []string{"reason"})

	// Connections is how many client connections brokerd holds open (broker/connlimit).
	Connections = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "connections_open",
		Help: "Client connections open on the Unix socket.",
	})

	buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Always 1; labels carry brokerd's version and the Go version it was built with.",
	}, []string{"version", "goversion"})

	credentialsDue atomic.Int64

	// StoreCommits is the database's newest write transaction id (SetStoreCommits), which grows by
	// one per commit: its rate is durable commits per second, whatever made them.
	StoreCommits = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: namespace, Name: "store_commits_total",
		Help: "Write transactions committed to the database (each one durable commit), counted from the database's creation.",
	}, func() float64 {
		if f := storeCommits.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	storeCommits atomic.Pointer[func() uint64]
)

// SetStoreCommits makes credbroker_store_commits_total read f (store.Store.LastTxID).
func SetStoreCommits(f func() uint64) { storeCommits.Store(&f) }

func init() {
	Registry.MustRegister(
		Calls, CallDuration, UpstreamDuration, UpstreamResponses, TokenValidations,
		Rotations, RotationFailures, CredentialsDue, AuditWriteDuration, KeysetReloads, buildInfo,
		AuditCommits, AuditRecords, AuditCommitDuration, StoreCommits,
		AuditCheckpoints, AuditCheckpointedRecords, AuditCheckpointDuration,
		AuditPruned, AuditPruneBatches, AuditPruneBatchDuration, AuditLastPrune,
		CacheLookups, CreditsSaved, KeyReflections, Panics, Refusals, Connections,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Series with a fixed label set exist from the start, so a dashboard sees 0, not "no data".
	for _, r := range []string{"valid", "invalid"} {
		TokenValidations.WithLabelValues(r)
	}
	for _, r := range []string{"accepted", "rejected"} {
		KeysetReloads.WithLabelValues(r)
	}
	for _, r := range []string{"hit", "miss"} {
		CacheLookups.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "failed"} {
		AuditPruneBatches.WithLabelValues(r)
		AuditCheckpoints.WithLabelValues(r)
	}
}

// SetBuildInfo sets credbroker_build_info{version, goversion} to 1.
func SetBuildInfo(version string) {
	buildInfo.Reset()
	buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
}

// Series every call touches, resolved once: WithLabelValues hashes and checks every label value
// and takes the vector's lock on each call, which on the Search path added up to microseconds.
var (
	tokenValid, tokenInvalid = TokenValidations.WithLabelValues("valid"), TokenValidations.WithLabelValues("invalid")
	cacheHits, cacheMisses   = CacheLookups.WithLabelValues("hit"), CacheLookups.WithLabelValues("miss")
	auditCommitsOK           = AuditCommits.WithLabelValues("ok")

	series sync.Map // seriesKey -> prometheus.Counter or prometheus.Observer
)

// seriesKey names one series of a vector: which vector, and its label values (unused ones "").
type seriesKey struct {
	vec     any
	a, b, c string
}

// CallCounter is the grpc_calls_total series for method, tool and code, resolved once. Like
// every series kept here its labels come from bounded sets (registered methods, the tool table,
// gRPC codes, upstream paths and statuses), so the map stays small.
func CallCounter(method, tool, code string) prometheus.Counter {
	k := seriesKey{Calls, method, tool, code}
	if v, ok := series.Load(k); ok {
		return v.(prometheus.Counter)
	}
	v, _ := series.LoadOrStore(k, Calls.WithLabelValues(method, tool, code))
	return v.(prometheus.Counter)
}

// CallDurationOf is the call duration histogram of method, resolved once.
func CallDurationOf(method string) prometheus.Observer {
	return observer(CallDuration, method)
}

// UpstreamObserve records one upstream attempt to path: its duration and its status code
// ("error" when there was no answer).
func UpstreamObserve(path, code string, took time.Duration) {
	observer(UpstreamDuration, path).Observe(took.Seconds())
	k := seriesKey{UpstreamResponses, path, code, ""}
	v, ok := series.Load(k)
	if !ok {
		v, _ = series.LoadOrStore(k, UpstreamResponses.WithLabelValues(path, code))
	}
	v.(prometheus.Counter).Inc()
}

func observer(vec *prometheus.HistogramVec, label string) prometheus.Observer {
	k := seriesKey{vec, label, "", ""}
	if v, ok := series.Load(k); ok {
		return v.(prometheus.Observer)
	}
	v, _ := series.LoadOrStore(k, vec.WithLabelValues(label))
	return v.(prometheus.Observer)
}

// TokenValidated counts one bearer-token check.
func TokenValidated(valid bool) {
	if valid {
		tokenValid.Inc()
	} else {
		tokenInvalid.Inc()
	}
}

// RotationSucceeded counts a rotation of credential that took effect.
func RotationSucceeded(credential string) { Rotations.WithLabelValues(credential).Inc() }

// RotationFailed counts a rotation of credential that was attempted and failed.
func RotationFailed(credential string) { RotationFailures.WithLabelValues(credential).Inc() }

// SetCredentialsDue records how many credentials are due for rotation.
func SetCredentialsDue(n int) {
	credentialsDue.Store(int64(n))
	CredentialsDue.Set(float64(n))
}

// CredentialsDueCount returns the value last given to SetCredentialsDue.
func CredentialsDueCount() int { return int(credentialsDue.Load()) }

// ObserveAuditCommit records one audit group commit; it is store.Options.OnAuditCommit.
func ObserveAuditCommit(records int, took time.Duration, err error) {
	if err != nil {
		AuditCommits.WithLabelValues("failed").Inc()
		return
	}
	auditCommitsOK.Inc()
	AuditRecords.Add(float64(records))
	AuditCommitDuration.Observe(took.Seconds())
}

// ObserveAuditCheckpoint records one audit journal checkpoint; it is
// store.Options.OnAuditCheckpoint.
func ObserveAuditCheckpoint(records int, took time.Duration, err error) {
	if err != nil {
		AuditCheckpoints.WithLabelValues("failed").Inc()
		return
	}
	AuditCheckpoints.WithLabelValues("ok").Inc()
	AuditCheckpointedRecords.Add(float64(records))
	AuditCheckpointDuration.Observe(took.Seconds())
}

// ObserveAuditPrune records one audit retention prune batch; it is store.Options.OnAuditPrune.
func ObserveAuditPrune(records int, took time.Duration, err error) {
	if err != nil {
		AuditPruneBatches.WithLabelValues("failed").Inc()
		return
	}
	AuditPruneBatches.WithLabelValues("ok").Inc()
	AuditPruned.Add(float64(records))
	AuditPruneBatchDuration.Observe(took.Seconds())
	AuditLastPrune.Set(float64(time.Now().UnixNano()) / 1e9)
}

// Refused counts one refusal for reason.
func Refused(reason string) { Refusals.WithLabelValues(reason).Inc() }

// ObserveAuditWrite records how long one audit record took to become durable.
func ObserveAuditWrite(d time.Duration) { AuditWriteDuration.Observe(d.Seconds()) }

// CacheLookup counts a result cache hit (saving saved credits) or miss.
func CacheLookup(hit bool, saved uint64) {
	if hit {
		cacheHits.Inc()
		CreditsSaved.Add(float64(saved))
		return
	}
	cacheMisses.Inc()
}
