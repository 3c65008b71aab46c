// The stream transports (Server-Sent Events, long-polling) against the real gateway: order,
// resume across a dropped network with no duplicate, losses, tokens, channel changes, and the
// fallback from a WebSocket that never opens to SSE and back.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { TslmClient, longPoll, serverSentEvents, webSocket } from '../dist/index.js';
import { Gateway, Proxy, accessToken, fast, record, sleep, waitFor } from './helpers.mjs';

/** Each of 1..n exactly once, in order, apart from the lost ranges. */
function assertExactlyOnce(offsets, n, lostRanges = []) {
  const lost = new Set();
  for (const { from, to } of lostRanges) for (let o = from; o <= to; o++) lost.add(o);
  const expected = [];
  for (let o = 1; o <= n; o++) if (!lost.has(o)) expected.push(o);
  assert.deepEqual(offsets, expected);
}

const of = (log, channel) => log.messages.filter((m) => m.channel === channel).map((m) => m.offset);

let gw;
before(async () => {
  gw = await Gateway.start({
    extra: `
[channel."small.*"]
backlog_messages = 3
`,
  });
});
after(async () => {
  await gw?.stop();
});

for (const [name, make] of [
  ['sse', () => serverSentEvents()],
  ['longpoll', () => longPoll({ waitSeconds: 5 })],
]) {
  describe(`the ${name} transport`, () => {
    test('receives in order, resumes across a dropped connection with no duplicate, follows channel changes', async () => {
      const a = `fb.${name}.a`;
      const b = `fb.${name}.b`;
      await gw.createChannel(a);
      await gw.createChannel(b);
      for (let i = 1; i <= 3; i++) await gw.publish(a, { i });
      const proxy = await Proxy.start(gw.public);
      const client = new TslmClient({ url: proxy.url, transports: [make()], ...fast });
      const log = record(client);
      try {
        const info = await client.subscribe(a, { start: 'oldest' }).ready;
        assert.equal(info.from, 1);
        await waitFor(() => log.messages.length === 3, 'the backlog');
        assert.equal(client.transport, name);
        assert.ok(log.opens.length >= 1 && log.opens.every((o) => o.transport === name), JSON.stringify(log.opens));
        for (let i = 4; i <= 6; i++) await gw.publish(a, { i });
        await waitFor(() => log.messages.length === 6, 'live messages');

        // No command channel: publishing (and the other requests) reject with a typed error;
        // history goes over the HTTP call beside the stream.
        await assert.rejects(client.publish(a, 1), (e) => e.code === 'unsupported' && e.op === 'publish');
        const h = await client.history(a);
        assert.deepEqual(h.messages.map((m) => m.data.i), [1, 2, 3, 4, 5, 6]);

        // The network drops while messages are published; the reconnect resumes from the position.
        proxy.drop();
        await waitFor(() => log.disconnects.length >= 1, 'the drop noticed');
        for (let i = 7; i <= 10; i++) await gw.publish(a, { i });
        await sleep(200);
        proxy.restore();
        await waitFor(() => log.messages.length >= 10, 'the resume', 30000);

        // A second channel while on the stream: a new stream with both, `a` resumed from its position.
        await gw.publish(b, 'b1');
        await client.subscribe(b, { start: 'oldest' }).ready;
        for (let i = 11; i <= 12; i++) await gw.publish(a, { i });
        await gw.publish(b, 'b2');
        await waitFor(() => of(log, a).length >= 12 && of(log, b).length >= 2, 'both channels');
        await client.unsubscribe(b);
        await gw.publish(b, 'b3');
        await gw.publish(a, { i: 13 });
        await waitFor(() => of(log, a).length >= 13, 'after unsubscribing');
        await sleep(300);
        assertExactlyOnce(of(log, a), 13);
        assert.deepEqual(log.messages.filter((m) => m.channel === a).map((m) => m.data.i), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        assert.deepEqual(of(log, b), [1, 2], 'nothing of b after unsubscribing');
        assert.deepEqual(log.losses, []);
        assert.ok(log.opens.every((o) => o.transport === name));
      } finally {
        client.close();
        await proxy.stop();
      }
    });

    test('a loss is reported as one loss event', async () => {
      const ch = `small.${name}`;
      await gw.createChannel(ch);
      const proxy = await Proxy.start(gw.public);
      const client = new TslmClient({ url: proxy.url, transports: [make()], ...fast });
      const log = record(client);
      try {
        await client.subscribe(ch).ready;
        await gw.publish(ch, 1);
        await waitFor(() => log.messages.length === 1, 'the first message');
        proxy.drop();
        await waitFor(() => log.disconnects.length >= 1, 'the drop noticed');
        for (let i = 2; i <= 8; i++) await gw.publish(ch, i); // the backlog keeps 6, 7, 8
        proxy.restore();
        await waitFor(() => log.messages.length === 4, 'the rest of the backlog', 30000);
        assert.deepEqual(log.losses.map(({ channel, reason, from, to }) => ({ channel, reason, from, to })), [{ channel: ch, reason: 'expired', from: 2, to: 5 }]);
        assertExactlyOnce(of(log, ch), 8, [{ from: 2, to: 5 }]);
        assert.deepEqual(log.messages.map((m) => m.data), [1, 6, 7, 8]);
      } finally {
        client.close();
        await proxy.stop();
      }
    });

    test('a refused channel: forbidden is dropped with an error, a missing one is retried until it exists', async () => {
      const client = new TslmClient({ url: gw.publicUrl, transports: [make()], ...fast });
      const log = record(client);
      try {
        // Needs a token, and the client has no callback: the subscription ends, as on a WebSocket.
        const secure = client.subscribe(`secure.${name}.none`);
        await assert.rejects(secure.ready, (e) => e.code === 'unauthorized' && e.channel === `secure.${name}.none`);
        assert.equal(log.disconnects[0].reason, 'HTTP 401 unauthorized', JSON.stringify(log.disconnects));
        assert.equal(client.position(`secure.${name}.none`), undefined);

        // A channel that does not exist yet, beside one that does: errors, retried with backoff.
        const here = `fb.${name}.here`;
        const later = `fb.${name}.later`;
        await gw.createChannel(here);
        const laterSub = client.subscribe(later);
        client.subscribe(here);
        await waitFor(() => log.errors.filter((e) => e.code === 'not_found' && e.channel === later).length >= 2, 'not_found twice');
        await gw.createChannel(later);
        await laterSub.ready;
        await gw.publish(later, 'l1');
        await gw.publish(here, 'h1');
        await waitFor(() => log.messages.length === 2, 'both channels');
        assert.deepEqual(log.messages.map((m) => [m.channel, m.data]).sort(), [[here, 'h1'], [later, 'l1']]);
        assert.ok(log.opens.every((o) => o.transport === name));
      } finally {
        client.close();
      }
    });

    test('sends the token from the callback in an Authorization header', async () => {
      const ch = `secure.${name}`;
      await gw.createChannel(ch);
      let minted = 0;
      const client = new TslmClient({
        url: gw.publicUrl,
        transports: [make()],
        token: () => {
          minted++;
          return accessToken({ channels: ['secure.*'] });
        },
        ...fast,
      });
      const log = record(client);
      try {
        await client.subscribe(ch).ready;
        await gw.publish(ch, 'secret');
        await waitFor(() => log.messages.length === 1, 'the message');
        assert.deepEqual(log.messages.map((m) => m.data), ['secret']);
        assert.ok(minted >= 1);
      } finally {
        client.close();
      }
    });
  });
}

test('falls back from a WebSocket that never opens to SSE, then goes back to the WebSocket', async () => {
  const ch = 'fb.upgrade';
  await gw.createChannel(ch);
  // The WebSocket goes through a proxy that refuses connections until restored; SSE goes direct.
  const wsPath = await Proxy.start(gw.public);
  wsPath.drop();
  class ThroughProxy extends WebSocket {
    constructor(_url, protocols) {
      super(wsPath.url, protocols);
    }
  }
  const client = new TslmClient({
    url: gw.publicUrl,
    transports: [webSocket({ WebSocket: ThroughProxy }), serverSentEvents(), longPoll()],
    upgradeRetryMs: 1500,
    ...fast,
  });
  const log = record(client);
  try {
    await client.subscribe(ch).ready;
    assert.equal(client.transport, 'sse');
    assert.equal(log.opens[0].transport, 'sse');
    await gw.publish(ch, 1);
    await waitFor(() => log.messages.length === 1, 'a message over SSE');
    await assert.rejects(client.ping(), (e) => e.code === 'unsupported');
    // While the WebSocket still fails, the retries come back to SSE.
    await waitFor(() => log.opens.length >= 2, 'a retry of the WebSocket', 15000);
    assert.ok(log.opens.every((o) => o.transport === 'sse'), JSON.stringify(log.opens));
    wsPath.restore();
    let n = 1;
    while (client.transport !== 'websocket') {
      await gw.publish(ch, ++n);
      await sleep(100);
      assert.ok(n < 200, 'the client went back to the WebSocket');
    }
    await gw.publish(ch, ++n);
    await waitFor(() => log.messages.length === n, 'every message');
    await sleep(200);
    assertExactlyOnce(of(log, ch), n);
    assert.equal(log.opens.at(-1).transport, 'websocket');
    await client.ping(); // requests work again
    assert.deepEqual(log.losses, []);
  } finally {
    client.close();
    await wsPath.stop();
  }
});
