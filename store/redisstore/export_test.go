package redisstore

// ScriptHash is the SHA of the script a store op runs, for tests that
// break one (storetest.RunFaults).
func ScriptHash(op string) string {
	return map[string]string{
		"post":    postScript.Hash(),
		"ingest":  ingestScript.Hash(),
		"resolve": resolveScript.Hash(),
		"chatbot": chatbotWriteScript.Hash(),
		"create":  createScript.Hash(),
		"close":   closeScript.Hash(),
	}[op]
}
