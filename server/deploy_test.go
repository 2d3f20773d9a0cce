package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"gopkg.in/yaml.v3"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/internal/platformtest"
	"github.com/chatrelay/chatrelay/internal/redistest"
)

// The operator assets under deploy/: a Grafana dashboard and Prometheus
// alerting rules. They are checked against what a server actually serves
// on /metrics, so a renamed metric or label breaks this test, not a
// dashboard in production.
const (
	dashboardFile = "../deploy/grafana/chatrelay.json"
	alertsFile    = "../deploy/prometheus/alerts.yaml"
)

// TestDeployAssets checks the dashboard and the rules parse, are complete,
// and query only metrics and labels that a chatrelay server on Redis
// exposes, with label values it can produce.
func TestDeployAssets(t *testing.T) {
	t.Parallel()
	exprs := dashboardExprs(t, dashboardFile)
	if len(exprs) < 30 {
		t.Errorf("%s: only %d expressions found", dashboardFile, len(exprs))
	}
	rules := alertExprs(t, alertsFile)
	if len(rules) < 10 {
		t.Errorf("%s: only %d rules found", alertsFile, len(rules))
	}
	exprs = append(exprs, rules...)
	m := scrapeEveryFamily(t)
	used := map[string]bool{}
	for _, e := range exprs {
		checkAssetExpr(t, m, e, used)
	}
	// The assets cover the golden signals and chatrelay's own metrics.
	for _, name := range []string{
		"grpc_server_handled_total", "grpc_server_handling_seconds", "chatrelay_http_requests_total",
		"chatrelay_http_request_duration_seconds", "chatrelay_listeners_waiting", "chatrelay_listener_outcomes_total",
		"chatrelay_messages_total", "chatrelay_inbound_events_total", "chatrelay_platform_request_duration_seconds",
		"chatrelay_delivery_attempts_total", "chatrelay_backend_errors_total", "chatrelay_pubsub_reconnects_total",
		"chatrelay_redis_queued_calls", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !used[name] {
			t.Errorf("no panel or rule uses %s", name)
		}
	}
}

// assetExpr is one PromQL expression of an asset, with where it is and
// the label templates its results are shown with (a legend, annotations).
type assetExpr struct {
	where     string
	expr      string
	templates []string
	dashboard bool // every selector must pick the dashboard's $job
}

// ---- the dashboard ----

type grafanaDashboard struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	SchemaVersion int            `json:"schemaVersion"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []grafanaVariable `json:"list"`
	} `json:"templating"`
}

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID          int                `json:"id"`
	Type        string             `json:"type"`
	Title       string             `json:"title"`
	Description string             `json:"description"`
	Datasource  *grafanaDatasource `json:"datasource"`
	Targets     []struct {
		Datasource   *grafanaDatasource `json:"datasource"`
		Expr         string             `json:"expr"`
		LegendFormat string             `json:"legendFormat"`
		RefID        string             `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // a collapsed row's
}

type grafanaVariable struct {
	Name       string             `json:"name"`
	Type       string             `json:"type"`
	Datasource *grafanaDatasource `json:"datasource"`
	Definition string             `json:"definition"`
	Query      json.RawMessage    `json:"query"`
}

const datasourceRef = "${datasource}"

