// Package telemetry turns tracing on from the standard OpenTelemetry
// environment (docs/design.md §11): with an OTLP endpoint set, spans go to
// it; without one, nothing is traced and nothing is paid.
package telemetry

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Tracing is the tracer provider the environment asks for, and how to
// flush and stop it; a nil provider when tracing is off. It is on when
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set,
// unless OTEL_SDK_DISABLED is true or OTEL_TRACES_EXPORTER is none. The
// protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf (the default) or grpc. The
// exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers, TLS,
// timeout), and the SDK reads OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
// and OTEL_TRACES_SAMPLER*.
func Tracing(ctx context.Context) (trace.TracerProvider, func(context.Context) error, error) {
	get := func(k string) string { return strings.TrimSpace(os.Getenv(k)) }
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") || strings.EqualFold(get("OTEL_TRACES_EXPORTER"), "none") ||
		get("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return nil, func(context.Context) error { return nil }, nil
	}
	protocol := get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = get("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdktrace.SpanExporter
	var err error
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: chatrelay exports traces over http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	res, err := withServiceName(resource.Default())
	if err != nil {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// withServiceName names the service chatrelay, unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES (which the SDK's resource reads) named it.
func withServiceName(res *resource.Resource) (*resource.Resource, error) {
	if v, ok := res.Set().Value(semconv.ServiceNameKey); ok && !strings.HasPrefix(v.AsString(), "unknown_service") {
		return res, nil
	}
	return resource.Merge(res, resource.NewSchemaless(semconv.ServiceName("chatrelay")))
}

// Propagators carry a trace across calls: W3C trace context and baggage.
var Propagators = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
