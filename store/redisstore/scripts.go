package redisstore

import (
	"embed"
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
func script(name string) *redis.Script {
	src := lua("prelude") + lua(name)
	sc := redis.NewScript(src)
	shardedScripts[sc] = redis.NewScript(strings.ReplaceAll(src, "redis.call('PUBLISH',", "redis.call('SPUBLISH',"))
	return sc
}

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