func dashboardExprs(t *testing.T, file string) []assetExpr {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 {
		t.Errorf("%s: uid %q, title %q, schemaVersion %d", file, d.UID, d.Title, d.SchemaVersion)
	}
	var exprs []assetExpr
	vars := map[string]grafanaVariable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if v := vars["datasource"]; v.Type != "datasource" || string(v.Query) != `"prometheus"` {
		t.Errorf("%s: variable datasource is %+v, want a Prometheus datasource variable", file, v)
	}
	for _, name := range []string{"job", "instance"} {
		v, ok := vars[name]
		if !ok || v.Type != "query" || v.Datasource == nil || v.Datasource.UID != datasourceRef {
			t.Errorf("%s: variable %s is %+v, want a query on %s", file, name, v, datasourceRef)
			continue
		}
		// The query is a string or, since Grafana 10, an object.
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			_ = json.Unmarshal(v.Query, &q.Query)
		}
		for _, s := range []string{q.Query, v.Definition} {
			if s == "" {
				t.Errorf("%s: variable %s has no query", file, name)
				continue
			}
			exprs = append(exprs, assetExpr{where: fmt.Sprintf("%s variable %s", file, name), expr: s})
		}
	}

	ids := map[int]string{}
	var walk func(ps []grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			where := fmt.Sprintf("%s panel %d %q", file, p.ID, p.Title)
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("%s: id also used by %q", where, prev)
			}
			ids[p.ID] = p.Title
			if p.Title == "" {
				t.Errorf("%s: no title", where)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Description == "" {
				t.Errorf("%s: no description", where)
			}
			if p.Datasource == nil || p.Datasource.UID != datasourceRef || len(p.Targets) == 0 {
				t.Errorf("%s: want targets on %s", where, datasourceRef)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.Expr == "" || refs[tg.RefID] || tg.Datasource == nil || tg.Datasource.UID != datasourceRef {
					t.Errorf("%s: target %q: empty, a repeated refId, or not on %s", where, tg.RefID, datasourceRef)
				}
				refs[tg.RefID] = true
				exprs = append(exprs, assetExpr{where: where, expr: tg.Expr, templates: []string{tg.LegendFormat}, dashboard: true})
			}
		}
	}
	walk(d.Panels)
	return exprs
}

// ---- the alerting rules ----

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func alertExprs(t *testing.T, file string) []assetExpr {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true) // a misspelt key (annotation:, label:) is an error
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var exprs []assetExpr
	groups := map[string]bool{}
	for _, g := range f.Groups {
		if g.Name == "" || groups[g.Name] || len(g.Rules) == 0 {
			t.Errorf("%s: group %q is unnamed, repeated or empty", file, g.Name)
		}
		groups[g.Name] = true
		for _, r := range g.Rules {
			where := fmt.Sprintf("%s alert %s (group %s)", file, r.Alert, g.Name)
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no name or no expr", where)
			}
			if d, err := time.ParseDuration(r.For); err != nil || d <= 0 {
				t.Errorf("%s: for %q, want a duration", where, r.For)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", where, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want a summary and a description", where)
			}
			exprs = append(exprs, assetExpr{where: where, expr: r.Expr,
				templates: []string{r.Annotations["summary"], r.Annotations["description"]}})
		}
	}
	return exprs
}

// ---- checking expressions against /metrics ----

var (
	// Metric names, as the assets spell them.
	metricNameRe = regexp.MustCompile(`\b(?:chatrelay|grpc_server|go|process)_[a-z_]+`)
	// A vector selector's start: a name and its opening brace.
	selectorRe = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{`)
	matcherRe  = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?`)
	groupingRe = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	// Labels a result is shown with: a legend's {{label}}, an
	// annotation's $labels.label, a variable's label_values(..., label).
	templateRe    = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}|\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)`)
	labelValuesRe = regexp.MustCompile(`label_values\(.*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	plainValuesRe = regexp.MustCompile(`^[A-Za-z_]+(\|[A-Za-z_]+)*$`)
)

// targetLabels are added by Prometheus to every series it scrapes.
var targetLabels = map[string]bool{"job": true, "instance": true}

// labelValues are the values a label can take, for the labels the assets
// match on; resultValues those of each metric's result label.
var (
	labelValues = map[string][]string{
		"grpc_type": {"unary", "client_stream", "server_stream", "bidi_stream"},
		"grpc_code": grpcCodes(),
		"outcome":   {"success", "timeout", "filter_mismatch", "cancelled"},
		"platform":  {"web", "api", "slack", "whatsapp", "webhook"},
		"direction": {"inbound", "outbound"},
		"status":    {"received", "pending", "sent", "delivered", "read", "failed"},
	}
	resultValues = map[string][]string{
		"chatrelay_inbound_events_total":              {"accepted", "duplicate", "bad_signature", "ignored", "error"},
		"chatrelay_platform_request_duration_seconds": {"accepted", "refused", "error"},
		"chatrelay_delivery_attempts_total":           {"delivered", "failed", "retry"},
	}
)

