// Unit tests of the client's state machine against a scripted transport and a virtual clock.
// (The end-to-end behaviours are in e2e.test.mjs and browser.test.mjs, against the real binary.)
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { TslmClient, backoffDelay, closeReaction, shutdownRetryAfterMs, webSocket } from '../dist/index.js';
import { Clock, FakeTransport, flush, openConn, server } from './fakes.mjs';

function make(extra = {}) {
  const clock = new Clock();
  const transport = extra.transport ?? new FakeTransport();
  const client = new TslmClient({
    url: 'ws://gateway.invalid/',
    transports: [transport],
    timers: clock,
    window: null,
    document: null,
    ...extra,
  });
  const log = { disconnects: [], losses: [], messages: [], errors: [], opens: [], states: [] };
  client.on('disconnect', (d) => log.disconnects.push(d));
  client.on('loss', (l) => log.losses.push(l));
  client.on('message', (m) => log.messages.push(m));
  client.on('error', (e) => log.errors.push(e));
  client.on('open', (o) => log.opens.push(o));
  client.on('state', (s) => log.states.push(s.state));
  return { clock, transport, client, log };
}

describe('backoff', () => {
  test('full jitter: uniform below an exponentially growing, capped bound', () => {
    const opts = { initialMs: 100, maxMs: 1000, factor: 2 };
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, opts, () => 0.5)), [50, 100, 200, 400, 500, 500, 500]);
    assert.deepEqual([0, 3, 9].map((a) => backoffDelay(a, opts, () => 0)), [0, 0, 0]);
    assert.deepEqual([0, 3, 9].map((a) => backoffDelay(a, opts, () => 0.999)), [99, 799, 999]);
  });

  test('the client draws each reconnect delay from the jittered bound and resets it after a good connection', async () => {
    const randoms = [0.25, 0.5, 0.75, 0.1];
    const { clock, transport, client, log } = make({ backoff: { initialMs: 1000, maxMs: 60000 }, random: () => randoms.shift() });
    await openConn(transport.last);
    server.close(transport.last, 1006);
    await clock.advance(250);
    assert.equal(transport.conns.length, 2);
    server.close(transport.last, 1006); // fails before opening
    await clock.advance(1000);
    assert.equal(transport.conns.length, 3);
    server.close(transport.last, 1006);
    await clock.advance(3000);
    await openConn(transport.last); // a good connection resets the attempt count
    server.close(transport.last, 1006);
    assert.deepEqual(log.disconnects.map((d) => d.delayMs), [250, 1000, 3000, 100]);
    client.close();
  });
});

