package server

import (
	"fmt"
	"slices"
	"time"

	"github.com/chatrelay/chatrelay/store"
)

// WhatsApp's customer-service window (docs/design.md §9). Meta delivers
// free text to a customer only within 24 hours of the customer's last
// message, and answers 131047 to any outside it. A session knows when its
// user last wrote (store.Session.LastInboundAt), so a message outside the
// window is never sent as text: it goes as a template (templates.go), or
// fails at once, as Meta would refuse it, without a call.

// replyWindow is how long after the customer's last message free text
// reaches them.
const replyWindow = 24 * time.Hour

// windowClosedCode is Meta's code for a message outside the window, which
// the hub answers too when it refuses one itself.
const windowClosedCode = "131047"

// emptyParameterCode refuses a fallback template whose parameter filled
// empty (the metadata it names is missing), before Meta is called.
const emptyParameterCode = "template_parameter_empty"

// windowCloses is when ses's reply window closes: zero when the session
// has none (another platform) or the user never wrote (it is closed).
func windowCloses(ses *store.Session) time.Time {
	if ses.Platform != platformWhatsApp || ses.LastInboundAt.IsZero() {
		return time.Time{}
	}
	return ses.LastInboundAt.Add(replyWindow)
}

// compose is how text goes to ses now: as text, except on WhatsApp, where
// given (a template the caller named) always goes, and outside the window
// the first of fallbacks configured, filled for text, ses and its contact
// ct; with none, it is refused.
func (s *Server) compose(ses *store.Session, ct *store.Contact, text string, given *store.Template, fallbacks ...*FallbackTemplate) store.Outgoing {
	out := store.Outgoing{Text: text}
	switch {
	case ses.Platform != platformWhatsApp:
		return out
	case given != nil:
		out.Template = given
		return out
	case s.cfg.Clock.Now().Before(windowCloses(ses)):
		return out
	}
	for _, fb := range fallbacks {
		if fb != nil {
			out.Template = fb.fill(text, ses, ct, s.cfg.Limits.TemplateParameterBytes)
			if i := slices.Index(out.Template.Parameters, ""); i >= 0 {
				// Meta refuses an empty parameter, as the API does.
				out.Refused = &store.PlatformError{Code: emptyParameterCode, Message: fmt.Sprintf(
					"the fallback template %s's parameter %d (%q) filled empty: the contact or session lacks that metadata, so Meta was not called",
					fb.Name, i+1, fb.Parameters[i])}
			}
			return out
		}
	}
	out.Refused = windowClosed(ses)
	return out
}

// windowClosed is the refusal of free text outside ses's window.
func windowClosed(ses *store.Session) *store.PlatformError {
	why := "the customer has never written to this number"
	if !ses.LastInboundAt.IsZero() {
		why = fmt.Sprintf("the customer last wrote at %s; the 24-hour window closed at %s",
			ses.LastInboundAt.UTC().Format(time.RFC3339), windowCloses(ses).UTC().Format(time.RFC3339))
	}
	return &store.PlatformError{Code: windowClosedCode, Message: why +
		", so WhatsApp delivers only a template; none was given or configured, and Meta was not called"}
}

// reasons name the platform refusals a workflow may branch on (the
// PlatformError's reason).
var reasons = map[string]string{
	windowClosedCode: "reply_window_closed",
	"131026":         "undeliverable",
}
