// A virtual clock and a scripted transport, for unit tests of the client's state machine.
export const flush = () => new Promise((res) => setImmediate(res));

export class Clock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.q = [];
    this.seq = 0;
  }
  setTimeout(fn, ms) {
    const h = { at: this.t + Math.max(0, ms), fn, id: ++this.seq };
    this.q.push(h);
    return h;
  }
  clearTimeout(h) {
    const i = this.q.indexOf(h);
    if (i >= 0) this.q.splice(i, 1);
  }
  now() {
    return this.t;
  }
  /** Runs every timer due within `ms`, in order, letting promises settle after each. */
  async advance(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      this.q.sort((a, b) => a.at - b.at || a.id - b.id);
      const h = this.q[0];
      if (!h || h.at > end) break;
      this.q.shift();
      this.t = h.at;
      h.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** A transport whose connections the test drives by hand. */
export class FakeTransport {
  constructor(name = 'fake') {
    this.name = name;
    this.conns = [];
  }
  open(url, protocols, handlers) {
    const conn = {
      url,
      protocols,
      handlers,
      sent: [],
      answered: new Set(),
      closedByClient: null,
      send(text) {
        this.sent.push(JSON.parse(text));
      },
      close(code, reason) {
        this.closedByClient = { code, reason };
      },
    };
    this.conns.push(conn);
    return conn;
  }
  get last() {
    return this.conns.at(-1);
  }
}

/** The server side of a fake connection. */
export const server = {
  frame(conn, obj) {
    conn.handlers.message(JSON.stringify(obj));
  },
  /** Answers the oldest unanswered request with `op` (ok, with `extra`); returns it. */
  answer(conn, op, extra = {}) {
    const req = conn.sent.find((r) => r.op === op && !conn.answered.has(r));
    if (!req) throw new Error(`no unanswered ${op} in ${JSON.stringify(conn.sent)}`);
    conn.answered.add(req);
    conn.handlers.message(JSON.stringify({ id: req.id, ok: true, ...extra }));
    return req;
  },
  fail(conn, op, code, message = code) {
    const req = conn.sent.find((r) => r.op === op && !conn.answered.has(r));
    if (!req) throw new Error(`no unanswered ${op}`);
    conn.answered.add(req);
    conn.handlers.message(JSON.stringify({ id: req.id, ok: false, error: { code, message } }));
    return req;
  },
  close(conn, code, reason = '') {
    conn.handlers.close({ code, reason });
  },
};

/** Opens the fake connection and answers the first exchange (`ping`, or `auth` when `auth`). */
export async function openConn(conn, auth) {
  conn.handlers.open();
  await flush();
  if (auth) server.answer(conn, 'auth', auth);
  else server.answer(conn, 'ping');
  await flush();
}
