package redisstore

import (
	"context"

	"embed"
	"regexp"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts. Each runs atomically on one Redis node. KEYS[1] routes the
// script; the other keys a script touches are built from ARGV slot prefixes
// and always share KEYS[1]'s hash tag, so every script stays within one
// hash slot (and so works on Redis Cluster).
//
// Times are Unix milliseconds from the store's clock, passed as ARGV, so that
// expiry follows the injected clock exactly; Redis TTLs only reclaim memory,
// with the retention periods as margin. Scripts answer {code, payload...};
// the codes are the constants in redisstore.go.

//go:embed lua/*.lua
var luaFiles embed.FS

// script loads lua/<name>.lua, after the prelude every script shares.
func script(name string) *redis.Script { return newScript(lua("prelude") + lua(name)) }

// newScript is the script src, registered with its Cluster form and both
// texts.
func newScript(src string) *redis.Script {
	const publish = "redis.call('PUBLISH',"
	if len(publishNamed.FindAllStringIndex(src, -1)) != strings.Count(src, publish) {
		// Written another way, a publish would stay PUBLISH on a Cluster.
		panic("redisstore: a script publishes other than as " + publish)
	}
	sc := redis.NewScript(src)
	sharded := strings.ReplaceAll(src, publish, "redis.call('SPUBLISH',")
	shardedScripts[sc] = redis.NewScript(sharded)
	sources[sc.Hash()], sources[shardedScripts[sc].Hash()] = src, sharded
	return sc
}

// publishNamed finds the command PUBLISH named in a script, however it is
// spelled (Redis takes any case).
var publishNamed = regexp.MustCompile(`(?i)['"]publish['"]`)

// sources are the scripts' texts by SHA, for Redis that lost its script
// cache.
var sources = map[string]string{}

// shardedScripts are the scripts as a Cluster runs them: publishing with
// SPUBLISH, so that an event reaches only the nodes of its channel's shard
// (the script's own, since channels carry their record's hash tag), where
// PUBLISH would reach every node.
var shardedScripts = map[*redis.Script]*redis.Script{}

// forClient is sc as c runs it: sharded on a Cluster.
func forClient(c redis.Scripter, sc *redis.Script) *redis.Script {
	if _, ok := c.(*redis.ClusterClient); ok {
		return shardedScripts[sc]
	}
	return sc
}

func lua(name string) string {
	b, err := luaFiles.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(err) // embedded: a missing file fails every test at init
	}
	return string(b)
}

// The scripts; each file's header says what it does and what its KEYS and
// ARGV are.
var (
	createScript          = script("create")
	updateScript          = script("update")
	closeScript           = script("close")
	postScript            = script("post")
	ingestScript          = script("ingest")
	chatbotReadScript     = script("chatbot_read")
	chatbotWriteScript    = script("chatbot_write")
	listenerAddScript     = script("listener_add")
	indexAddScript        = script("index_add")
	listenerGetScript     = script("listener_get")
	listenerTouchScript   = script("listener_touch")
	resolveScript         = script("resolve")
	pendingAddScript      = script("pending_add")
	statusScript          = script("status")
	claimScript           = script("claim")
	readDeliveryScript    = script("read_delivery")
	listScript            = script("list")
	platformRefScript     = script("platform_ref")
	platformReceiptScript = script("platform_receipt")
	listenerCancelScript  = script("listener_cancel")
	listingAddScript      = script("listing_add")
	recentScript          = script("recent")
	botReadScript         = script("bot_read")
	botFinishScript       = script("bot_finish")
)

// postCommon is the number of ARGV postScript takes once, before the
// posts' own; postEach, the number each post adds.
const postCommon, postEach = 5, 9

// scriptCmd is a script call, which go-redis must not send twice if it
// writes. On a Cluster it re-sends a command whose connection broke (EOF,
// a timeout) up to max_redirects times, and a script that ran before its
// reply was lost would run again: an append without an idempotency key,
// twice. (A standalone or Sentinel client is made with no retries at all.)
// A write broken so fails with ErrUnavailable, and its caller retries it
// with its idempotency key (docs/design.md §7). A script that only reads
// keeps go-redis's retries, through a failover's TRYAGAIN or a dead node.
type scriptCmd struct {
	*redis.Cmd
	reads bool
}

func (c scriptCmd) NoRetry() bool { return !c.reads }

// readOnly are the scripts that write nothing.
var readOnly = map[*redis.Script]bool{}

func init() {
	for _, sc := range []*redis.Script{chatbotReadScript, readDeliveryScript, listScript, recentScript} {
		readOnly[sc], readOnly[shardedScripts[sc]] = true, true
	}
}

// scriptCall is EVALSHA of sc, or with eval EVAL of its text.
func scriptCall(ctx context.Context, sc *redis.Script, eval bool, keys []string, args []any) scriptCmd {
	a := make([]any, 0, 3+len(keys)+len(args))
	if eval {
		a = append(a, "eval", sources[sc.Hash()], len(keys))
	} else {
		a = append(a, "evalsha", sc.Hash(), len(keys))
	}
	for _, k := range keys {
		a = append(a, k)
	}
	return scriptCmd{redis.NewCmd(ctx, append(a, args...)...), readOnly[sc]}
}

// runScript runs sc through c by its SHA, and by its text if Redis had
// lost its script cache (a restart): a NOSCRIPT answer means it did not
// run.
func runScript(ctx context.Context, c redis.UniversalClient, sc *redis.Script, keys []string, args ...any) *redis.Cmd {
	sc = forClient(c, sc)
	cmd := scriptCall(ctx, sc, false, keys, args)
	_ = c.Process(ctx, cmd)
	if isNoScript(cmd.Err()) {
		cmd = scriptCall(ctx, sc, true, keys, args)
		_ = c.Process(ctx, cmd)
	}
	return cmd.Cmd
}
