package store

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MatchMode says how a listener's keyword is compared with a message's text.
type MatchMode int

const (
	// MatchKeyword: case-insensitive substring that begins and ends on word
	// boundaries. The default.
	MatchKeyword MatchMode = iota
	// MatchExact: the text, trimmed of surrounding white space, equals the
	// keyword.
	MatchExact
	// MatchRegex: the keyword is an RE2 expression found anywhere in the text.
	MatchRegex
)

// Filter selects the inbound messages a listener waits for. Empty fields
// match anything; set fields combine with AND.
type Filter struct {
	// Platform is set when the channel filter named a configured channel,
	// which pins the platform too.
	Platform string
	Channel  string
	// Users are the senders whose messages count: one user, or an approver
	// set (docs/design.md §4). Sorted, each once; see SortUsers.
	Users     []string
	SessionID string
	Keyword   string
	Match     MatchMode
	// AfterMessageID, when set, names an outbound message: messages in
	// scope from its time on count, those that arrived before the listener
	// was registered too (RegisterListener looks for them). It needs
	// SessionID or Users, which say where to look.
	AfterMessageID string
}

// MaxUsers bounds an approver set.
const MaxUsers = 64

// SortUsers puts users in the order Filter.Users keeps: sorted, each once.
func SortUsers(users []string) []string {
	out := slices.Clone(users)
	slices.Sort(out)
	return slices.Compact(out)
}

// HasUser reports whether the filter takes messages from user: it names
// no user, or user is one of its users.
func (f *Filter) HasUser(user string) bool {
	if len(f.Users) == 0 {
		return true
	}
	_, found := slices.BinarySearch(f.Users, user)
	return found
}

// Equal reports whether f and g are the same filter.
func (f *Filter) Equal(g *Filter) bool {
	return f.Platform == g.Platform && f.Channel == g.Channel && slices.Equal(f.Users, g.Users) &&
		f.SessionID == g.SessionID && f.Keyword == g.Keyword && f.Match == g.Match && f.AfterMessageID == g.AfterMessageID
}

// Scope reports whether m is in the filter's channel/user/session scope,
// whatever its text.
func (f *Filter) Scope(m *Message) bool {
	return (f.Platform == "" || f.Platform == m.Platform) &&
		(f.Channel == "" || f.Channel == m.Channel) &&
		f.HasUser(m.FromUser) &&
		(f.SessionID == "" || f.SessionID == m.SessionID)
}

// Matcher is a compiled Filter.
type Matcher struct {
	Filter
	re *regexp.Regexp
}

// Compile checks the filter and prepares it for matching.
func (f Filter) Compile() (*Matcher, error) {
	m := &Matcher{Filter: f}
	if f.Match == MatchRegex && f.Keyword != "" {
		re, err := regexp.Compile(f.Keyword)
		if err != nil {
			return nil, fmt.Errorf("keyword_filter is not a valid RE2 expression: %w", err)
		}
		m.re = re
	}
	return m, nil
}

// RegexInstructions is the size of pattern's compiled program: what
// matching it against a text costs per byte, at worst (RE2 runs in time
// proportional to the text's length times the program's size).
func RegexInstructions(pattern string) (int, error) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return 0, err
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return 0, err
	}
	return len(prog.Inst), nil
}

// Judge tells whether one message's text satisfies listeners' keywords,
// judging each distinct keyword (and mode) once: a message that many
// listeners waiting for the same words see is matched against them once.
// It is not safe for concurrent use.
type Judge struct {
	text string
	memo map[judgement]bool
}

type judgement struct {
	mode    MatchMode
	keyword string
}

// NewJudge returns a Judge of text.
func NewJudge(text string) *Judge { return &Judge{text: text} }

// Text reports whether the text satisfies m's keyword.
func (j *Judge) Text(m *Matcher) bool {
	if m.Keyword == "" {
		return true
	}
	k := judgement{m.Match, m.Keyword}
	if v, ok := j.memo[k]; ok {
		return v
	}
	v := m.Text(j.text)
	if j.memo == nil {
		j.memo = make(map[judgement]bool)
	}
	j.memo[k] = v
	return v
}

// Filter reports whether the text satisfies f's keyword, compiling f only
// when its keyword has not been judged yet.
func (j *Judge) Filter(f *Filter) (bool, error) {
	if v, ok := j.memo[judgement{f.Match, f.Keyword}]; ok {
		return v, nil
	}
	m, err := f.Compile()
	if err != nil {
		return false, err
	}
	return j.Text(m), nil
}

