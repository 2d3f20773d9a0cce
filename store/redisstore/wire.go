package redisstore

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"

	"github.com/chatrelay/chatrelay/internal/jsonw"
	"github.com/chatrelay/chatrelay/store"
)

// messageSuffix is the JSON of wireBody without its opening brace, for a
// script to complete. It writes what encoding/json writes for wireBody,
// byte for byte (TestMessageSuffixIsEncodingJSON), without reflection: it
// runs for every message, and encoding/json was 3% of the server's CPU on
// a Redis post. A raw payload, which encoding/json validates and
// compacts, is left to encoding/json, and so is a template, which few
// messages carry.
func messageSuffix(m *store.Message) (string, error) {
	if len(m.Raw) > 0 || m.Template != nil {
		return marshalSuffix(m)
	}
	b := make([]byte, 0, 48+len(m.Text)+len(m.FromUser))
	b = append(b, `"dir":`...)
	b = strconv.AppendInt(b, int64(m.Direction), 10)
	b = append(b, `,"text":`...)
	b = appendJSONString(b, m.Text)
	if m.FromUser != "" {
		b = append(b, `,"from":`...)
		b = appendJSONString(b, m.FromUser)
	}
	b = append(b, `,"st":`...)
	b = strconv.AppendInt(b, int64(m.Status), 10)
	if len(m.Metadata) > 0 {
		b = append(b, `,"md":{`...)
		for i, k := range slices.Sorted(maps.Keys(m.Metadata)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, m.Metadata[k])
		}
		b = append(b, '}')
	}
	if m.Error != nil {
		if m.Error.Code != "" {
			b = append(b, `,"ec":`...)
			b = appendJSONString(b, m.Error.Code)
		}
		if m.Error.Message != "" {
			b = append(b, `,"em":`...)
			b = appendJSONString(b, m.Error.Message)
		}
	}
	if m.Thread != "" {
		b = append(b, `,"th":`...)
		b = appendJSONString(b, m.Thread)
	}
	return string(append(b, '}')), nil
}

// marshalSuffix is messageSuffix through encoding/json.
func marshalSuffix(m *store.Message) (string, error) {
	w := wireBody{Direction: int(m.Direction), Text: m.Text, FromUser: m.FromUser, Status: int(m.Status), Metadata: m.Metadata, Raw: m.Raw,
		Thread: m.Thread}
	if m.Error != nil {
		w.ErrCode, w.ErrMsg = m.Error.Code, m.Error.Message
	}
	if t := m.Template; t != nil {
		w.Template = &wireTemplate{Name: t.Name, Language: t.Language, Parameters: t.Parameters}
	}
	b, err := json.Marshal(w)
	if err != nil {
		return "", err
	}
	return string(b[1:]), nil
}

// appendJSONString quotes s as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b, _ = jsonw.AppendString(b, s, jsonw.EncodingJSON) // always valid
	return b
}
