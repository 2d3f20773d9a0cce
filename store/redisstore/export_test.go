package redisstore

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// LoadScripts loads every script into c's server's cache, as a running
// deployment has them: a test that breaks a script's EVALSHA then breaks
// the call that runs it, not a NOSCRIPT answer before it.
func LoadScripts(ctx context.Context, c redis.Scripter) error {
	for _, sc := range []*redis.Script{createScript, updateScript, closeScript, postScript, ingestScript, chatbotReadScript,
		chatbotWriteScript, listenerAddScript, indexAddScript, listenerGetScript, listenerTouchScript, resolveScript, pendingAddScript,
		statusScript, claimScript, readDeliveryScript, listScript, platformRefScript, platformReceiptScript,
		listenerCancelScript, listingAddScript, recentScript, botReadScript, botFinishScript} {
		if err := forClient(c, sc).Load(ctx, c).Err(); err != nil {
			return err
		}
	}
	return nil
}

// ScriptHash is the SHA of the script a store op runs, for tests that
// break one (storetest.RunFaults); ClusterScriptHash is its SHA as a
// Cluster runs it.
func ScriptHash(op string) string {
	if sc := opScripts[op]; sc != nil {
		return sc.Hash()
	}
	return ""
}

func ClusterScriptHash(op string) string {
	if sc := opScripts[op]; sc != nil {
		return shardedScripts[sc].Hash()
	}
	return ""
}

var opScripts = map[string]*redis.Script{
	"post":      postScript,
	"ingest":    ingestScript,
	"resolve":   resolveScript,
	"chatbot":   chatbotWriteScript,
	"create":    createScript,
	"close":     closeScript,
	"status":    statusScript,
	"cancel":    listenerCancelScript,
	"botfinish": botFinishScript,
	"list":      listScript,
}
