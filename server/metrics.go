package server

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatrelay/chatrelay/store"
)

// metrics are the server's Prometheus metrics (docs/design.md §11): gRPC's
// (grpcMetrics, as go-grpc-middleware's provider names them), HTTP's, and
// chatrelay's own. No label
// carries a session, user or tenant id: their values are bounded by the
// code and the configuration. A nil *metrics counts nothing, so call sites
// need no test.
type metrics struct {
	grpc *grpcMetrics

	httpRequests *prometheus.CounterVec
	httpDuration *prometheus.HistogramVec

	waiting          prometheus.Gauge
	outcomes         *prometheus.CounterVec
	messages         *prometheus.CounterVec
	inbound          *prometheus.CounterVec
	platformDuration *prometheus.HistogramVec
	deliveries       *prometheus.CounterVec
	backendErrors    *prometheus.CounterVec

	// Children already resolved, by their labels: WithLabelValues hashes
	// every label on every call, which showed in the REST path's profile.
	httpChildren    sync.Map // httpLabels → *httpChild
	messageChildren sync.Map // messageLabels → prometheus.Counter
}

type httpLabels struct {
	method, route string
	code          int
}

type httpChild struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

type messageLabels struct {
	platform string
	dir      store.Direction
	status   store.MessageStatus
}

// latencyBuckets span a millisecond to ten seconds.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newMetrics(reg *prometheus.Registry, st store.Store) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		grpc: newGRPCMetrics(),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_http_requests_total",
			Help: "HTTP requests served, by method, route (the REST route's template) and status code.",
		}, []string{"method", "route", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chatrelay_http_request_duration_seconds",
			Help:    "Time to serve an HTTP request (for a stream, until it ends), by method and route.",
			Buckets: latencyBuckets,
		}, []string{"method", "route"}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatrelay_listeners_waiting",
			Help: "ChatReceive streams waiting for an outcome on this replica.",
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_listener_outcomes_total",
			Help: "ChatReceive outcomes sent to streams, by outcome (success, timeout, filter_mismatch, cancelled).",
		}, []string{"outcome"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_messages_total",
			Help: "Messages recorded by this replica, by platform, direction and delivery status as it answered.",
		}, []string{"platform", "direction", "status"}),
		inbound: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_inbound_events_total",
			Help: "Platform callbacks, by platform and result (accepted, duplicate, bad_signature, ignored, error).",
		}, []string{"platform", "result"}),
		platformDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chatrelay_platform_request_duration_seconds",
			Help:    "Time a platform's API took to answer a send, by platform and result (accepted, refused, error).",
			Buckets: latencyBuckets,
		}, []string{"platform", "result"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_delivery_attempts_total",
			Help: "Attempts to deliver an outbound message to its platform, or an inbound message to a running chatbot (platform chatbot), by platform and result (delivered, failed, retry), counted once the outcome is recorded.",
		}, []string{"platform", "result"}),
		backendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatrelay_backend_errors_total",
			Help: "Calls that failed because the backend (Redis) was unreachable, by RPC method.",
		}, []string{"method"}),
	}
	reg.MustRegister(m.grpc.collectors()...)
	reg.MustRegister(m.httpRequests, m.httpDuration, m.waiting, m.outcomes, m.messages, m.inbound,
		m.platformDuration, m.deliveries, m.backendErrors)
	if s, ok := st.(store.StatsReporter); ok {
		reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "chatrelay_pubsub_reconnects_total",
				Help: "Times this replica's pub/sub connection to Redis was lost and made again.",
			}, func() float64 { return float64(s.Stats().PubSubReconnects) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "chatrelay_redis_queued_calls",
				Help: "Calls waiting in this replica's Redis batcher for a pipeline.",
			}, func() float64 { return float64(s.Stats().QueuedCalls) }),
		)
	}
	return m
}

func (m *metrics) httpRequest(method, route string, code int, took time.Duration) {
	if m == nil {
		return
	}
	key := httpLabels{method, route, code}
	c, ok := m.httpChildren.Load(key)
	if !ok {
		c, _ = m.httpChildren.LoadOrStore(key, &httpChild{
			requests: m.httpRequests.WithLabelValues(method, route, strconv.Itoa(code)),
			duration: m.httpDuration.WithLabelValues(method, route),
		})
	}
	child := c.(*httpChild)
	child.requests.Inc()
	child.duration.Observe(took.Seconds())
}

// wait counts a ChatReceive stream waiting, until the returned function.
func (m *metrics) wait() func() {
	if m == nil {
		return func() {}
	}
	m.waiting.Inc()
	return m.waiting.Dec
}

func (m *metrics) outcome(kind string) {
	if m != nil {
		m.outcomes.WithLabelValues(kind).Inc()
	}
}

var directionName = map[store.Direction]string{store.Inbound: "inbound", store.Outbound: "outbound"}

var statusName = map[store.MessageStatus]string{
	store.StatusReceived: "received", store.StatusPending: "pending", store.StatusSent: "sent",
	store.StatusDelivered: "delivered", store.StatusRead: "read", store.StatusFailed: "failed",
}

func (m *metrics) message(msg *store.Message) {
	if m == nil || msg.ID == "" {
		return
	}
	key := messageLabels{msg.Platform, msg.Direction, msg.Status}
	c, ok := m.messageChildren.Load(key)
	if !ok {
		c, _ = m.messageChildren.LoadOrStore(key, m.messages.WithLabelValues(msg.Platform, directionName[msg.Direction], statusName[msg.Status]))
	}
	c.(prometheus.Counter).Inc()
}

func (m *metrics) inboundEvent(platform, result string) {
	if m != nil {
		m.inbound.WithLabelValues(platform, result).Inc()
	}
}

func (m *metrics) platformCall(platform, result string, took time.Duration) {
	if m != nil {
		m.platformDuration.WithLabelValues(platform, result).Observe(took.Seconds())
	}
}

// attempt counts an attempt at a delivery once its outcome o is recorded:
// delivered (the platform took it), failed (for good), or retry.
func (m *metrics) attempt(platform string, o store.DeliveryOutcome) {
	if m == nil {
		return
	}
	result := "delivered"
	switch o.Status {
	case 0:
		result = "retry"
	case store.StatusFailed:
		result = "failed"
	}
	m.deliveries.WithLabelValues(platform, result).Inc()
}

func (m *metrics) backendError(method string) {
	if m != nil {
		m.backendErrors.WithLabelValues(method).Inc()
	}
}
