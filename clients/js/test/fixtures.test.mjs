// The client's codec against the protocol's golden fixtures (crates/tslm-protocol/fixtures/v1):
// every request it builds equals the fixture frame (ids aside), and every reply, error and event
// fixture is read into the documented result.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { TslmClient } from '../dist/index.js';
import { Clock, FakeTransport, flush, openConn, server } from './fakes.mjs';

const dir = new URL('../../../crates/tslm-protocol/fixtures/v1/', import.meta.url);
const load = (name) => JSON.parse(readFileSync(new URL(name, dir), 'utf8'));
const requests = load('requests.json');
const replies = load('replies.json');
const errors = load('errors.json');
const events = load('events.json');

function make(extra = {}) {
  const clock = new Clock();
  const transport = new FakeTransport();
  const client = new TslmClient({ url: 'ws://gateway.invalid/', transports: [transport], timers: clock, window: null, document: null, pingIntervalMs: 1e9, ...extra });
  return { clock, transport, client };
}

const withoutId = ({ id: _id, ...rest }) => rest;

/** Sends a fixture request through the client's public API. */
const build = {
  create: (c, f) => c.create(f.channel, f.options),
  delete: (c, f) => c.delete(f.channel),
  publish: (c, f) => c.publish(f.channel, f.data, f.msg_id === undefined ? {} : { msgId: f.msg_id }),
  subscribe: (c, f) => c.subscribe(f.channel, f.start === undefined ? {} : { start: f.start }).ready,
  unsubscribe: (c, f) => c.unsubscribe(f.channel),
  history: (c, f) => c.history(f.channel, { start: f.start, limit: f.limit }),
  reply: (c, f) => c.reply(f.channel, f.offset, f.data),
  channels: (c, f) => c.channels({ prefix: f.prefix, after: f.after, limit: f.limit }),
  ping: (c) => c.ping(),
};

describe('requests.json: the frames the client sends', () => {
  for (const fx of requests.filter((r) => build[r.op])) {
    test(fx.name, async () => {
      const { transport, client } = make();
      await openConn(transport.last);
      if (fx.op === 'unsubscribe') {
        client.subscribe(fx.frame.channel);
        server.answer(transport.last, 'subscribe', { epoch: '0000000000000000', offset: 0, from: 1 });
        await flush();
      }
      build[fx.op](client, fx.frame);
      const sent = withoutId(transport.last.sent.at(-1));
      const want = withoutId(fx.frame);
      // `subscribe` without `start` means "new"; the client always says which start it means.
      if (fx.op === 'subscribe' && want.start === undefined) want.start = 'new';
      assert.deepEqual(sent, want);
      client.close();
    });
  }

  test('challenge and auth with a signature', async () => {
    const challenge = requests.find((r) => r.name === 'challenge').frame;
    const auth = requests.find((r) => r.name === 'auth_signature').frame;
    const challengeReply = replies.find((r) => r.name === 'challenge').json;
    let signed;
    const { transport, client } = make({
      publisher: {
        name: auth.publisher,
        sign: (bytes) => {
          signed = bytes;
          return Uint8Array.from(Buffer.from(auth.signature, 'base64'));
        },
      },
    });
    transport.last.handlers.open();
    await flush();
    assert.deepEqual(withoutId(transport.last.sent[0]), withoutId(challenge));
    server.answer(transport.last, 'challenge', { challenge: challengeReply.challenge });
    await flush();
    assert.deepEqual(withoutId(transport.last.sent[1]), withoutId(auth));
    const want = Buffer.concat([Buffer.from('tslm-auth-v1\0billing\0'), Buffer.from(challengeReply.challenge, 'base64')]);
    assert.deepEqual(Buffer.from(signed), want, 'the signed bytes: "tslm-auth-v1" 0 name 0 challenge');
    client.close();
  });

  test('auth and refresh with a token', async () => {
    const auth = requests.find((r) => r.name === 'auth_token').frame;
    const refresh = requests.find((r) => r.name === 'refresh').frame;
    const { clock, transport, client } = make({ token: () => auth.token });
    transport.last.handlers.open();
    await flush();
    assert.deepEqual(withoutId(transport.last.sent[0]), withoutId(auth));
    server.answer(transport.last, 'auth', { subject: 'alice', expires_at: clock.now() / 1000 + 120 });
    await clock.advance(120000);
    assert.deepEqual(withoutId(transport.last.sent.find((r) => r.op === 'refresh')), withoutId(refresh));
    client.close();
  });
});