func grpcCodes() (names []string) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		names = append(names, c.String())
	}
	return names
}

// observedValues are labels whose every value has a sample from the
// start: go-grpc-middleware initialises each method's series.
var observedValues = map[string]bool{"grpc_service": true, "grpc_method": true}

// scrapeEveryFamily starts a server on Redis, with a Slack account, and
// makes every metric it can serve have a sample (a labelled family has
// none until it counts something), then scrapes it.
func scrapeEveryFamily(t *testing.T) metricsScrape {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p := newPlatforms(t)
	var proxy *redistest.Proxy
	cl := startClusterWith(t, 1, clusterOptions{
		via: func(_ int, addr string) string {
			proxy = redistest.NewProxy(t, addr)
			return proxy.Addr
		},
		server: []option{p.option(), func(c *serverConfig) { c.Metrics = reg }},
	})
	ts := cl.replicas[0]
	ctx := ts.ctx()

	// A session, a post into it, and a REST call.
	ses := ts.createSession("u1")
	ts.post(ses.SessionId, "hello")
	if r := ts.rest("GET", "/v1/sessions/"+ses.SessionId, nil); r.code != 200 {
		t.Fatalf("REST GetSession: %d %s", r.code, r.body)
	}
	// A wait that times out.
	waiting, _ := ts.receive(ctx, &pb.ChatReceiveRequest{FromUser: "u2", TimeoutMinutes: 1})
	ts.clk.Advance(2 * time.Minute)
	recvOrFail(t, waiting.Recv)
	// A greeting goes out to Slack; a Slack event comes in, and a forged
	// one is refused.
	if _, err := ts.chat.SendChatbotMessage(ctx, &pb.SendChatbotMessageRequest{Chatbot: "welcome", From: "team", To: "U0DEPLOY"}); err != nil {
		t.Fatalf("SendChatbotMessage: %v", err)
	}
	event := platformtest.SlackEvent("EvDeploy", slackChan, "U0DEPLOY", "hi", nil)
	if r := ts.slackEvent(event); r.code != 200 {
		t.Fatalf("Slack event: %d %s", r.code, r.body)
	}
	if r := ts.hook("/hooks/slack/acme", event, platformtest.SignSlack("forged", time.Now(), event)); r.code != 401 {
		t.Fatalf("forged Slack event: %d %s", r.code, r.body)
	}
	// Redis never gets a post: the call fails as the backend's fault.
	tripped := proxy.Break(ses.SessionId, redistest.DropRequest)
	_, err := ts.chat.PostMessage(ctx, &pb.PostMessageRequest{SessionId: ses.SessionId, Message: "dropped"})
	wantStatus(t, err, codes.Unavailable, "BACKEND_UNAVAILABLE", "")
	<-tripped
	return ts.scrape()
}

// family resolves a metric name as a query spells it to the family that
// serves it: a histogram is queried by its _bucket, _sum and _count
// series, a summary by its own name (quantiles), _sum and _count.
func (m metricsScrape) family(name string) (*dto.MetricFamily, string, error) {
	if fam, ok := m[name]; ok {
		if fam.GetType() == dto.MetricType_HISTOGRAM {
			return nil, "", fmt.Errorf("%s is a histogram: query its _bucket, _sum or _count", name)
		}
		return fam, name, nil
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if fam, ok := m[base]; ok {
			if typ := fam.GetType(); typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY && suffix != "_bucket" {
				return fam, base, nil
			}
		}
	}
	return nil, "", fmt.Errorf("%s is not a metric the server exposes", name)
}

// labelNames are the labels name's series carry, as queried.
func labelNames(fam *dto.MetricFamily, name string) map[string]bool {
	names := map[string]bool{}
	for _, s := range fam.GetMetric() {
		for _, l := range s.GetLabel() {
			names[l.GetName()] = true
		}
	}
	switch {
	case fam.GetType() == dto.MetricType_HISTOGRAM && strings.HasSuffix(name, "_bucket"):
		names["le"] = true
	case fam.GetType() == dto.MetricType_SUMMARY && name == fam.GetName():
		names["quantile"] = true
	}
	return names
}

