package telemetry

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

func TestTracingIsOffWithoutAnEndpoint(t *testing.T) {
	for name, env := range map[string][]string{
		"nothing set":       nil,
		"sdk disabled":      {"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318", "OTEL_SDK_DISABLED", "true"},
		"exporter none":     {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER", "none"},
		"only the protocol": {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
	} {
		t.Run(name, func(t *testing.T) {
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
				t.Setenv(k, "")
			}
			for i := 0; i < len(env); i += 2 {
				t.Setenv(env[i], env[i+1])
			}
			tp, stop, err := Tracing(context.Background())
			if err != nil || tp != nil {
				t.Fatalf("Tracing() = %v, %v; want off", tp, err)
			}
			if err := stop(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestTracingOnWithAnEndpoint(t *testing.T) {
	for _, protocol := range []string{"", "http/protobuf", "grpc"} {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
		tp, stop, err := Tracing(context.Background())
		if err != nil || tp == nil {
			t.Fatalf("protocol %q: Tracing() = %v, %v", protocol, tp, err)
		}
		_ = stop(context.Background())
	}
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	if _, _, err := Tracing(context.Background()); err == nil || !strings.Contains(err.Error(), "http/json") {
		t.Fatalf("an unsupported protocol: %v", err)
	}
}

func TestServiceNameDefaultsToChatrelay(t *testing.T) {
	res, err := withServiceName(resource.NewSchemaless(semconv.ServiceName("unknown_service:chatrelay.test")))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := res.Set().Value(semconv.ServiceNameKey); v.AsString() != "chatrelay" {
		t.Fatalf("service.name %q", v.AsString())
	}
	res, _ = withServiceName(resource.NewSchemaless(semconv.ServiceName("relay-eu")))
	if v, _ := res.Set().Value(semconv.ServiceNameKey); v.AsString() != "relay-eu" {
		t.Fatalf("a configured service.name became %q", v.AsString())
	}
}
