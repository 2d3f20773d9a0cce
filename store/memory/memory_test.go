package memory_test

import (
	"testing"

	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/store/memory"
	"github.com/chatrelay/chatrelay/store/storetest"
)

func TestConformance(t *testing.T) { storetest.Run(t, newStore) }

func BenchmarkIngest(b *testing.B) { storetest.BenchmarkIngest(b, newStore) }

func newStore(t testing.TB, o store.Options) store.Store {
	s, err := memory.New(memory.Options{Options: o})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