// Text reports whether text satisfies the keyword.
func (m *Matcher) Text(text string) bool {
	if m.Keyword == "" {
		return true
	}
	switch m.Match {
	case MatchExact:
		return strings.TrimSpace(text) == m.Keyword
	case MatchRegex:
		return m.re.MatchString(text)
	default:
		return containsWord(text, m.Keyword)
	}
}

// containsWord reports whether kw occurs in text, case-insensitively, with a
// non-word character (or the text's edge) on each side. Word characters are
// letters, digits and '_'.
func containsWord(text, kw string) bool {
	lt, lk := strings.ToLower(text), strings.ToLower(kw)
	for from := 0; from <= len(lt)-len(lk); {
		i := strings.Index(lt[from:], lk)
		if i < 0 {
			return false
		}
		start := from + i
		end := start + len(lk)
		if boundaryBefore(lt, start, lk) && boundaryAfter(lt, end, lk) {
			return true
		}
		_, size := utf8.DecodeRuneInString(lt[start:])
		from = start + size
	}
	return false
}

// A keyword that itself begins (ends) with a non-word character needs no
// boundary on that side: "?" matches in "why?".
func boundaryBefore(s string, i int, kw string) bool {
	first, _ := utf8.DecodeRuneInString(kw)
	if !isWord(first) || i == 0 {
		return true
	}
	r, _ := utf8.DecodeLastRuneInString(s[:i])
	return !isWord(r)
}

func boundaryAfter(s string, i int, kw string) bool {
	last, _ := utf8.DecodeLastRuneInString(kw)
	if !isWord(last) || i == len(s) {
		return true
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return !isWord(r)
}

func isWord(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

// OutcomeKind is a listener's terminal outcome.
type OutcomeKind int

const (
	Pending OutcomeKind = iota
	Matched
	TimedOut
	// FilterMismatch: timed out after at least one in-scope message failed
	// the keyword.
	FilterMismatch
	// Cancelled: CancelListener decided it.
	Cancelled
)

func (k OutcomeKind) String() string {
	switch k {
	case Matched:
		return "success"
	case TimedOut:
		return "timeout"
	case FilterMismatch:
		return "filter_mismatch"
	case Cancelled:
		return "cancelled"
	}
	return "pending"
}

// NewListener describes a listener to register.
type NewListener struct {
	ID     string
	Tenant string
	Filter Filter
	// Timeout, when positive, sets Deadline to CreatedAt + Timeout.
	Timeout time.Duration
	// ResumeWindow sets IdleUntil to CreatedAt + ResumeWindow: when a
	// listener without a deadline and with no stream attached is dropped,
	// unless TouchListener extends it.
	ResumeWindow time.Duration
	// MaxPending, when positive, caps the tenant's pending listeners.
	MaxPending int
}

// Listener is a ChatReceive registration and, once decided, its outcome.
type Listener struct {
	ID        string
	Tenant    string
	Filter    Filter
	CreatedAt time.Time
	Deadline  time.Time
	IdleUntil time.Time
	// SawMismatch records that an in-scope message failed the keyword.
	SawMismatch bool

	Outcome   OutcomeKind
	DecidedAt time.Time
	// Message is the matching message when Outcome is Matched.
	Message *Message
}

// Waited is how long the listener waited for its outcome.
func (l *Listener) Waited() time.Duration {
	if l.Outcome == Pending {
		return 0
	}
	end := l.DecidedAt
	if (l.Outcome == TimedOut || l.Outcome == FilterMismatch) && !l.Deadline.IsZero() {
		end = l.Deadline
	}
	return end.Sub(l.CreatedAt)
}

// ListenerFilter selects listeners for ListListeners. Empty fields select
// any; set fields combine with AND.
type ListenerFilter struct {
	SessionID string
	// User selects listeners that take messages from this user: alone, or
	// in an approver set.
	User    string
	Channel string
	// Outcome selects listeners in this state, when ByOutcome is set
	// (Pending is a state too).
	Outcome   OutcomeKind
	ByOutcome bool
}

// Selects reports whether f selects l.
func (f *ListenerFilter) Selects(l *Listener) bool {
	return (f.SessionID == "" || f.SessionID == l.Filter.SessionID) &&
		(f.User == "" || len(l.Filter.Users) > 0 && l.Filter.HasUser(f.User)) &&
		(f.Channel == "" || f.Channel == l.Filter.Channel) &&
		(!f.ByOutcome || f.Outcome == l.Outcome)
}
