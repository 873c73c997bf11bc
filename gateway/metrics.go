package main

// Prometheus metrics of the gateway itself, in the text exposition format (no client library: Debian's
// grpc-go is all this build depends on). The Python server behind it keeps its own metrics (every call that
// reaches it, by method, model and code); these add what only the gateway sees: calls it answered itself
// (refused because the queue is full, unauthenticated, past their deadline while queued), the time a batched
// call spent in all (queue included), how large the batches are, and the queue's depth.

import (
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
)

var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
var batchBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096}

type histogram struct {
	bounds []float64
	counts []uint64 // per bucket (not cumulative); one more for +Inf
	sum    float64
	n      uint64
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i := sort.SearchFloat64s(h.bounds, v) // first bound >= v
	h.counts[i]++
	h.sum += v
	h.n++
}

func (h *histogram) write(b *strings.Builder, name, labels string) {
	sep := ""
	if labels != "" {
		sep = ","
	}
	var cum uint64
	for i, bound := range h.bounds {
		cum += h.counts[i]
		fmt.Fprintf(b, "%s_bucket{%s%sle=\"%g\"} %d\n", name, labels, sep, bound, cum)
	}
	cum += h.counts[len(h.bounds)]
	fmt.Fprintf(b, "%s_bucket{%s%sle=\"+Inf\"} %d\n", name, labels, sep, cum)
	fmt.Fprintf(b, "%s_sum{%s} %g\n%s_count{%s} %d\n", name, labels, h.sum, name, labels, h.n)
}

type callKey struct {
	method string
	code   codes.Code
}

// metrics is safe for concurrent use; one lock, held for a few hundred nanoseconds per call.
type metrics struct {
	mu              sync.Mutex
	calls           map[callKey]uint64
	latency         map[string]*histogram // batched calls, by method: arrival to reply, queue included
	batch           *histogram            // calls per batch
	backendFailures uint64
	queueDepth      func() int
}

func newMetrics(queueDepth func() int) *metrics {
	return &metrics{calls: map[callKey]uint64{}, latency: map[string]*histogram{}, batch: newHistogram(batchBuckets),
		queueDepth: queueDepth}
}

func (m *metrics) call(method string, code codes.Code, since time.Time, batched bool) {
	m.mu.Lock()
	m.calls[callKey{method, code}]++
	if batched {
		h := m.latency[method]
		if h == nil {
			h = newHistogram(latencyBuckets)
			m.latency[method] = h
		}
		h.observe(time.Since(since).Seconds())
	}
	m.mu.Unlock()
}

func (m *metrics) sent(calls int, failed bool) {
	m.mu.Lock()
	m.batch.observe(float64(calls))
	if failed {
		m.backendFailures++
	}
	m.mu.Unlock()
}

func (m *metrics) text() string {
	var b strings.Builder
	m.mu.Lock()
	defer m.mu.Unlock()
	b.WriteString("# HELP ganserve_gateway_calls_total calls answered by the gateway, by method and final status code\n")
	b.WriteString("# TYPE ganserve_gateway_calls_total counter\n")
	keys := make([]callKey, 0, len(m.calls))
	for k := range m.calls {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].method < keys[j].method || keys[i].method == keys[j].method && keys[i].code < keys[j].code
	})
	for _, k := range keys {
		fmt.Fprintf(&b, "ganserve_gateway_calls_total{method=%q,code=%q} %d\n", k.method, codeName(k.code), m.calls[k])
	}
	b.WriteString("# HELP ganserve_gateway_call_seconds Sample/SampleConditional time in the gateway, queue included\n")
	b.WriteString("# TYPE ganserve_gateway_call_seconds histogram\n")
	methods := make([]string, 0, len(m.latency))
	for k := range m.latency {
		methods = append(methods, k)
	}
	sort.Strings(methods)
	for _, k := range methods {
		m.latency[k].write(&b, "ganserve_gateway_call_seconds", fmt.Sprintf("method=%q", k))
	}
	b.WriteString("# HELP ganserve_gateway_batch_calls calls per batch sent to the Python server\n")
	b.WriteString("# TYPE ganserve_gateway_batch_calls histogram\n")
	m.batch.write(&b, "ganserve_gateway_batch_calls", "")
	b.WriteString("# HELP ganserve_gateway_backend_failures_total batches lost to a failed connection to the Python server\n")
	b.WriteString("# TYPE ganserve_gateway_backend_failures_total counter\n")
	fmt.Fprintf(&b, "ganserve_gateway_backend_failures_total %d\n", m.backendFailures)
	b.WriteString("# HELP ganserve_gateway_queue_depth calls waiting for a batch\n# TYPE ganserve_gateway_queue_depth gauge\n")
	fmt.Fprintf(&b, "ganserve_gateway_queue_depth %d\n", m.queueDepth())
	return b.String()
}

// codeName is the gRPC status name as the Python server's metrics spell it (RESOURCE_EXHAUSTED).
func codeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
	codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
	codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
	codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// serveMetrics serves /metrics on addr; the bound address is returned (addr may ask for port 0).
func (m *metrics) serve(addr string) (net.Addr, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		fmt.Fprint(w, m.text())
	})
	// Timeouts: an idle or slow connection is closed, not kept with its descriptor for as long as it likes.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 10 * time.Second}
	go srv.Serve(&limitListener{Listener: lis, max: 64})
	return lis.Addr(), nil
}
