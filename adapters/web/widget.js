/* chatrelay web widget: a live chat panel from one tag (docs/design.md §12).
 *
 *   <script src="https://relay.example.com/widget.js" data-token="TOKEN" defer></script>
 *
 * data-token   a token from CreateWidgetToken, bound to one web session
 * data-token-url  where the page's own site answers a fresh token for the
 *              same session when this one expires (GET, with the site's
 *              cookies; the answer is CreateWidgetToken's JSON, {"token": …});
 *              without it, an expired token ends the chat
 * data-target  a CSS selector to render into; default a panel fixed at the
 *              bottom right of the page
 * data-title   the panel's heading; default "Chat"
 *
 * No dependencies, nothing inline, no eval: it runs under a strict
 * Content-Security-Policy that lets this script's origin in script-src and
 * connect-src. Its styles are a constructed stylesheet.
 */
(function () {
  'use strict';

  var script = document.currentScript;
  if (!script) return;
  var opts = script.dataset;
  var base = opts.base || script.src.replace(/\/widget\.js(?:[?#].*)?$/, '');
  var token = opts.token || '';
  var claims = readClaims(token);
  var tokenUrl = opts.tokenUrl || '';
  var renewing = null; // the token renewal in flight
  var renewals = 0; // tokens renewed since the stream last opened

  var CSS = [
    '.crw{box-sizing:border-box;display:flex;flex-direction:column;width:22rem;max-width:100%;height:28rem;',
    'font:15px/1.4 system-ui,sans-serif;color:#1d1d1f;background:#fff;border:1px solid #c9ced6;border-radius:10px;',
    'box-shadow:0 4px 18px rgba(0,0,0,.12);overflow:hidden}',
    '.crw *{box-sizing:border-box}',
    '.crw-fixed{position:fixed;right:1rem;bottom:1rem;z-index:2147483000}',
    '.crw-fixed.crw-closed{height:auto}',
    '.crw-head{display:flex;align-items:center;gap:.5rem;padding:.55rem .8rem;background:#1a5fb4;color:#fff}',
    '.crw-head h2{flex:1;margin:0;font-size:1rem}',
    '.crw-conn{margin:0;font-size:.78rem;padding:.05rem .4rem;border-radius:4px}',
    '.crw-conn[data-state=reconnecting],.crw-conn[data-state=connecting]{background:#ffd86b;color:#3d2e00}',
    '.crw-conn[data-state=ended],.crw-conn[data-state=expired],.crw-conn[data-state=failed]{background:#fde2e1;color:#7a1a14}',
    '.crw-log{flex:1;overflow-y:auto;margin:0;padding:.75rem;list-style:none;display:flex;flex-direction:column;gap:.5rem}',
    '.crw-msg{max-width:80%;padding:.45rem .65rem;border-radius:10px;overflow-wrap:anywhere;white-space:pre-wrap}',
    '.crw-out{align-self:flex-start;background:#eef1f5}',
    '.crw-in{align-self:flex-end;background:#1a5fb4;color:#fff}',
    '.crw-msg[data-state=sending]{opacity:.7}',
    '.crw-msg[data-state=failed]{background:#fde2e1;color:#7a1a14}',
    '.crw-meta{display:block;font-size:.72rem;opacity:.85;margin-top:.15rem}',
    '.crw-form{display:flex;gap:.4rem;padding:.6rem;border-top:1px solid #e1e4e8}',
    '.crw-form input{flex:1;min-width:0;font:inherit;padding:.45rem .6rem;border:1px solid #8a94a0;border-radius:6px}',
    '.crw button{font:inherit;padding:.4rem .8rem;border:0;border-radius:6px;background:#1a5fb4;color:#fff;cursor:pointer}',
    '.crw-head button{background:transparent;border:1px solid #fff;padding:0 .5rem}',
    '.crw-msg button{margin-left:.4rem;padding:0 .5rem;font-size:.75rem;background:#7a1a14}',
    '.crw button:disabled,.crw input:disabled{opacity:.55;cursor:not-allowed}',
    '.crw :focus-visible{outline:3px solid #f5a623;outline-offset:2px}',
    '.crw-closed .crw-log,.crw-closed .crw-form{display:none}',
    '.crw-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}'
  ].join('');

  // What a message's state reads as.
  var LABELS = {
    sending: 'Sending\u2026', sent: 'Sent', confirmed: 'Delivered', failed: 'Not sent',
    pending: 'Sending\u2026', delivered: 'Delivered', read: 'Read', received: 'Delivered'
  };
  var CONN = {
    connecting: 'Connecting\u2026', live: 'Connected', reconnecting: 'Reconnecting\u2026',
    ended: 'This chat has ended', expired: 'This chat link has expired: reload the page', failed: 'Chat unavailable'
  };

  var ui = build();
  var byId = {}; // message id -> its list item
  var lastId = ''; // the last message the stream delivered
  var source = null;
  var backoff = 1000;
  var done = false;

  if (!claims) {
    setConn('failed', 'This chat link is not valid');
    finish();
    return;
  }
  connect();

  // The token's claims (its middle part), which name the session; the
  // server checks the signature.
  function readClaims(t) {
    try {
      var part = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      var c = JSON.parse(atob(part));
      return c.session_id ? c : null;
    } catch (e) {
      return null;
    }
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text) e.textContent = text;
    return e;
  }

  function build() {
    try {
      var sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      document.adoptedStyleSheets = document.adoptedStyleSheets.concat(sheet);
    } catch (e) { /* unstyled, still working */ }
    var n = document.querySelectorAll('.crw').length + 1;
    var root = el('section', 'crw');
    var head = el('div', 'crw-head');
    var title = el('h2', '', opts.title || 'Chat');
    title.id = 'crw-title-' + n;
    root.setAttribute('aria-labelledby', title.id);
    var conn = el('p', 'crw-conn');
    conn.setAttribute('role', 'status');
    head.append(title, conn);
    var log = el('ol', 'crw-log');
    log.setAttribute('role', 'log');
    log.setAttribute('aria-live', 'polite');
    log.setAttribute('aria-label', 'Messages');
    log.tabIndex = 0; // scrollable from the keyboard
    var form = el('form', 'crw-form');
    var label = el('label', 'crw-sr', 'Your message');
    var input = el('input');
    input.id = label.htmlFor = 'crw-input-' + n;
    input.type = 'text';
    input.autocomplete = 'off';
    var button = el('button', '', 'Send');
    button.type = 'submit';
    form.append(label, input, button);
    form.addEventListener('submit', function (ev) {
      ev.preventDefault();
      var text = input.value.trim();
      if (!text || done) return;
      input.value = '';
      send(text);
    });
    root.append(head, log, form);
    var target = opts.target && document.querySelector(opts.target);
    if (!target) {
      root.classList.add('crw-fixed');
      var toggle = el('button', '', '\u2013');
      toggle.type = 'button';
      toggle.setAttribute('aria-expanded', 'true');
      toggle.setAttribute('aria-label', 'Hide chat');
      toggle.addEventListener('click', function () {
        var closed = root.classList.toggle('crw-closed');
        toggle.setAttribute('aria-expanded', String(!closed));
        toggle.setAttribute('aria-label', closed ? 'Show chat' : 'Hide chat');
        toggle.textContent = closed ? '+' : '\u2013';
      });
      head.append(toggle);
      target = document.body;
    }
    target.append(root);
    return { root: root, conn: conn, log: log, input: input, button: button };
  }

  function setConn(state, text) {
    ui.root.dataset.conn = state;
    ui.conn.dataset.state = state;
    ui.conn.textContent = text || CONN[state];
  }

  // finish ends the chat: nothing more is sent or received.
  function finish() {
    done = true;
    ui.input.disabled = ui.button.disabled = true;
    if (source) source.close();
  }

  function item(inbound, text, at) {
    var li = el('li', 'crw-msg ' + (inbound ? 'crw-in' : 'crw-out'));
    var meta = el('span', 'crw-meta');
    meta.append((inbound ? 'You' : 'Agent') + ' \u00b7 ', el('time'), ' \u00b7 ', el('span', 'crw-state'));
    li.append(el('span', 'crw-text', text), meta);
    setTime(li, at);
    var stick = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    ui.log.append(li);
    if (stick) ui.log.scrollTop = ui.log.scrollHeight;
    return li;
  }

  // setTime shows when the message was said: the server's time, once the
  // stream has it.
  function setTime(li, at) {
    var t = li.querySelector('time');
    t.dateTime = at;
    t.textContent = new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  function setState(li, state, why) {
    li.dataset.state = state;
    var s = li.querySelector('.crw-state');
    s.textContent = (LABELS[state] || state) + (why ? ': ' + why : '');
  }

  // A message from the stream: new, or one the page shows already (the
  // visitor's own, which the stream confirms; a status change).
  function upsert(m) {
    var li = byId[m.id];
    if (!li) {
      li = byId[m.id] = item(m.direction === 'inbound', m.text, m.at);
      li.dataset.id = m.id;
    }
    setTime(li, m.at);
    setState(li, m.direction === 'inbound' ? 'confirmed' : m.status);
  }

  // renew asks the page's site for a fresh token for the same session
  // (data-token-url): 'ok' once the widget has one, 'refused' when the site
  // will not give one (a refusal, a redirect to its login, not a fresh
  // token of this session: the visitor's chat is over), 'error' when it
  // could not be asked or was busy (try again later).
  function renew() {
    if (!tokenUrl) return Promise.resolve('refused');
    if (!renewing) {
      renewing = fetch(tokenUrl, { credentials: 'same-origin', cache: 'no-store', redirect: 'manual' }).then(function (r) {
        if (r.status === 408 || r.status === 429 || r.status >= 500) return 'error';
        if (!r.ok) return 'refused';
        return r.json().then(function (body) {
          var t = body && typeof body.token === 'string' ? body.token : '';
          var c = readClaims(t);
          if (!c || c.session_id !== claims.session_id || t === token) return 'refused';
          token = t;
          claims = c;
          return 'ok';
        }, function () {
          return 'refused';
        });
      }).catch(function () {
        return 'error';
      }).then(function (got) {
        renewing = null;
        return got;
      });
    }
    return renewing;
  }

  // expired is the stream's token running out: go on with a fresh one, from
  // where the stream stopped, or end the chat.
  function expired() {
    renew().then(function (got) {
      // A fresh token the stream does not take either, thrice: give up.
      if (got === 'ok' && ++renewals > 3) got = 'refused';
      if (got === 'ok') return renewals > 1 ? retryLater() : connect();
      if (got === 'error') return retryLater(expired); // ask again, slower each time
      setConn('expired');
      finish();
    });
  }

  function send(text) {
    var li = item(true, text, new Date().toISOString());
    setState(li, 'sending');
    var key = 'w-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10);
    post(li, text, key);
  }

  // post sends the visitor's text; a retry uses the same idempotency key, so
  // a message the server took before the failure is not taken twice.
  function post(li, text, key, renewed) {
    var retry = li.querySelector('button');
    if (retry) retry.remove();
    setState(li, 'sending');
    var sent = token;
    fetch(base + '/widget/v1/messages?session_id=' + encodeURIComponent(claims.session_id), {
      method: 'POST',
      headers: { 'Authorization': 'Bearer ' + sent, 'Content-Type': 'application/json' },
      body: JSON.stringify({ text: text, idempotency_key: key })
    }).then(function (r) {
      if (r.status === 401 && !renewed) { // the token expired: once more with a fresh one
        return (token !== sent ? Promise.resolve('ok') : renew()).then(function (got) {
          if (got !== 'ok') throw new Error(CONN.expired);
          post(li, text, key, true);
          return null;
        });
      }
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) throw new Error(body.message || 'HTTP ' + r.status);
        return body;
      });
    }).then(function (m) {
      if (!m) return; // retried
      var seen = byId[m.id];
      if (seen && seen !== li) { // the stream was first
        li.remove();
        return;
      }
      byId[m.id] = li;
      li.dataset.id = m.id;
      if (li.dataset.state === 'sending') setState(li, 'sent');
    }, function (err) {
      setState(li, 'failed', err.message);
      if (done) return;
      var again = el('button', '', 'Retry');
      again.type = 'button';
      again.addEventListener('click', function () { post(li, text, key); });
      li.querySelector('.crw-meta').append(again);
    });
  }

  function connect() {
    var url = base + '/widget/v1/events?session_id=' + encodeURIComponent(claims.session_id) +
      '&token=' + encodeURIComponent(token);
    if (lastId) url += '&after=' + encodeURIComponent(lastId);
    setConn(lastId ? 'reconnecting' : 'connecting');
    var es = source = new EventSource(url);
    es.onopen = function () {
      setConn('live');
      backoff = 1000;
      renewals = 0;
    };
    es.onmessage = function (e) {
      if (e.lastEventId) lastId = e.lastEventId;
      upsert(JSON.parse(e.data));
    };
    es.addEventListener('status', function (e) {
      var s = JSON.parse(e.data);
      if (byId[s.id]) setState(byId[s.id], s.status);
    });
    es.addEventListener('ended', function () {
      setConn('ended');
      finish();
    });
    es.addEventListener('failed', function (e) {
      var f = JSON.parse(e.data);
      es.close();
      if (f.reason === 'UNAUTHENTICATED') return expired();
      if (f.reason === 'HISTORY_TRIMMED') lastId = ''; // read what is retained; the page has the rest
      retryLater();
    });
    es.onerror = function () {
      if (done) return;
      if (es.readyState === EventSource.CONNECTING) {
        setConn('reconnecting'); // the browser tries again by itself
        return;
      }
      es.close(); // the browser gave up (an HTTP error): try again, slower each time
      if (claims.exp && claims.exp <= Date.now()) return expired();
      retryLater();
    };
  }

  function retryLater(then) {
    setConn('reconnecting');
    setTimeout(then || connect, backoff);
    backoff = Math.min(backoff * 2, 30000);
  }
})();