describe('close codes', () => {
  test('the documented reaction of every close code', () => {
    const table = [
      [1000, '', true, 'resume'],
      [1001, 'going away', true, 'resume'],
      [1002, 'protocol error', true, 'stop'],
      [1006, '', true, 'resume'],
      [1007, 'invalid utf-8', true, 'stop'],
      [1008, 'rate limit exceeded', true, 'backoff'],
      [1008, 'too many control frames', true, 'stop'],
      [1009, 'message too big', true, 'backoff'],
      [1011, 'internal error', true, 'backoff'],
      [4000, 'slow consumer', true, 'resume'],
      [4001, 'ping timeout', true, 'resume'],
      [4002, 'authentication required', true, 'token'],
      [4002, 'authentication required', false, 'stop'],
      [4003, 'token expired', true, 'token'],
      [4003, 'token expired', false, 'stop'],
      [4006, 'credential revoked', true, 'token'],
      [4006, 'credential revoked', false, 'stop'],
      [1001, 'shutdown; retry_after_ms=2500', true, 'resume'],
      [4999, 'anything', true, 'resume'],
    ];
    for (const [code, reason, hasToken, want] of table) assert.equal(closeReaction(code, reason, hasToken), want, `${code} ${reason}`);
  });

  for (const [code, reason] of [[1001, 'going away'], [1006, ''], [4000, 'slow consumer'], [4001, 'ping timeout']]) {
    test(`${code}: reconnect after a jittered delay and resume`, async () => {
      const { clock, transport, client, log } = make({ backoff: { initialMs: 1000 }, random: () => 0.5 });
      await openConn(transport.last);
      client.subscribe('c');
      server.answer(transport.last, 'subscribe', { epoch: 'aaaaaaaaaaaaaaaa', offset: 4, from: 5 });
      server.frame(transport.last, { event: 'message', channel: 'c', offset: 5, data: 1 });
      await flush();
      server.close(transport.last, code, reason);
      assert.equal(log.disconnects[0].reaction, 'resume');
      assert.equal(log.disconnects[0].delayMs, 500);
      await clock.advance(499);
      assert.equal(transport.conns.length, 1);
      await clock.advance(1);
      assert.equal(transport.conns.length, 2);
      await openConn(transport.last);
      const sub = transport.last.sent.find((r) => r.op === 'subscribe');
      assert.deepEqual(sub.start, { epoch: 'aaaaaaaaaaaaaaaa', offset: 5 });
      client.close();
    });
  }

  test('shutdownRetryAfterMs reads a draining gateway\'s hint and nothing else', () => {
    assert.equal(shutdownRetryAfterMs('shutdown; retry_after_ms=2500'), 2500);
    assert.equal(shutdownRetryAfterMs('shutdown; retry_after_ms=1000; region=eu'), 1000);
    for (const other of ['going away', '', 'shutdown; retry_after_ms=', 'shutdown; retry_after_ms=-1', 'shutdown; retry_after_ms=1e3', 'shutdown; retry_after_ms=9999999999', 'Shutdown; retry_after_ms=5']) {
      assert.equal(shutdownRetryAfterMs(other), undefined, other);
    }
  });

  test('1001 from a draining gateway waits the retry_after_ms it names, then resumes', async () => {
    const { clock, transport, client, log } = make({ backoff: { initialMs: 1000 }, random: () => 0.5 });
    await openConn(transport.last);
    server.close(transport.last, 1001, 'shutdown; retry_after_ms=4200');
    assert.deepEqual([log.disconnects[0].reaction, log.disconnects[0].delayMs], ['resume', 4200]);
    await clock.advance(4199);
    assert.equal(transport.conns.length, 1, 'not before the hint');
    await clock.advance(1);
    assert.equal(transport.conns.length, 2);
    client.close();
  });

  for (const [code, reason] of [[1008, 'rate limit exceeded'], [1009, 'message too big'], [1011, 'internal error']]) {
    test(`${code}: back off for at least penaltyMs`, async () => {
      const { clock, transport, client, log } = make({ backoff: { initialMs: 1000 }, random: () => 0.5, penaltyMs: 7000 });
      await openConn(transport.last);
      server.close(transport.last, code, reason);
      assert.deepEqual([log.disconnects[0].reaction, log.disconnects[0].delayMs], ['backoff', 7000]);
      await clock.advance(6999);
      assert.equal(transport.conns.length, 1);
      await clock.advance(1);
      assert.equal(transport.conns.length, 2);
      client.close();
    });
  }

  for (const [code, reason, token] of [[1002, 'protocol error', false], [1007, 'invalid utf-8', false], [1008, 'too many control frames', false], [4002, 'authentication required', false], [4003, 'token expired', false], [4006, 'credential revoked', false]]) {
    test(`${code} ${reason}: stop, with a fatal_close error`, async () => {
      const { clock, transport, client, log } = make({ token: token ? () => 't' : undefined });
      await openConn(transport.last);
      const pending = client.publish('c', 1);
      server.close(transport.last, code, reason);
      await assert.rejects(pending, (e) => e.code === 'disconnected');
      await clock.advance(600000);
      assert.equal(transport.conns.length, 1, 'no reconnect');
      assert.equal(client.state, 'closed');
      assert.equal(log.disconnects[0].reaction, 'stop');
      assert.ok(log.errors.some((e) => e.code === 'fatal_close'));
    });
  }

  for (const [code, reason] of [[4002, 'authentication required'], [4003, 'token expired'], [4006, 'credential revoked']]) {
    test(`${code} with a token callback: a new token, reconnect at once`, async () => {
      let calls = 0;
      const { clock, transport, client, log } = make({ token: () => `token-${++calls}` });
      await openConn(transport.last, { subject: 's', expires_at: 1_700_000_100 });
      assert.equal(transport.last.sent[0].token, 'token-1');
      server.close(transport.last, code, reason);
      assert.deepEqual([log.disconnects[0].reaction, log.disconnects[0].delayMs], ['token', 0]);
      await clock.advance(0);
      assert.equal(transport.conns.length, 2);
      transport.last.handlers.open();
      await flush();
      assert.deepEqual(transport.last.sent[0], { op: 'auth', token: 'token-2', id: transport.last.sent[0].id });
      client.close();
    });
  }
});

