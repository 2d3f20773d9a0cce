package server

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
	"github.com/chatrelay/chatrelay/store"
)

// WhatsApp templates (docs/design.md §9): the only messages Meta delivers
// outside the customer's 24-hour window. A caller may name one on a post
// or a chatbot message, which then always goes as that template; without
// one, a message outside the window goes as the chatbot's or the
// channel's fallback template, its parameters filled from the message, or
// fails.

// FallbackTemplate is the WhatsApp template a channel's or a chatbot's
// messages go as when the customer's window is closed. Each parameter is
// filled from {{message}} (the message's text), {{contact.KEY}} and
// {{session.KEY}} (metadata; empty when missing).
type FallbackTemplate struct {
	Name       string   `yaml:"name"`
	Language   string   `yaml:"language"`
	Parameters []string `yaml:"parameters"`
}

var (
	// Meta's template names, and its language codes (en, en_US, pt_BR,
	// fil, zh_HK…).
	templateName     = regexp.MustCompile(`^[a-z0-9_]+$`)
	templateLanguage = regexp.MustCompile(`^[a-z]{2,3}(_[A-Z]{2,4})?$`)
	// What a fallback parameter is filled from.
	parameterPlaceholder = regexp.MustCompile(`\{\{\s*(?:(message)|(contact|session)\.([^{}\s]+))\s*\}\}`)
)

// template checks a template given on a request and returns it for the
// store (nil for none).
func (c *checker) template(field string, t *pb.Template) *store.Template {
	if t == nil {
		return nil
	}
	c.templateHead(field, t.Name, t.Language, len(t.Parameters))
	for i, p := range t.Parameters {
		c.parameter(fmt.Sprintf("%s.parameters[%d]", field, i), p)
	}
	return &store.Template{Name: t.Name, Language: t.Language, Parameters: t.Parameters}
}

// fallback checks a configured fallback template: its parameters are
// checked as given, before they are filled.
func (c *checker) fallback(field string, t *FallbackTemplate) {
	if t == nil {
		return
	}
	c.templateHead(field, t.Name, t.Language, len(t.Parameters))
	for i, p := range t.Parameters {
		c.parameter(fmt.Sprintf("%s.parameters[%d]", field, i), p)
	}
}

func (c *checker) templateHead(field, name, language string, params int) {
	switch {
	case name == "":
		c.add(field+".name", "is required")
	case len(name) > c.lim.TemplateNameBytes:
		c.add(field+".name", "is %d bytes; the limit is %d", len(name), c.lim.TemplateNameBytes)
	case !templateName.MatchString(name):
		c.add(field+".name", "may only contain lowercase letters, digits and _, as a WhatsApp template's name")
	}
	switch {
	case language == "":
		c.add(field+".language", "is required")
	case !templateLanguage.MatchString(language):
		c.add(field+".language", "must be a WhatsApp language code such as en, en_US or pt_BR")
	}
	if params > c.lim.TemplateParameters {
		c.add(field+".parameters", "has %d parameters; the limit is %d", params, c.lim.TemplateParameters)
	}
}

// parameter checks a template parameter as Meta takes one: not empty, at
// most TemplateParameterBytes of UTF-8, without new lines, tabs or more
// than four spaces in a row (Meta refuses those: error 132018).
func (c *checker) parameter(field, p string) {
	switch {
	case p == "":
		c.add(field, "is empty; WhatsApp refuses an empty parameter")
	case len(p) > c.lim.TemplateParameterBytes:
		c.add(field, "is %d bytes; the limit is %d", len(p), c.lim.TemplateParameterBytes)
	case !utf8.ValidString(p):
		c.add(field, "is not valid UTF-8")
	case strings.ContainsAny(p, "\n\r\t") || strings.Contains(p, "     "):
		c.add(field, "may not hold new lines, tabs or more than four spaces in a row (WhatsApp refuses them)")
	}
}

// fill is t for a message of text to ses and its contact ct, its
// parameters filled as Meta takes them: each run of white space becomes
// one space, and a parameter past max bytes is cut (at a character).
func (t *FallbackTemplate) fill(text string, ses *store.Session, ct *store.Contact, max int) *store.Template {
	params := make([]string, len(t.Parameters))
	for i, p := range t.Parameters {
		v := parameterPlaceholder.ReplaceAllStringFunc(p, func(m string) string {
			sub := parameterPlaceholder.FindStringSubmatch(m)
			switch {
			case sub[1] != "":
				return text
			case sub[2] == "contact":
				return ct.Metadata[sub[3]]
			}
			return ses.Metadata[sub[3]]
		})
		params[i] = cut(strings.Join(strings.Fields(v), " "), max)
	}
	return &store.Template{Name: t.Name, Language: t.Language, Parameters: params}
}

// needsContact reports whether filling t reads the contact.
func (t *FallbackTemplate) needsContact() bool {
	for _, p := range t.Parameters {
		for _, m := range parameterPlaceholder.FindAllStringSubmatch(p, -1) {
			if m[2] == "contact" {
				return true
			}
		}
	}
	return false
}

func templatePB(t *store.Template) *pb.Template {
	if t == nil {
		return nil
	}
	return &pb.Template{Name: t.Name, Language: t.Language, Parameters: t.Parameters}
}

// sentAs says how m went: as a template when it carries one.
func sentAs(m *store.Message) pb.SentAs {
	if m.Template != nil {
		return pb.SentAs_SENT_AS_TEMPLATE
	}
	return pb.SentAs_SENT_AS_TEXT
}
