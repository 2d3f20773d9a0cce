package memory_test

import (
	"testing"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/memory"
	"github.com/chatrelay/chatrelay/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, o storetest.Options) store.Store {
		s, err := memory.New(memory.Options{
			Clock:            o.Clock,
			SessionTTL:       o.SessionTTL,
			HistoryLimit:     o.HistoryLimit,
			IdempotencyTTL:   o.IdempotencyTTL,
			OutcomeRetention: o.OutcomeRetention,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, storetest.Features{})
}