/** What each reply fixture must come out as. */
const expected = {
  empty: (r) => r === undefined,
  created: (r, j) => r.created === true && r.epoch === j.epoch,
  already_existed: (r, j) => r.created === false && r.epoch === j.epoch,
  published: (r, j) => r.epoch === j.epoch && r.offset === j.offset && r.duplicate === false,
  published_duplicate: (r, j) => r.offset === j.offset && r.duplicate === true,
  subscribed: (r, j) => r.epoch === j.epoch && r.from === j.from && r.offset === j.offset && r.recovered === undefined,
  subscribed_recovered: (r, j) => r.from === j.from && r.recovered === true,
  subscribed_expired: (r, j) => r.from === j.from && r.recovered === false,
  subscribed_epoch_changed: (r, j) => r.epoch === j.epoch && r.recovered === false,
  history: (r, j) => JSON.stringify(r.messages) === JSON.stringify(j.messages) && r.more === j.more && r.epoch === j.epoch,
  history_more: (r, j) => r.more === true && r.messages.length === j.messages.length,
  channels: (r, j) => JSON.stringify(r.channels) === JSON.stringify(j.channels) && r.more === j.more,
  deleted: (r) => r === undefined,
};

describe('replies.json: what the client makes of each reply', () => {
  for (const fx of replies.filter((r) => expected[r.name])) {
    test(fx.name, async () => {
      const { transport, client } = make();
      const losses = [];
      client.on('loss', (l) => losses.push(l));
      await openConn(transport.last);
      const frame = { channel: 'prices', data: 1, offset: 1 };
      if (fx.name === 'subscribed_expired' || fx.name === 'subscribed_epoch_changed') frame.start = { epoch: 'a7a1fed282ffc3db', offset: 2 };
      const p = build[fx.op](client, frame);
      const { id: _id, ok: _ok, ...rest } = fx.json;
      server.answer(transport.last, fx.op, rest);
      const result = await p;
      assert.ok(expected[fx.name](result, fx.json), `${fx.name}: ${JSON.stringify(result)}`);
      if (fx.op === 'subscribe') {
        assert.deepEqual(client.position('prices'), { epoch: fx.json.epoch, offset: fx.json.from - 1 });
        const lost = fx.json.lost;
        assert.deepEqual(losses.map((l) => [l.reason, l.from, l.to]), lost ? [[lost.reason, lost.from, lost.to]] : []);
      }
      client.close();
    });
  }

  test('auth replies: a publisher, and a subscriber with its expiry', async () => {
    for (const name of ['authenticated_publisher', 'authenticated_subscriber']) {
      const fx = replies.find((r) => r.name === name).json;
      const { transport, client } = make({ token: () => 't' });
      const tokens = [];
      client.on('token', (t) => tokens.push(t));
      const { id: _id, ok: _ok, ...rest } = fx;
      await openConn(transport.last, rest);
      assert.deepEqual(tokens, [{ expiresAt: fx.expires_at, subject: fx.subject, publisher: fx.publisher }]);
      assert.equal(client.state, 'open');
      client.close();
    }
  });
});

describe('errors.json: every error code reaches the caller as a TslmError', () => {
  for (const fx of errors) {
    test(fx.name, async () => {
      const { transport, client } = make();
      await openConn(transport.last);
      const p = client.ping();
      server.fail(transport.last, 'ping', fx.json.error.code, fx.json.error.message);
      await assert.rejects(p, (e) => e.name === 'TslmError' && e.code === fx.code && e.message === fx.json.error.message && e.op === 'ping');
      client.close();
    });
  }
});

describe('events.json: every event', () => {
  test('message, gap, closed and reply', async () => {
    const { transport, client } = make();
    const seen = { message: [], loss: [], ended: [], reply: [] };
    for (const k of Object.keys(seen)) client.on(k, (v) => seen[k].push(v));
    await openConn(transport.last);
    const by = Object.fromEntries(events.map((e) => [e.name, e.json]));
    // Each subscription stands just before its fixture's first offset.
    const next = { [by.message.channel]: by.message.offset, [by.message_string.channel]: by.message_string.offset, [by.gap.channel]: by.gap.from };
    for (const [ch, from] of Object.entries(next)) {
      client.subscribe(ch);
      server.answer(transport.last, 'subscribe', { epoch: 'a7a1fed282ffc3db', offset: from - 1, from });
    }
    await flush();
    for (const fx of events) server.frame(transport.last, fx.json);
    await flush();
    assert.deepEqual(
      seen.message.map((m) => [m.channel, m.offset, m.data]),
      [[by.message.channel, by.message.offset, by.message.data], [by.message_string.channel, by.message_string.offset, by.message_string.data]],
    );
    assert.deepEqual(seen.loss.map((l) => [l.channel, l.reason, l.from, l.to]), [[by.gap.channel, 'gap', by.gap.from, by.gap.to]]);
    assert.deepEqual(seen.ended, [{ channel: by.closed.channel, reason: by.closed.reason }]);
    assert.deepEqual(seen.reply, [{ channel: by.reply.channel, offset: by.reply.offset, from: by.reply.from, data: by.reply.data }]);
    assert.equal(client.position('ticks'), undefined, 'the closed subscription is gone');
    client.close();
  });
});
