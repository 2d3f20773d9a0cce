package memory

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatrelay/chatrelay/internal/clock"
	"github.com/chatrelay/chatrelay/store"
)

// Receipts for ids the hub never sent (a number's other senders) are kept
// a while, a few per id, and then swept: they do not pile up for as long
// as the process runs.
func TestReceiptsForUnknownIDsAreSwept(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC))
	s, err := New(Options{Options: store.Options{Clock: clk}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for i := range 100 {
		r := store.Receipt{Tenant: "t", Platform: "whatsapp", PlatformID: fmt.Sprint("wamid.OTHER", i%10), Status: store.StatusRead, At: clk.Now()}
		if err := s.ApplyReceipt(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	kept, most := len(s.platformIDs), 0
	for _, ref := range s.platformIDs {
		most = max(most, len(ref.early))
	}
	s.mu.Unlock()
	if kept != 10 || most != 10 {
		t.Fatalf("%d ids kept, the most receipts for one %d; want 10 and 10", kept, most)
	}
	for range store.MaxEarlyReceipts {
		_ = s.ApplyReceipt(ctx, store.Receipt{Tenant: "t", Platform: "whatsapp", PlatformID: "wamid.OTHER0", Status: store.StatusRead, At: clk.Now()})
	}
	s.mu.Lock()
	if n := len(s.platformIDs[platformKey{"t", "whatsapp", "wamid.OTHER0"}].early); n != store.MaxEarlyReceipts {
		t.Errorf("%d receipts kept for one id, want at most %d", n, store.MaxEarlyReceipts)
	}
	s.mu.Unlock()
	clk.Advance(store.EarlyReceiptWait)
	s.Sweep()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.platformIDs); n != 0 {
		t.Fatalf("%d ids still kept after their wait", n)
	}
}