// checkAssetExpr checks e's metrics exist, its matchers use their labels
// with values they can have, and the labels its results are grouped and
// shown by are there. used collects the families e queries.
func checkAssetExpr(t *testing.T, m metricsScrape, e assetExpr, used map[string]bool) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("%s: %s\n\t%s", e.where, fmt.Sprintf(format, args...), strings.ReplaceAll(e.expr, "\n", "\n\t"))
	}
	// Every label of every metric the expression queries.
	all := maps.Clone(targetLabels)
	known := true
	for _, name := range metricNameRe.FindAllString(e.expr, -1) {
		fam, base, err := m.family(name)
		if err != nil {
			fail("%v", err)
			known = false
			continue
		}
		used[base] = true
		for l := range labelNames(fam, name) {
			all[l] = true
		}
	}
	if !known {
		return // its labels cannot be checked
	}

	// Selectors: their matchers' labels are the metric's own.
	for _, loc := range selectorRe.FindAllStringSubmatchIndex(e.expr, -1) {
		name := e.expr[loc[2]:loc[3]]
		rest := e.expr[loc[1]:]
		var own map[string]bool
		var fam *dto.MetricFamily
		if metricNameRe.MatchString(name) {
			if f, _, err := m.family(name); err == nil {
				fam, own = f, labelNames(f, name)
			}
		}
		job := false
		for {
			mm := matcherRe.FindStringSubmatch(rest)
			if mm == nil {
				break
			}
			rest = rest[len(mm[0]):]
			label, op, value := mm[1], mm[2], mm[3]
			if label == "job" && op == "=" && value == "$job" {
				job = true
			}
			if targetLabels[label] || own == nil {
				continue
			}
			if !own[label] {
				fail("%s has no label %s", name, label)
				continue
			}
			values, ok := labelValues[label]
			if label == "result" {
				values, ok = resultValues[fam.GetName()]
			}
			if observedValues[label] {
				values, ok = seenValues(fam, label), true
			}
			if ok && plainValuesRe.MatchString(value) {
				for _, v := range strings.Split(value, "|") {
					if !slices.Contains(values, v) {
						fail("%s{%s} is never %q (it is one of %s)", name, label, v, strings.Join(values, ", "))
					}
				}
			}
		}
		if !strings.HasPrefix(strings.TrimSpace(rest), "}") {
			fail("cannot parse the matchers of %s at %q", name, rest)
		}
		if e.dashboard && !job {
			fail(`%s does not select job="$job"`, name)
		}
	}

	// Labels the result is grouped by and shown with.
	grouped := map[string]bool{}
	for _, g := range groupingRe.FindAllStringSubmatch(e.expr, -1) {
		for _, l := range strings.Split(g[2], ",") {
			l = strings.TrimSpace(l)
			if l == "" {
				continue
			}
			if !all[l] {
				fail("%s (%s) is not a label of the metrics queried", l, g[1])
			}
			if g[1] == "by" {
				grouped[l] = true
			}
		}
	}
	shown := e.templates
	if lv := labelValuesRe.FindStringSubmatch(e.expr); lv != nil {
		shown = append(shown, "{{"+lv[1]+"}}")
	}
	for _, s := range shown {
		for _, tm := range templateRe.FindAllStringSubmatch(s, -1) {
			l := tm[1] + tm[2]
			switch {
			case !all[l]:
				fail("the result is shown by %s, not a label of the metrics queried", l)
			case len(grouped) > 0 && !grouped[l]:
				fail("the result is shown by %s, which it is not aggregated by", l)
			}
		}
	}
}

// seenValues are the values label has in fam's samples.
func seenValues(fam *dto.MetricFamily, label string) []string {
	var vals []string
	for _, s := range fam.GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == label && !slices.Contains(vals, l.GetValue()) {
				vals = append(vals, l.GetValue())
			}
		}
	}
	return vals
}
