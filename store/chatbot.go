package store

// ChatbotPlan is what StartChatbot will do, decided by PlanChatbot.
type ChatbotPlan struct {
	// Skip, when set, means change nothing.
	Skip SkipReason
	// Reuse is the active session the chatbot takes over, if any.
	Reuse *Session
	// Close is the active session force-start ends, if any; a new session
	// is then opened.
	Close *Session
}

// PlanChatbot applies SendChatbotMessage's rules (docs/design.md §3), in order, to
// the sessions a backend found: named is the session c.SessionID names (nil
// when c.SessionID is empty), active the tuple's active session (nil when
// none). Both backends call it so the rules live in one place; it returns
// ErrSessionMismatch, ErrSessionClosed or ErrSessionExpired for a named
// session that cannot be used.
func PlanChatbot(c *ChatbotStart, named, active *Session) (ChatbotPlan, error) {
	cur := active
	if c.SessionID != "" {
		if named.Tenant != c.Tenant || named.Platform != c.Platform || named.Channel != c.Channel || named.User != c.User {
			return ChatbotPlan{}, ErrSessionMismatch
		}
		switch {
		case named.State.Active():
			cur = named
		case !c.ForceStart:
			if named.State == StateExpired {
				return ChatbotPlan{}, ErrSessionExpired
			}
			return ChatbotPlan{}, ErrSessionClosed
		}
		// A force-start from an ended named session starts afresh, ending
		// whatever else is active for the tuple.
	}
	if cur == nil {
		return ChatbotPlan{}, nil
	}
	switch {
	case c.SkipIfBotInExecution && cur.State == StateBot:
		return ChatbotPlan{Skip: SkipBotInExecution, Reuse: cur}, nil
	case c.SkipIfInProgress && cur.State == StateInProgress:
		return ChatbotPlan{Skip: SkipInProgress, Reuse: cur}, nil
	case c.ForceStart:
		return ChatbotPlan{Close: cur}, nil
	}
	return ChatbotPlan{Reuse: cur}, nil
}

// TooMuchMetadata reports whether carrying out p would take the session's
// metadata (the reused one's, or a new one's) or the contact's (contactMD
// now) past c.MaxMetadata: ErrTooMuchMetadata, before anything is written.
func (p *ChatbotPlan) TooMuchMetadata(c *ChatbotStart, contactMD map[string]string) bool {
	if c.MaxMetadata == 0 || p.Skip != NotSkipped {
		return false
	}
	var sesMD map[string]string
	if p.Reuse != nil {
		sesMD = p.Reuse.Metadata
	}
	return MetadataGrowsPast(c.MaxMetadata, sesMD, nil, c.SessionMetadata) ||
		MetadataGrowsPast(c.MaxMetadata, contactMD, nil, c.ContactMetadata)
}