describe('refused credentials', () => {
  test('a refused auth backs off with growing delays, never reconnecting at once', async () => {
    const { clock, transport, client, log } = make({ token: () => 'bad', backoff: { initialMs: 1000, maxMs: 60000 }, random: () => 0.5 });
    for (let i = 0; i < 4; i++) {
      transport.last.handlers.open();
      await flush();
      server.fail(transport.last, 'auth', 'unauthorized', 'access token refused: access token has expired');
      await flush();
      const conns = transport.conns.length;
      await clock.advance(log.disconnects.at(-1).delayMs - 1);
      assert.equal(transport.conns.length, conns, 'not yet');
      await clock.advance(1);
      assert.equal(transport.conns.length, conns + 1, 'after the delay');
    }
    assert.deepEqual(log.disconnects.map((d) => [d.reason, d.reaction, d.delayMs]), [
      ['auth failed: unauthorized', 'resume', 500],
      ['auth failed: unauthorized', 'resume', 1000],
      ['auth failed: unauthorized', 'resume', 2000],
      ['auth failed: unauthorized', 'resume', 4000],
    ]);
    assert.ok(log.errors.every((e) => e.code === 'unauthorized' && e.op === 'auth'));
    client.close();
  });
});

describe('positions and losses', () => {
  test('buffered before the reply, duplicates dropped, gaps and skips reported, position first', async () => {
    const { transport, client, log } = make();
    await openConn(transport.last);
    const positions = [];
    client.on('message', (m) => positions.push(client.position('c').offset === m.offset));
    client.on('loss', (l) => positions.push(client.position('c').offset === l.to));
    client.subscribe('c');
    const conn = transport.last;
    // A live message may arrive before the subscribe reply (docs/protocol.md, Ordering).
    server.frame(conn, { event: 'message', channel: 'c', offset: 8, data: 'early' });
    server.answer(conn, 'subscribe', { epoch: 'bbbbbbbbbbbbbbbb', offset: 7, from: 8 });
    server.frame(conn, { event: 'message', channel: 'c', offset: 8, data: 'again' }); // a duplicate
    server.frame(conn, { event: 'message', channel: 'c', offset: 9, data: 'nine' });
    server.frame(conn, { event: 'gap', channel: 'c', from: 10, to: 12 });
    server.frame(conn, { event: 'message', channel: 'c', offset: 13, data: 13 });
    server.frame(conn, { event: 'message', channel: 'c', offset: 16, data: 16 }); // skipped 14..15
    server.frame(conn, { event: 'message', channel: 'other', offset: 1, data: 'not subscribed' });
    await flush();
    assert.deepEqual(log.messages.map((m) => [m.offset, m.data]), [[8, 'early'], [9, 'nine'], [13, 13], [16, 16]]);
    assert.deepEqual(
      log.losses.map((l) => [l.reason, l.from, l.to]),
      [['gap', 10, 12], ['skipped', 14, 15]],
    );
    assert.ok(positions.every(Boolean), 'the position had advanced in every handler');
    assert.deepEqual(client.position('c'), { epoch: 'bbbbbbbbbbbbbbbb', offset: 16 });
    client.close();
  });

  test('a subscription made in an `open` listener is sent once', async () => {
    const { transport, client } = make();
    client.on('open', () => {
      if (!client.position('late')) client.subscribe('late');
    });
    client.subscribe('early');
    await openConn(transport.last);
    assert.deepEqual(transport.last.sent.filter((r) => r.op === 'subscribe').map((r) => r.channel), ['early', 'late']);
    client.close();
  });

  test('a resume answered with lost: one loss event, the stream continues', async () => {
    const { clock, transport, client, log } = make({ random: () => 0 });
    await openConn(transport.last);
    client.subscribe('c', { start: { epoch: 'CCCCCCCCCCCCCCCC', offset: 2 } });
    assert.deepEqual(transport.last.sent.at(-1).start, { epoch: 'cccccccccccccccc', offset: 2 });
    server.answer(transport.last, 'subscribe', { epoch: 'cccccccccccccccc', offset: 9, from: 6, recovered: false, lost: { reason: 'expired', from: 3, to: 5 } });
    await flush();
    server.close(transport.last, 1006);
    await clock.advance(50);
    await openConn(transport.last);
    server.answer(transport.last, 'subscribe', { epoch: 'dddddddddddddddd', offset: 1, from: 1, recovered: false, lost: { reason: 'epoch_changed' } });
    await flush();
    assert.deepEqual(log.losses, [
      { channel: 'c', reason: 'expired', epoch: 'cccccccccccccccc', previousEpoch: 'cccccccccccccccc', from: 3, to: 5 },
      { channel: 'c', reason: 'epoch_changed', epoch: 'dddddddddddddddd', previousEpoch: 'cccccccccccccccc' },
    ]);
    assert.deepEqual(client.position('c'), { epoch: 'dddddddddddddddd', offset: 0 });
    client.close();
  });
  test('closed with epoch_changed (a cluster whose store lost the log): resumed, the loss reported once', async () => {
    const { transport, client, log } = make({ random: () => 0 });
    await openConn(transport.last);
    const sub = client.subscribe('c');
    server.answer(transport.last, 'subscribe', { epoch: 'cccccccccccccccc', offset: 4, from: 5 });
    await sub.ready;
    server.frame(transport.last, { event: 'message', channel: 'c', offset: 5, data: 1 });
    server.frame(transport.last, { event: 'closed', channel: 'c', reason: 'epoch_changed' });
    await flush();
    const again = transport.last.sent.filter((r) => r.op === 'subscribe');
    assert.equal(again.length, 2, 'subscribed again');
    assert.deepEqual(again[1].start, { epoch: 'cccccccccccccccc', offset: 5 });
    server.answer(transport.last, 'subscribe', { epoch: 'dddddddddddddddd', offset: 0, from: 1, recovered: false, lost: { reason: 'epoch_changed' } });
    await flush();
    assert.deepEqual(log.losses, [{ channel: 'c', reason: 'epoch_changed', epoch: 'dddddddddddddddd', previousEpoch: 'cccccccccccccccc' }]);
    assert.deepEqual(client.position('c'), { epoch: 'dddddddddddddddd', offset: 0 });
    client.close();
  });
});

