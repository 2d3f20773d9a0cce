package store

import (
	"context"
	"time"
)

// Delivery schedules an outbound message's delivery to its platform
// (docs/design.md §9). It is recorded with the message, which is PENDING
// until the delivery finishes, and leased to the caller, which sends the
// message at once and finishes the delivery. A delivery nobody finished by
// the end of its lease (its replica died) is claimed by any replica that
// asks: at least once toward the platform, exactly once in the history.
type Delivery struct {
	// ID names the delivery; the caller makes it (ids.Delivery) before
	// the message exists, so the delivery can be recorded first.
	ID string
	// Lease is how long the caller has to finish the delivery before
	// another replica may.
	Lease time.Duration
}

// DeliveryClaim is a delivery a replica holds (under lease) and must
// finish: the caller that recorded it, or a replica that claimed it.
type DeliveryClaim struct {
	ID        string
	Tenant    string
	SessionID string
	// Message is the message to deliver, as it stands.
	Message Message
	// Attempt counts the attempts at it: 1 for the caller's own, one more
	// for each claim.
	Attempt int
	// Bot, when set, makes this the delivery of an inbound message
	// (Message) to a running chatbot's webhook (docs/design.md §9), not
	// of an outbound message to its platform.
	Bot *BotDelivery
}

// BotDelivery is what a chatbot's delivery is about: the chatbot, and the
// session and contact the message belongs to, as they stand when it is
// claimed.
type BotDelivery struct {
	ChatbotID string
	Session   Session
	Contact   Contact
}

// DeliveryOutcome is what an attempt at a delivery came to.
type DeliveryOutcome struct {
	// Status, when set, is final: SENT or DELIVERED (with PlatformID) or
	// FAILED (with Error). The delivery is then done.
	Status     MessageStatus
	PlatformID string
	Error      *PlatformError
	// RetryAt, when Status is not set, keeps the delivery pending, due
	// again at RetryAt (a transient failure).
	RetryAt time.Time
}

// How long a message stays known by its platform id (receipts come later:
// a read receipt may come days later), and how long and how many receipts
// for an id not known yet wait for it.
const (
	PlatformIDRetention = 7 * 24 * time.Hour
	EarlyReceiptWait    = time.Hour
	MaxEarlyReceipts    = 16
)

// Receipt is a platform's report on an outbound message it took, by the
// platform's own id for it (WhatsApp's statuses[]).
type Receipt struct {
	Tenant     string
	Platform   string
	PlatformID string
	Status     MessageStatus
	At         time.Time
	Error      *PlatformError
}

// Deliveries tracks outbound messages on their way to a platform.
type Deliveries interface {
	// ClaimDeliveries leases for lease up to n deliveries that are due:
	// their lease ended unfinished, or their retry time came. A delivery
	// whose message was never recorded, or is no longer PENDING, is
	// dropped rather than returned.
	//
	// A session's chatbot queue (InboundMessage.Bots) is one delivery: its
	// claim is of the oldest message queued (Bot set, Attempt counting
	// from 1 for each message), so a session's messages reach its chatbot
	// in order, one at a time. Messages queued for a chatbot the session
	// no longer runs (it ended, or another took over) are dropped, as is
	// the queue of a session that is no longer BOT.
	ClaimDeliveries(ctx context.Context, n int, lease time.Duration) ([]DeliveryClaim, error)
	// FinishDelivery records the outcome of an attempt at delivery d. A
	// final outcome moves the message's status forward (Advances), with
	// an EventMessageStatus, ends the delivery, and makes the message
	// known by its platform id (applying a receipt that came first), and
	// returns the message as it stands: ErrMessageNotFound if it is no
	// longer retained. A retry reschedules it, and returns d.Message.
	//
	// For a chatbot's delivery (d.Bot set) a final outcome (DELIVERED or
	// FAILED) ends the delivery of d.Message and makes the session's next
	// queued message due at once, unless another claim ended it first (in
	// which case it changes nothing); the message itself does not change,
	// and is returned.
	FinishDelivery(ctx context.Context, d DeliveryClaim, o DeliveryOutcome) (Message, error)
	// ApplyReceipt moves the message the platform knows as r.PlatformID
	// forward to r.Status, with an EventMessageStatus. A stale or repeated
	// receipt changes nothing; one for a message not yet known by that id
	// (it beat FinishDelivery) is kept and applied when it is. A receipt
	// for an id the hub never sent is kept EarlyReceiptWait, at most
	// MaxEarlyReceipts of them for one id, then forgotten.
	ApplyReceipt(ctx context.Context, r Receipt) error
	// GetMessage returns one message of a session, with its current
	// status: ErrMessageNotFound if it is not retained.
	GetMessage(ctx context.Context, tenant, sessionID, messageID string) (Message, error)
}
