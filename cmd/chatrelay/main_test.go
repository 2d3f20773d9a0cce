package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"

	"github.com/chatrelay/chatrelay/internal/redistest"
	"google.golang.org/protobuf/proto"
)

// binDir holds the binary the package's tests build once.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary is the chatrelay binary, built once for the package's tests.
var binary = sync.OnceValues(func() (string, error) {
	var err error
	if binDir, err = os.MkdirTemp("", "chatrelay-bin"); err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "chatrelay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// process is the binary running, serving HTTP at httpAddr.
type process struct {
	cmd      *exec.Cmd
	httpAddr string
	lines    chan string // stderr, line by line
}

// run starts the binary with env added to the test's, on ports the kernel
// picks, and reads its log until it serves.
func run(t *testing.T, env ...string) *process {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &process{cmd: cmd, lines: make(chan string, 1000)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	serving := regexp.MustCompile(`msg="chatrelay serving" grpc=(\S+) http=(\S+)`)
	var logged []string
	timeout := time.After(30 * time.Second)
	for p.httpAddr == "" {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("exited before serving:\n%s", strings.Join(logged, "\n"))
			}
			logged = append(logged, l)
			if strings.Contains(l, "secret-key") {
				t.Fatalf("the API key was logged: %s", l)
			}
			if m := serving.FindStringSubmatch(l); m != nil {
				p.httpAddr = m[2]
			}
		case <-timeout:
			t.Fatalf("not serving within 30s:\n%s", strings.Join(logged, "\n"))
		}
	}
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for range p.lines { // drain so the process never blocks on stderr
		}
		done <- p.cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("did not stop within 15s of SIGTERM")
	}
}