describe('transports, liveness, page events, tokens', () => {
  test('falls back only when the first transport never reaches a first frame, and retries it later', async () => {
    const ws = new FakeTransport('websocket');
    const other = new FakeTransport('second');
    const { clock, client, log } = make({ transports: [ws, other], upgradeRetryMs: 60000, pingIntervalMs: 1e9 });
    // WebSocket opens but closes before the server's first frame: fall back at once.
    ws.last.handlers.open();
    await flush();
    server.close(ws.last, 1006);
    assert.equal(other.conns.length, 1);
    await openConn(other.last);
    assert.deepEqual(log.opens, [{ transport: 'second' }]);
    client.subscribe('c');
    server.answer(other.last, 'subscribe', { epoch: 'eeeeeeeeeeeeeeee', offset: 3, from: 4 });
    await flush();
    // Later, WebSocket again; the subscription resumes from its position.
    await clock.advance(60000);
    assert.equal(ws.conns.length, 2);
    await openConn(ws.last);
    assert.deepEqual(log.opens.at(-1), { transport: 'websocket' });
    assert.deepEqual(ws.last.sent.at(-1).start, { epoch: 'eeeeeeeeeeeeeeee', offset: 3 });
    // A drop after a first frame does not fall back: WebSocket again, after a backoff.
    server.close(ws.last, 1006);
    await clock.advance(1000);
    assert.equal(ws.conns.length, 3);
    assert.equal(other.conns.length, 1);
    client.close();
  });

  test('an idle connection is pinged; no answer gives it up and reconnects', async () => {
    const { clock, transport, client, log } = make({ pingIntervalMs: 20000, pingTimeoutMs: 5000, random: () => 0 });
    await openConn(transport.last);
    const before = transport.last.sent.length;
    await clock.advance(19999);
    assert.equal(transport.last.sent.length, before);
    await clock.advance(1);
    assert.equal(transport.last.sent.at(-1).op, 'ping');
    await clock.advance(4999);
    assert.equal(log.disconnects.length, 0);
    await clock.advance(1);
    assert.equal(log.disconnects[0].reason, 'no answer to a ping');
    assert.ok(transport.conns[0].closedByClient, 'the dead connection was closed');
    await clock.advance(0);
    assert.equal(transport.conns.length, 2);
    client.close();
  });

  test('an answered ping keeps the connection', async () => {
    const { clock, transport, client, log } = make({ pingIntervalMs: 20000, pingTimeoutMs: 5000 });
    await openConn(transport.last);
    let pings = 0;
    for (let i = 0; i < 100; i++) {
      await clock.advance(1000);
      if (transport.last.sent.some((r) => r.op === 'ping' && !transport.last.answered.has(r))) {
        server.answer(transport.last, 'ping');
        pings++;
      }
    }
    assert.ok(pings >= 4, `${pings} pings`);
    assert.equal(log.disconnects.length, 0);
    assert.equal(transport.conns.length, 1);
    client.close();
  });

  test('`online` and a page becoming visible reconnect at once while waiting', async () => {
    const listeners = {};
    const target = {
      addEventListener: (t, f) => (listeners[t] = f),
      removeEventListener: (t) => delete listeners[t],
    };
    const doc = { ...target, visibilityState: 'hidden' };
    const { clock, transport, client } = make({ window: target, document: doc, backoff: { initialMs: 60000, maxMs: 60000 }, random: () => 0.9 });
    await openConn(transport.last);
    server.close(transport.last, 1006);
    await clock.advance(10);
    assert.equal(transport.conns.length, 1, 'waiting 54 s');
    listeners.online();
    assert.equal(transport.conns.length, 2);
    server.close(transport.last, 1006);
    doc.visibilityState = 'visible';
    listeners.visibilitychange();
    assert.equal(transport.conns.length, 3);
    await openConn(transport.last);
    // Visible again while open: an immediate ping checks the connection.
    listeners.visibilitychange();
    assert.equal(transport.last.sent.at(-1).op, 'ping');
    client.close();
    assert.deepEqual(Object.keys(listeners), [], 'listeners removed on close');
    client.connect();
    assert.deepEqual(Object.keys(listeners).sort(), ['online', 'visibilitychange'], 'and added again on connect');
    client.close();
  });

  test('a close whose reaction is stop ends everything, like close(); connect() starts again and resumes', async () => {
    const { clock, transport, client, log } = make();
    await openConn(transport.last);
    const sub = client.subscribe('c', { start: 'oldest' });
    const pending = client.subscribe('d');
    server.answer(transport.last, 'subscribe', { epoch: 'aaaaaaaaaaaaaaaa', offset: 2, from: 1 });
    server.frame(transport.last, { event: 'message', channel: 'c', offset: 1, data: 1 });
    await flush();
    server.close(transport.last, 1002, 'protocol error');
    await assert.rejects(pending.ready, (e) => e.code === 'closed');
    assert.equal((await sub.ready).epoch, 'aaaaaaaaaaaaaaaa');
    assert.equal(client.state, 'closed');
    await clock.advance(600000);
    assert.equal(transport.conns.length, 1);
    client.connect();
    await openConn(transport.last);
    const resumed = transport.last.sent.filter((r) => r.op === 'subscribe');
    assert.deepEqual(resumed.map((r) => [r.channel, r.start]), [['c', { epoch: 'aaaaaaaaaaaaaaaa', offset: 1 }], ['d', 'new']]);
    assert.ok(log.errors.some((e) => e.code === 'fatal_close'));
    client.close();
  });

  test('the token is refreshed before it expires, and again after each refresh', async () => {
    let calls = 0;
    const { clock, transport, client } = make({ token: () => `t${++calls}`, refreshBeforeMs: 30000, pingIntervalMs: 1e9 });
    const now = clock.now() / 1000;
    await openConn(transport.last, { subject: 's', expires_at: now + 300 });
    await clock.advance(269999);
    assert.ok(!transport.last.sent.some((r) => r.op === 'refresh'));
    await clock.advance(1);
    const r = server.answer(transport.last, 'refresh', { subject: 's', expires_at: now + 600 });
    assert.equal(r.token, 't2');
    await clock.advance(300000);
    assert.equal(transport.last.sent.filter((x) => x.op === 'refresh').length, 2);
    client.close();
  });

  test('a clock far ahead of the gateway does not refresh in a loop', async () => {
    let calls = 0;
    const { clock, transport, client } = make({ token: () => `t${++calls}`, pingIntervalMs: 1e9 });
    const past = clock.now() / 1000 - 3600; // already "expired" by the local clock
    await openConn(transport.last, { subject: 's', expires_at: past });
    for (let i = 0; i < 10; i++) {
      await clock.advance(1000);
      // Answer at once, as often as asked within this instant.
      for (let j = 0; j < 50; j++) {
        const pending = transport.last.sent.find((r) => r.op === 'refresh' && !transport.last.answered.has(r));
        if (!pending) break;
        server.answer(transport.last, 'refresh', { subject: 's', expires_at: past });
        await clock.advance(0);
      }
    }
    const refreshes = transport.last.sent.filter((r) => r.op === 'refresh').length;
    assert.ok(refreshes >= 5 && refreshes <= 10, `${refreshes} refreshes in 10 s`);
    client.close();
  });

  test('requests wait for the connection, and reject with typed errors', async () => {
    const { clock, transport, client } = make({ requestTimeoutMs: 1000 });
    const p = client.publish('c', { a: 1 }, { msgId: 'm' });
    await openConn(transport.last);
    const req = server.answer(transport.last, 'publish', { epoch: 'ffffffffffffffff', offset: 3 });
    assert.deepEqual([req.channel, req.data, req.msg_id], ['c', { a: 1 }, 'm']);
    assert.deepEqual(await p, { epoch: 'ffffffffffffffff', offset: 3, duplicate: false });
    const q = client.create('c');
    server.fail(transport.last, 'create', 'forbidden', 'this listener does not allow create');
    await assert.rejects(q, (e) => e.name === 'TslmError' && e.code === 'forbidden' && e.op === 'create');
    const t = client.ping();
    await clock.advance(1000);
    await assert.rejects(t, (e) => e.code === 'timeout');
    const c = client.history('c');
    client.close();
    await assert.rejects(c, (e) => e.code === 'closed');
  });
});

