package main

// Prometheus metrics of the gateway itself (prometheus/client_golang, from Debian's registry like grpc-go). The
// Python server behind it keeps its own metrics (every call that reaches it, by method, model and code); these add
// what only the gateway sees: calls it answered itself (refused because the queue is full, unauthenticated, past
// their deadline while queued), the time a batched call spent in all (queue included), how large the batches
// are, and the queue's depth.

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"
)

var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
var batchBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096}

// metrics is safe for concurrent use (client_golang's collectors are); one registry per gateway, so tests that
// start several gateways in one process would not collide.
type metrics struct {
	registry        *prometheus.Registry
	calls           *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	batch           prometheus.Histogram
	backendFailures prometheus.Counter
}

func newMetrics(queueDepth func() int) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ganserve_gateway_calls_total",
			Help: "calls answered by the gateway, by method and final status code",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ganserve_gateway_call_seconds",
			Help:    "Sample/SampleConditional time in the gateway, queue included",
			Buckets: latencyBuckets,
		}, []string{"method"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ganserve_gateway_batch_calls",
			Help:    "calls per batch sent to the Python server",
			Buckets: batchBuckets,
		}),
		backendFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ganserve_gateway_backend_failures_total",
			Help: "batches lost to a failed connection to the Python server",
		}),
	}
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ganserve_gateway_queue_depth",
		Help: "calls waiting for a batch",
	}, func() float64 { return float64(queueDepth()) })
	m.registry.MustRegister(m.calls, m.latency, m.batch, m.backendFailures, depth)
	return m
}

// call records a call the gateway answered; `batched` calls also record their time since `since`.
func (m *metrics) call(method string, code codes.Code, since time.Time, batched bool) {
	m.calls.WithLabelValues(method, codeName(code)).Inc()
	if batched {
		m.latency.WithLabelValues(method).Observe(time.Since(since).Seconds())
	}
}

// sent records a batch sent to the Python server (and whether its connection failed).
func (m *metrics) sent(calls int, failed bool) {
	m.batch.Observe(float64(calls))
	if failed {
		m.backendFailures.Inc()
	}
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

// serve serves /metrics on addr; the bound address is returned (addr may ask for port 0). At most 64
// connections at once, and idle or slow ones are closed, so a client that opens many cannot pin descriptors.
func (m *metrics) serve(addr string) (net.Addr, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	// Timeouts: an idle or slow connection is closed, not kept with its descriptor for as long as it likes.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 10 * time.Second}
	go srv.Serve(&limitListener{Listener: lis, max: 64})
	return lis.Addr(), nil
}