func (p *process) call(t *testing.T, method, path, key, body string) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+p.httpAddr+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestBinaryServesWithConfigAndStopsOnSIGTERM runs the real binary as the
// README does, with a config file and an API key from the environment.
func TestBinaryServesWithConfigAndStopsOnSIGTERM(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "chatrelay.yaml")
	if err := os.WriteFile(cfg, []byte(`
channels:
  - {name: support, platform: whatsapp, id: "15550001111"}
chatbots:
  - {id: bot_welcome, name: welcome, greeting: "Hi {{contact.name}}!"}
api_keys:
  - {name: ci, tenant: acme, key_env: TEST_CHATRELAY_KEY}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := run(t, "CHATRELAY_CONFIG="+cfg, "TEST_CHATRELAY_KEY=secret-key-0123456789")
	chatbot := `{"chatbot":"welcome","from":"api","to":"u1","contact_metadata":{"name":"Ada"}}`
	if code := p.call(t, "POST", "/v1/chatbot-messages", "", chatbot); code != 401 {
		t.Fatalf("without a key: HTTP %d, want 401", code)
	}
	if code := p.call(t, "POST", "/v1/chatbot-messages", "secret-key-0123456789", chatbot); code != 200 {
		t.Fatalf("with the key from the environment: HTTP %d, want 200", code)
	}
	p.stop(t)
}

// An empty configuration file is the defaults.
func TestBinaryAcceptsAnEmptyConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(cfg, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p := run(t, "CHATRELAY_CONFIG="+cfg)
	if code := p.call(t, "POST", "/v1/sessions", "", `{"user":"u1"}`); code != 200 {
		t.Fatalf("CreateSession: HTTP %d", code)
	}
	p.stop(t)
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, the binary exports spans of its
// requests and of its Redis commands to the collector there; /metrics
// serves the process's and the server's metrics.
func TestBinaryExportsTracesAndServesMetrics(t *testing.T) {
	var mu sync.Mutex
	spans := map[string]bool{} // name, and "redis" for any Redis command
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
			return
		}
		mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					spans[s.Name] = true
					for _, a := range s.Attributes {
						if a.Key == "db.system" || a.Key == "db.system.name" {
							spans["redis"] = true
						}
					}
				}
			}
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(b)
	}))
	t.Cleanup(collector.Close)
	rd := redistest.Start(t)
	p := run(t, "OTEL_EXPORTER_OTLP_ENDPOINT="+collector.URL, "OTEL_BSP_SCHEDULE_DELAY=50",
		"CHATRELAY_REDIS_URL=redis://"+rd.Addr)
	if code := p.call(t, "POST", "/v1/sessions", "", `{"user":"u1"}`); code != 200 {
		t.Fatalf("CreateSession: HTTP %d", code)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		done := spans["POST /v1/sessions"] && spans["redis"]
		got := fmt.Sprint(spans)
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the collector has spans %s; want POST /v1/sessions and a Redis command's", got)
		}
		time.Sleep(50 * time.Millisecond) // polling the collector, with a deadline
	}

	resp, err := http.Get("http://" + p.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"go_goroutines ", "process_resident_memory_bytes ", "chatrelay_http_requests_total{", "grpc_server_handled_total{",
		"chatrelay_pubsub_reconnects_total "} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	p.stop(t)
}

func TestBinaryRefusesABadConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(cfg, []byte("api_keys:\n  - {tenant: acme, key_env: UNSET_VARIABLE_FOR_TEST}\n"), 0o600)
	out, err := exec.Command("go", "run", ".", "-config", cfg, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "UNSET_VARIABLE_FOR_TEST is not set") {
		t.Fatalf("want a clear refusal, got err=%v:\n%s", err, out)
	}
	_ = os.WriteFile(cfg, []byte("chatbots:\n  - {id: b, greetting: typo}\n"), 0o600)
	out, err = exec.Command("go", "run", ".", "-config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "greetting") {
		t.Fatalf("want the unknown field named, got err=%v:\n%s", err, out)
	}
}

// webSessionToken creates a web session over REST and asks for a widget
// token for it: the HTTP code of that request.
func (p *process) webSessionToken(t *testing.T, user string) int {
	t.Helper()
	resp, err := http.Post("http://"+p.httpAddr+"/v1/sessions", "application/json", strings.NewReader(`{"platform":"web","user":"`+user+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ses struct {
		SessionID string `json:"session_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ses); err != nil || ses.SessionID == "" {
		t.Fatalf("CreateSession: HTTP %d, %v", resp.StatusCode, err)
	}
	return p.call(t, "POST", "/v1/sessions/"+ses.SessionID+"/widget-tokens", "", `{}`)
}

// The widget works out of the box on memory (one process, a secret made at
// start); on Redis, where replicas must share one, it needs
// widget.secret_env, and says so.
func TestBinaryWidgetSecret(t *testing.T) {
	mem := run(t)
	if code := mem.webSessionToken(t, "visitor-1"); code != 200 {
		t.Fatalf("memory, no configuration: CreateWidgetToken HTTP %d, want 200", code)
	}
	if code := mem.call(t, "GET", "/widget.js", "", ""); code != 200 {
		t.Fatalf("GET /widget.js: HTTP %d", code)
	}
	mem.stop(t)

	rd := redistest.Start(t)
	bare := run(t, "CHATRELAY_REDIS_URL=redis://"+rd.Addr)
	if code := bare.webSessionToken(t, "visitor-2"); code != 400 {
		t.Fatalf("Redis without widget.secret_env: CreateWidgetToken HTTP %d, want 400", code)
	}
	bare.stop(t)

	cfg := filepath.Join(t.TempDir(), "chatrelay.yaml")
	if err := os.WriteFile(cfg, []byte("widget:\n  secret_env: TEST_WIDGET_SECRET\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	shared := run(t, "CHATRELAY_REDIS_URL=redis://"+rd.Addr, "CHATRELAY_CONFIG="+cfg, "TEST_WIDGET_SECRET=widget-secret-0123456789abcdef-0123")
	if code := shared.webSessionToken(t, "visitor-3"); code != 200 {
		t.Fatalf("Redis with widget.secret_env: CreateWidgetToken HTTP %d, want 200", code)
	}
	shared.stop(t)
}
