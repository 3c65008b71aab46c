// `history` and `reply` on the stream transports, over the gateway's HTTP calls beside the stream
// (docs/protocol.md, "Subscriber calls over HTTP"), and the token renewal of a stream: against the
// real gateway.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { TslmClient, longPoll, serverSentEvents, webSocket } from '../dist/index.js';
import { Gateway, accessToken, fast, record, sleep, waitFor } from './helpers.mjs';

let gw;
before(async () => {
  gw = await Gateway.start();
});
after(async () => {
  await gw?.stop();
});

for (const [name, make] of [
  ['sse', () => serverSentEvents()],
  ['longpoll', () => longPoll({ waitSeconds: 2 })],
]) {
  describe(`on ${name}`, () => {
    test('history and reply work with the subscriber token, with the errors of the WebSocket ops', async () => {
      const rpc = `rpc.${name}`;
      const secure = `secure.${name}`;
      // A service publishing over a WebSocket on the private listener.
      const svc = new TslmClient({ url: gw.privateUrl, transports: [webSocket()], ...fast });
      const svcLog = record(svc);
      let tokens = 0;
      const client = new TslmClient({
        url: gw.publicUrl,
        transports: [make()],
        token: () => (tokens++, accessToken({ channels: ['secure.*', 'rpc.*'] })),
        ...fast,
      });
      const log = record(client);
      try {
        await svc.create(rpc);
        await gw.createChannel(secure);
        await gw.publish(secure, { n: 1 });
        await gw.publish(secure, { n: 2 });
        await client.subscribe(rpc).ready;
        assert.equal(client.transport, name);
        const p = await svc.publish(rpc, { quote: 1 });
        await waitFor(() => log.messages.length === 1, 'the message');

        // history: the v1 reply's fields, from any start form, on a channel needing the token.
        const h = await client.history(secure, { start: 'oldest', limit: 1 });
        assert.equal(h.channel, secure);
        assert.deepEqual(h.messages, [{ offset: 1, data: { n: 1 } }]);
        assert.equal(h.more, true);
        const next = await client.history(secure, { start: { epoch: h.epoch, offset: 1 } });
        assert.equal(next.recovered, true);
        assert.deepEqual(next.messages.map((m) => m.offset), [2]);
        assert.deepEqual((await client.history(secure, { start: { last: 1 } })).messages.map((m) => m.offset), [2]);
        assert.ok(tokens >= 2, 'the calls carry the token');

        // reply: reaches the publishing connection.
        await client.reply(rpc, p.offset, { accept: true });
        await waitFor(() => svcLog.replies.length === 1, 'the reply at the publisher');
        assert.deepEqual(svcLog.replies[0].data, { accept: true });
        assert.equal(svcLog.replies[0].offset, p.offset);

        // The errors, as typed as over WebSocket.
        await assert.rejects(client.reply(secure, 1, 'x'), (e) => e.code === 'forbidden' && e.op === 'reply' && e.channel === secure);
        await assert.rejects(client.reply(rpc, 99, 'x'), (e) => e.code === 'not_found');
        await assert.rejects(client.history('nope.nothing'), (e) => e.code === 'not_found' && e.op === 'history');
        await assert.rejects(client.reply(rpc, p.offset, 'x'.repeat(5000)), (e) => e.code === 'too_large');
        // Publishing still needs a WebSocket.
        await assert.rejects(client.publish(rpc, 1), (e) => e.code === 'unsupported');
      } finally {
        client.close();
        svc.close();
      }
    });

    test('a stream goes on past its token\'s expiry with new tokens, nothing lost', async () => {
      const channel = `secure.renew.${name}`;
      await gw.createChannel(channel);
      const urls = [];
      const counting = (url, init) => {
        if (String(url).includes('/v1/events') || String(url).includes('/v1/poll')) urls.push(String(url));
        return fetch(url, init);
      };
      const transport = name === 'sse' ? serverSentEvents({ fetch: counting }) : longPoll({ waitSeconds: 1, fetch: counting });
      let tokens = 0;
      const client = new TslmClient({
        url: gw.publicUrl,
        transports: [transport],
        // Tokens live 3 s; the client renews 1 s before expiry.
        token: () => (tokens++, accessToken({ channels: ['secure.*'], ttl: 3 })),
        refreshBeforeMs: 1000,
        ...fast,
      });
      const log = record(client);
      try {
        await client.subscribe(channel, { start: 'oldest' }).ready;
        let n = 0;
        // Publish for longer than two token lifetimes.
        const until = Date.now() + 7000;
        while (Date.now() < until) {
          await gw.publish(channel, ++n);
          await sleep(250);
        }
        await waitFor(() => log.messages.length === n, `all ${n} messages`);
        assert.deepEqual(log.messages.map((m) => m.data), Array.from({ length: n }, (_, i) => i + 1));
        assert.deepEqual(log.losses, []);
        // New tokens, and no stream ever ended by an expired one.
        assert.ok(tokens >= 3, `${tokens} tokens`);
        assert.deepEqual(log.disconnects, [], JSON.stringify(log.disconnects));
        assert.deepEqual(log.errors, []);
        if (name === 'sse') {
          // Every new stream resumed from the position (`NAME@EPOCH:OFFSET`), not from `new`.
          assert.ok(urls.length >= 3, urls.join('\n'));
          for (const u of urls.slice(1)) assert.match(decodeURIComponent(u), /channel=secure\.renew\.sse@[0-9a-f]{16}:\d+/);
        }
      } finally {
        client.close();
      }
    });
  });
}
