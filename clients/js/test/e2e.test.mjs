// End-to-end tests of the client against the real `tslm` binary on loopback.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { TslmClient, shutdownRetryAfterMs } from '../dist/index.js';
import { Gateway, Proxy, accessToken, fast, record, sleep, waitFor } from './helpers.mjs';

/** Asserts that `offsets` holds each of 1..n exactly once, apart from the `lost` ones, in order. */
function assertExactlyOnce(offsets, n, lostRanges = []) {
  const lost = new Set();
  for (const { from, to } of lostRanges) for (let o = from; o <= to; o++) lost.add(o);
  const seen = new Set();
  for (const o of offsets) {
    assert.ok(!seen.has(o), `offset ${o} delivered twice: ${offsets}`);
    assert.ok(!lost.has(o), `offset ${o} delivered and reported lost`);
    seen.add(o);
  }
  for (let o = 1; o <= n; o++) assert.ok(seen.has(o) || lost.has(o), `offset ${o} neither delivered nor reported lost`);
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), 'offsets in order');
}

describe('against the real gateway', () => {
  let gw;
  before(async () => {
    gw = await Gateway.start({
      extra: `
[channel."small.*"]
backlog_messages = 3

[channel."stream.*"]
backlog_messages = 1000

[channel."lossy.*"]
slow_subscriber = 'drop_oldest'
backlog_messages = 1000

[listener.guarded]
ip = '127.0.0.1'
port = 0
default_endpoint_permissions = ['Subscribe']
auth_tokens = ['s3cret-listener-token']

# A subscriber listener with a tiny outbound queue, and a publisher listener for large messages.
[listener.small]
ip = '127.0.0.1'
port = 0
default_endpoint_permissions = ['Subscribe']
channel_buffer_size = 8
outbound_queue_bytes = 8192

[listener.bigpub]
ip = '127.0.0.1'
port = 0
default_endpoint_permissions = ['CreateChannel', 'NotifyChannel']
max_message_size = 1048576
`,
    });
  });
  after(async () => {
    await gw.stop();
  });

  test('subscribe and receive every message in order, the position advanced before the handler', async () => {
    await gw.createChannel('news');
    const client = new TslmClient({ url: gw.publicUrl, ...fast });
    const log = record(client);
    const seenInHandler = [];
    const sub = client.subscribe('news', {
      start: 'oldest',
      onMessage: (m) => seenInHandler.push([m.offset, client.position('news').offset]),
    });
    const info = await sub.ready;
    assert.equal(info.from, 1);
    for (let i = 1; i <= 20; i++) await gw.publish('news', { n: i });
    await waitFor(() => log.messages.length === 20, '20 messages');
    assert.deepEqual(log.messages.map((m) => m.offset), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.deepEqual(log.messages.map((m) => m.data.n), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.ok(log.messages.every((m) => m.epoch === info.epoch && m.channel === 'news'));
    assert.deepEqual(seenInHandler.map(([o, p]) => o - p), new Array(20).fill(0), 'position == offset inside the handler');
    assert.deepEqual(sub.position(), { epoch: info.epoch, offset: 20 });
    assert.equal(log.losses.length, 0);
    client.close();
  });

  test('a listener token is offered as a subprotocol beside tslm.v1', async () => {
    await gw.createChannel('guarded');
    const url = `ws://${gw.listeners.guarded[0]}/`;
    const client = new TslmClient({ url, ...fast, listenerToken: 's3cret-listener-token' });
    const log = record(client);
    await client.subscribe('guarded').ready;
    await gw.publish('guarded', 'in');
    await waitFor(() => log.messages.length === 1, 'the message');
    client.close();
    // Without it the handshake is refused (401): the client never opens and keeps backing off.
    const refused = new TslmClient({ url, ...fast });
    const refusedLog = record(refused);
    await waitFor(() => refusedLog.disconnects.length >= 2, 'two refused attempts');
    assert.equal(refusedLog.opens.length, 0);
    assert.ok(refusedLog.disconnects.every((d) => d.reaction === 'resume' && d.code === 1006));
    refused.close();
  });

  test('a Node service publishes on the private listener; msgId de-duplicates', async () => {
    const svc = new TslmClient({ url: gw.privateUrl, ...fast });
    const created = await svc.create('orders');
    assert.equal(created.created, true);
    const reader = new TslmClient({ url: gw.publicUrl, ...fast });
    const log = record(reader);
    await reader.subscribe('orders').ready;
    const a = await svc.publish('orders', { qty: 2 }, { msgId: 'o-1' });
    const b = await svc.publish('orders', { qty: 2 }, { msgId: 'o-1' });
    const c = await svc.publish('orders', { qty: 5 });
    assert.deepEqual([a.offset, a.duplicate, b.offset, b.duplicate, c.offset], [1, false, 1, true, 2]);
    await waitFor(() => log.messages.length === 2, 'two messages');
    assert.deepEqual(log.messages.map((m) => m.data.qty), [2, 5]);
    // The public listener refuses publishing: a typed error.
    await assert.rejects(reader.publish('orders', 1), (e) => e.name === 'TslmError' && e.code === 'forbidden');
    svc.close();
    reader.close();
  });

  test('reply reaches the publishing service; history pages through the backlog', async () => {
    const svc = new TslmClient({ url: gw.privateUrl, ...fast });
    const svcLog = record(svc);
    await svc.create('rpc.quotes');
    const app = new TslmClient({ url: gw.publicUrl, ...fast });
    const appLog = record(app);
    await app.subscribe('rpc.quotes').ready;
    const p = await svc.publish('rpc.quotes', { quote: 'EURUSD' });
    await waitFor(() => appLog.messages.length === 1, 'the quote');
    await app.reply('rpc.quotes', appLog.messages[0].offset, { accept: true });
    await waitFor(() => svcLog.replies.length === 1, 'the reply');
    assert.deepEqual(svcLog.replies[0].data, { accept: true });
    assert.equal(svcLog.replies[0].offset, p.offset);
    assert.equal(svcLog.replies[0].channel, 'rpc.quotes');
    await assert.rejects(app.reply('rpc.quotes', 99, 1), (e) => e.code === 'not_found');

    for (let i = 2; i <= 5; i++) await svc.publish('rpc.quotes', i);
    const page1 = await app.history('rpc.quotes', { limit: 2 });
    assert.deepEqual(page1.messages.map((m) => m.offset), [1, 2]);
    assert.equal(page1.more, true);
    const page2 = await app.history('rpc.quotes', { start: { epoch: page1.epoch, offset: 2 }, limit: 10 });
    assert.deepEqual(page2.messages.map((m) => m.data), [3, 4, 5]);
    assert.equal(page2.more, false);
    assert.equal(page2.recovered, true);
    await assert.rejects(app.history('no-such-channel'), (e) => e.code === 'not_found');
    svc.close();
    app.close();
  });

  test('network dropped mid-stream and restored: every offset exactly once, no loss', async () => {
    await gw.createChannel('drop');
    const proxy = await Proxy.start(gw.public);
    const client = new TslmClient({ url: proxy.url, ...fast });
    const log = record(client);
    await client.subscribe('drop').ready;
    for (let i = 1; i <= 10; i++) await gw.publish('drop', i);
    await waitFor(() => log.messages.length === 10, 'first ten');
    proxy.drop();
    await waitFor(() => log.disconnects.length >= 1, 'the drop noticed');
    for (let i = 11; i <= 30; i++) await gw.publish('drop', i); // while the network is down
    await sleep(300); // some reconnect attempts fail against the dead network
    proxy.restore();
    await waitFor(() => log.messages.length >= 30, 'all thirty');
    for (let i = 31; i <= 35; i++) await gw.publish('drop', i);
    await waitFor(() => log.messages.length >= 35, 'the live ones');
    await sleep(100);
    assertExactlyOnce(log.messages.map((m) => m.offset), 35);
    assert.equal(log.messages.length, 35);
    assert.equal(log.losses.length, 0);
    assert.ok(log.opens.length >= 2, 'reconnected');
    assert.ok(proxy.accepted >= 2);
    client.close();
    await proxy.stop();
  });

  test('the network dropped three times while a publisher streams: every offset exactly once', async () => {
    const svc = new TslmClient({ url: gw.privateUrl, ...fast });
    await svc.create('stream.fast');
    const proxy = await Proxy.start(gw.public);
    const client = new TslmClient({ url: proxy.url, ...fast });
    const log = record(client);
    await client.subscribe('stream.fast').ready;
    const N = 600;
    let published = 0;
    let drops = 0;
    // Four batches of 150; batch k + 1 starts once drop k happened, so that every drop falls
    // in the middle of the stream (after 120·k of 150·k published messages were received).
    const publishing = (async () => {
      for (let i = 1; i <= N; i++) {
        if (i > 1 && (i - 1) % 150 === 0) await waitFor(() => drops >= (i - 1) / 150, 'the drop');
        await svc.publish('stream.fast', { i });
        published = i;
      }
    })();
    const publishedAtDrops = [];
    for (let k = 1; k <= 3; k++) {
      await waitFor(() => log.messages.length >= k * 120, `${k * 120} messages`);
      publishedAtDrops.push(published);
      const before = log.disconnects.length;
      proxy.drop(); // mid-stream: the publisher goes on
      drops = k;
      await waitFor(() => log.disconnects.length > before, `drop ${k} noticed`);
      await sleep(50);
      proxy.restore();
    }
    await publishing;
    await waitFor(() => log.messages.length >= N, `all ${N}`, 30000);
    await sleep(100);
    assertExactlyOnce(log.messages.map((m) => m.offset), N);
    assert.equal(log.messages.length, N);
    assert.deepEqual(log.messages.map((m) => m.data.i), log.messages.map((m) => m.offset));
    assert.equal(log.losses.length, 0);
    assert.ok(log.opens.length >= 4, `reconnected after each drop (${log.opens.length} opens)`);
    assert.ok(publishedAtDrops.every((p) => p < N), `every drop while publishing: ${publishedAtDrops}`);
    client.close();
    svc.close();
    await proxy.stop();
  });

  test('a gap event (a drop_oldest subscriber that fell behind) is one loss event; history reads what it missed', async () => {
    const svc = new TslmClient({ url: `ws://${gw.listeners.bigpub[0]}/`, ...fast });
    await svc.create('lossy.feed');
    const proxy = await Proxy.start(gw.listeners.small[0]);
    const client = new TslmClient({ url: proxy.url, ...fast });
    const log = record(client);
    await client.subscribe('lossy.feed').ready;
    proxy.pause(); // the subscriber stops reading: the gateway's queue to it overflows
    const N = 60;
    const pad = 'x'.repeat(300000);
    for (let i = 1; i <= N; i++) await svc.publish('lossy.feed', { i, pad });
    proxy.resume();
    await waitFor(() => log.messages.some((m) => m.offset === N), 'the last offset');
    await sleep(100);
    assert.ok(log.losses.length >= 1, 'a gap was reported');
    assert.ok(log.losses.every((l) => l.reason === 'gap' && l.channel === 'lossy.feed'), JSON.stringify(log.losses));
    assertExactlyOnce(log.messages.map((m) => m.offset), N, log.losses);
    assert.equal(log.disconnects.length, 0, 'drop_oldest keeps the connection');
    // The dropped messages are still in the backlog: page through them (this listener's small
    // queue makes each page one message).
    const gap = log.losses[0];
    const read = [];
    let after = gap.from - 1;
    while (after < gap.to) {
      const page = await client.history('lossy.feed', { start: { epoch: gap.epoch, offset: after }, limit: gap.to - after });
      assert.ok(page.messages.length >= 1);
      for (const m of page.messages) read.push(m.offset);
      after = page.messages.at(-1).offset;
    }
    assert.deepEqual(read, Array.from({ length: gap.to - gap.from + 1 }, (_, k) => gap.from + k));
    client.close();
    svc.close();
    await proxy.stop();
  });

  test('a silent network failure is found by the liveness ping and resumed without duplicates', async () => {
    await gw.createChannel('silent');
    const proxy = await Proxy.start(gw.public);
    const client = new TslmClient({ url: proxy.url, ...fast, pingIntervalMs: 300, pingTimeoutMs: 300, connectTimeoutMs: 1000 });
    const log = record(client);
    await client.subscribe('silent').ready;
    for (let i = 1; i <= 5; i++) await gw.publish('silent', i);
    await waitFor(() => log.messages.length === 5, 'five');
    proxy.freeze(); // packets vanish; no close, no reset
    for (let i = 6; i <= 10; i++) await gw.publish('silent', i);
    await waitFor(() => log.disconnects.some((d) => d.reason === 'no answer to a ping'), 'the liveness check to give up');
    proxy.restore();
    await waitFor(() => log.messages.length >= 10, 'all ten');
    await sleep(100);
    assertExactlyOnce(log.messages.map((m) => m.offset), 10);
    assert.equal(log.messages.length, 10);
    client.close();
    await proxy.stop();
  });

  test('messages that left the backlog while away are reported lost (expired), the rest delivered once', async () => {
    await gw.createChannel('small.ticks');
    const proxy = await Proxy.start(gw.public);
    const client = new TslmClient({ url: proxy.url, ...fast });
    const log = record(client);
    await client.subscribe('small.ticks').ready;
    for (let i = 1; i <= 4; i++) await gw.publish('small.ticks', i);
    await waitFor(() => log.messages.length === 4, 'four');
    proxy.drop();
    await waitFor(() => log.disconnects.length >= 1, 'the drop noticed');
    for (let i = 5; i <= 14; i++) await gw.publish('small.ticks', i); // the backlog keeps 3
    proxy.restore();
    await waitFor(() => log.messages.some((m) => m.offset === 14), 'offset 14');
    assert.equal(log.losses.length, 1);
    assert.deepEqual(
      { reason: log.losses[0].reason, from: log.losses[0].from, to: log.losses[0].to },
      { reason: 'expired', from: 5, to: 11 },
    );
    assertExactlyOnce(log.messages.map((m) => m.offset), 14, log.losses);
    client.close();
    await proxy.stop();
  });

  test('an access token is refreshed through the callback before it expires', async () => {
    await gw.createChannel('secure.feed');
    let calls = 0;
    const client = new TslmClient({
      url: gw.publicUrl,
      ...fast,
      token: async () => {
        calls++;
        return accessToken({ channels: ['secure.*'], ttl: 3 });
      },
      refreshBeforeMs: 1000,
    });
    const log = record(client);
    await client.subscribe('secure.feed').ready;
    const firstExpiry = log.tokens[0].expiresAt;
    // Without a refresh the gateway closes the connection with 4003 at firstExpiry.
    await waitFor(() => Date.now() / 1000 > firstExpiry + 1.5, 'the first token to expire', 10000);
    await gw.publish('secure.feed', 'after expiry');
    await waitFor(() => log.messages.length === 1, 'a message after the first expiry');
    assert.ok(calls >= 2, `the callback was called ${calls} times`);
    assert.ok(log.tokens.length >= 2 && log.tokens.at(-1).expiresAt > firstExpiry, JSON.stringify(log.tokens));
    assert.deepEqual(log.disconnects, [], 'no 4003, no reconnect');
    assert.equal(log.messages[0].data, 'after expiry');
    client.close();
  });

  test('4003 token expired: a new token from the callback, an immediate reconnect, the stream resumed once', async () => {
    await gw.createChannel('secure.expiring');
    let calls = 0;
    const client = new TslmClient({
      url: gw.publicUrl,
      ...fast,
      token: () => {
        calls++;
        return accessToken({ channels: ['secure.*'], ttl: 2 });
      },
      refreshBeforeMs: -60000, // never refresh in time: let the gateway close with 4003
    });
    const log = record(client);
    await client.subscribe('secure.expiring').ready;
    for (let i = 1; i <= 3; i++) await gw.publish('secure.expiring', i);
    await waitFor(() => log.disconnects.some((d) => d.code === 4003), 'the 4003 close', 10000);
    const d = log.disconnects.find((x) => x.code === 4003);
    assert.deepEqual([d.reason, d.reaction, d.delayMs], ['token expired', 'token', 0]);
    for (let i = 4; i <= 6; i++) await gw.publish('secure.expiring', i);
    await waitFor(() => log.messages.length >= 6, 'six');
    assert.ok(calls >= 2, `the callback was asked again (${calls})`);
    assertExactlyOnce(log.messages.map((m) => m.offset), 6);
    assert.equal(log.messages.length, 6);
    assert.equal(log.losses.length, 0);
    client.close();
  });

  test('a token that does not grant the channel: a typed error, no retry loop', async () => {
    await gw.createChannel('secure.other');
    const client = new TslmClient({ url: gw.publicUrl, ...fast, token: () => accessToken({ channels: ['secure.feed'] }) });
    const log = record(client);
    await assert.rejects(client.subscribe('secure.other').ready, (e) => e.code === 'forbidden' && e.channel === 'secure.other');
    assert.ok(log.errors.some((e) => e.code === 'forbidden'));
    client.close();
  });

  test('no unhandled rejection when the network fails under pending requests', async () => {
    const proxy = await Proxy.start(gw.private);
    const client = new TslmClient({ url: proxy.url, ...fast, requestTimeoutMs: 2000 });
    const log = record(client);
    await client.create('flaky');
    proxy.freeze();
    // Fire and forget: these never get a reply; they must not become unhandled rejections
    // (this file runs with --unhandled-rejections=strict).
    client.publish('flaky', 1);
    client.publish('flaky', 2);
    client.history('flaky');
    proxy.drop();
    await waitFor(() => log.disconnects.length >= 1, 'the drop');
    client.publish('flaky', 3);
    await sleep(300);
    client.close();
    await proxy.stop();
    // A client pointed at a closed port: only connection failures, no crash.
    const dead = new TslmClient({ url: `ws://127.0.0.1:${proxy.port}/`, ...fast });
    const deadLog = record(dead);
    dead.publish('x', 1);
    await waitFor(() => deadLog.disconnects.length >= 2, 'two failed attempts');
    dead.close();
    await sleep(50);
  });

  test('1001 at a graceful restart: wait the retry_after_ms the gateway names, resume, the new epoch reported as loss', async () => {
    await gw.createChannel('graceful');
    const client = new TslmClient({ url: gw.publicUrl, ...fast });
    const log = record(client);
    const first = await client.subscribe('graceful').ready;
    await gw.publish('graceful', 'one');
    await waitFor(() => log.messages.length === 1, 'one');
    await gw.terminate();
    await waitFor(() => log.disconnects.length >= 1, 'the close');
    const d = log.disconnects[0];
    assert.deepEqual([d.code, d.reaction], [1001, 'resume']);
    const hint = shutdownRetryAfterMs(d.reason);
    assert.ok(hint !== undefined && hint >= 1000 && hint < 6000, d.reason);
    assert.ok(d.delayMs >= hint, `waited ${d.delayMs} ms, asked ${hint}`);
    await gw.startAgain();
    const created = await gw.createChannel('graceful');
    await gw.publish('graceful', 'two');
    await waitFor(() => log.messages.length === 2, 'the message of the new epoch');
    assert.deepEqual(log.messages.map((m) => [m.epoch, m.offset, m.data]), [[first.epoch, 1, 'one'], [created.epoch, 1, 'two']]);
    assert.deepEqual(log.losses.map((l) => [l.reason, l.previousEpoch, l.epoch]), [['epoch_changed', first.epoch, created.epoch]]);
    client.close();
  });

  test('gateway killed and restarted: old epoch exactly once, the new epoch reported as loss, then exactly once', async () => {
    await gw.createChannel('restart');
    const client = new TslmClient({ url: gw.publicUrl, ...fast });
    const log = record(client);
    const first = await client.subscribe('restart').ready;
    for (let i = 1; i <= 5; i++) await gw.publish('restart', i);
    await waitFor(() => log.messages.length === 5, 'five');
    await gw.kill();
    await waitFor(() => log.disconnects.length >= 1, 'the crash noticed');
    await sleep(200);
    await gw.startAgain();
    // The restarted gateway has no channels: the client retries its subscription until the
    // channel is created again.
    await sleep(300);
    const created = await gw.createChannel('restart');
    assert.notEqual(created.epoch, first.epoch);
    for (let i = 1; i <= 3; i++) await gw.publish('restart', `new ${i}`);
    await waitFor(() => log.messages.filter((m) => m.epoch === created.epoch).length === 3, 'three of the new epoch');
    for (let i = 4; i <= 6; i++) await gw.publish('restart', `new ${i}`);
    await waitFor(() => log.messages.filter((m) => m.epoch === created.epoch).length === 6, 'six of the new epoch');
    await sleep(100);
    const old = log.messages.filter((m) => m.epoch === first.epoch).map((m) => m.offset);
    const fresh = log.messages.filter((m) => m.epoch === created.epoch).map((m) => m.offset);
    assertExactlyOnce(old, 5);
    assert.equal(old.length, 5);
    assertExactlyOnce(fresh, 6);
    assert.equal(fresh.length, 6);
    assert.equal(log.losses.length, 1);
    assert.deepEqual(
      { reason: log.losses[0].reason, previousEpoch: log.losses[0].previousEpoch, epoch: log.losses[0].epoch },
      { reason: 'epoch_changed', previousEpoch: first.epoch, epoch: created.epoch },
    );
    // The loss comes before the first message of the new epoch.
    client.close();
  });
});
