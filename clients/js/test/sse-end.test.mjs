// The SSE transport's `end` events, with a scripted `fetch` (docs/protocol.md, section 12):
// token_expired gets a new token and reconnects at once, reload reconnects at once, shutdown
// waits the retry_after_ms it names.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TslmClient, serverSentEvents } from '../dist/index.js';
import { record, waitFor } from './helpers.mjs';

/** A fetch answering each request with the next script entry: SSE text, sent in one chunk. */
function scripted(streams) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url: String(url), authorization: init.headers.authorization });
    const text = streams.shift();
    if (text === undefined) return new Promise(() => {}); // the last stream stays open
    const body = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(text));
        if (text.includes('"event":"end"')) c.close(); // else it stays open
      },
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  return { fetch, requests };
}

const ev = (obj) => `event: ${obj.event}\ndata: ${JSON.stringify(obj)}\n\n`;
const subscribed = (offset) => ev({ event: 'subscribed', channel: 'c', epoch: '00000000000000aa', offset, from: offset + 1 });
const message = (offset) => ev({ event: 'message', channel: 'c', offset, data: offset });

for (const [reason, check] of [
  ['token_expired', (log, requests) => {
    assert.equal(log.disconnects[0].reaction, 'token');
    assert.equal(log.disconnects[0].delayMs, 0);
    assert.deepEqual(requests.map((r) => r.authorization), ['Bearer t1', 'Bearer t2'], 'a new token for the new stream');
  }],
  ['reload', (log) => {
    assert.equal(log.disconnects[0].delayMs, 0);
  }],
  ['shutdown; retry_after_ms=700', (log) => {
    assert.equal(log.disconnects[0].code, 1001);
    assert.ok(log.disconnects[0].delayMs >= 700, JSON.stringify(log.disconnects));
  }],
]) {
  test(`an end event \`${reason}\``, async () => {
    const { fetch, requests } = scripted([`retry: 3000\n\n${subscribed(0)}${message(1)}${ev({ event: 'end', reason })}`, `${subscribed(1)}${message(2)}`]);
    let n = 0;
    const client = new TslmClient({
      url: 'ws://gw.invalid/base/',
      transports: [serverSentEvents({ fetch })],
      token: () => `t${++n}`,
      // A backoff that would show: 4.5 s, except for shutdown, where at most 90 ms would.
      backoff: reason.startsWith('shutdown') ? { initialMs: 100, maxMs: 100 } : { initialMs: 5000, maxMs: 5000 },
      random: () => 0.9,
    });
    const log = record(client);
    try {
      client.subscribe('c');
      await waitFor(() => log.messages.length === 2, 'both messages', 10000);
      assert.deepEqual(log.messages.map((m) => m.offset), [1, 2]);
      assert.equal(log.disconnects.length, 1);
      assert.equal(log.disconnects[0].reason, reason);
      // The second stream resumes from the position, not from `new`.
      assert.equal(requests.at(-1).url, 'http://gw.invalid/base/v1/events?channel=c%4000000000000000aa%3A1');
      check(log, requests);
    } finally {
      client.close();
    }
  });
}
