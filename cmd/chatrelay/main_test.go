package main_test

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryServesWithConfigAndStopsOnSIGTERM builds the real binary and runs
// it as the README does, with a config file and an API key from the
// environment, on ports the kernel picks.
func TestBinaryServesWithConfigAndStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "chatrelay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "chatrelay.yaml")
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
	cmd := exec.Command(bin, "-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "CHATRELAY_CONFIG="+cfg, "TEST_CHATRELAY_KEY=secret-key-0123456789")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	// Read the log until the serving line names the addresses.
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	serving := regexp.MustCompile(`msg="chatrelay serving" grpc=(\S+) http=(\S+)`)
	var httpAddr string
	var logged []string
	timeout := time.After(30 * time.Second)
	for httpAddr == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("exited before serving:\n%s", strings.Join(logged, "\n"))
			}
			logged = append(logged, l)
			if strings.Contains(l, "secret-key") {
				t.Fatalf("the API key was logged: %s", l)
			}
			if m := serving.FindStringSubmatch(l); m != nil {
				httpAddr = m[2]
			}
		case <-timeout:
			t.Fatalf("not serving within 30s:\n%s", strings.Join(logged, "\n"))
		}
	}

	get := func(path, key string) int {
		req, _ := http.NewRequest("POST", "http://"+httpAddr+path, strings.NewReader(`{"chatbot":"welcome","from":"api","to":"u1","contact_metadata":{"name":"Ada"}}`))
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
	if code := get("/v1/chatbot-messages", ""); code != 401 {
		t.Fatalf("without a key: HTTP %d, want 401", code)
	}
	if code := get("/v1/chatbot-messages", "secret-key-0123456789"); code != 200 {
		t.Fatalf("with the key from the environment: HTTP %d, want 200", code)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for range lines { // drain so the process never blocks on stderr
		}
		done <- cmd.Wait()
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