describe('the WebSocket transport', () => {
  class FakeWs {
    static made = [];
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closed = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      FakeWs.made.push(this);
    }
    send(t) {
      this.sent.push(t);
    }
    close(code, reason) {
      this.closed = { code, reason };
    }
  }

  test('uses the injected constructor, offers tslm.v1 and the listener token, maps events', async () => {
    FakeWs.made = [];
    const seen = [];
    const t = webSocket({ WebSocket: FakeWs });
    const conn = t.open('ws://x/', ['tslm.v1', 'tok'], {
      open: () => seen.push('open'),
      message: (m) => seen.push(`message ${m}`),
      close: (c) => seen.push(`close ${c.code} ${c.reason}`),
    });
    const ws = FakeWs.made[0];
    assert.deepEqual([ws.url, ws.protocols], ['ws://x/', ['tslm.v1', 'tok']]);
    ws.readyState = 1;
    ws.onopen({});
    ws.onmessage({ data: '{"id":1,"ok":true}' });
    ws.onmessage({ data: new Uint8Array(1) }); // not text: ignored
    conn.send('{"op":"ping"}');
    ws.onclose({ code: 4000, reason: 'slow consumer' });
    ws.onclose({ code: 1000, reason: 'twice' }); // reported once only
    assert.deepEqual(seen, ['open', 'message {"id":1,"ok":true}', 'close 4000 slow consumer']);
    assert.deepEqual(ws.sent, ['{"op":"ping"}']);
  });

  test('an error before opening ends the attempt with 1006 even without a close event (Node 20)', async () => {
    FakeWs.made = [];
    const seen = [];
    webSocket({ WebSocket: FakeWs }).open('ws://x/', ['tslm.v1'], {
      open: () => seen.push('open'),
      message: () => {},
      close: (c) => seen.push(c.code),
    });
    FakeWs.made[0].onerror({});
    await new Promise((res) => setTimeout(res, 5));
    assert.deepEqual(seen, [1006]);
  });

  test('a constructor that throws is reported as a failed attempt, not thrown', async () => {
    const seen = [];
    const Throwing = function () {
      throw new SyntaxError('bad url');
    };
    webSocket({ WebSocket: Throwing }).open('nope', ['tslm.v1'], { open: () => {}, message: () => {}, close: (c) => seen.push([c.code, c.reason]) });
    await new Promise((res) => setTimeout(res, 5));
    assert.deepEqual(seen, [[1006, 'bad url']]);
  });
});
