// The example page in Debian's Chromium (headless, driven by playwright-core; no browser is
// downloaded) against the real gateway: live messages rendered, a network drop survived with
// every offset shown exactly once, and a screenshot whose pixels are checked.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from '../examples/serve.mjs';
import { Gateway, Proxy, accessToken, sleep } from './helpers.mjs';

const artifacts = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');

let gw, proxy, web, browser;
before(async () => {
  gw = await Gateway.start();
  proxy = await Proxy.start(gw.public);
  web = await serve(0);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    // As tests/browser/run.mjs: no background networking (this machine's network is closed).
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});
after(async () => {
  await browser?.close();
  await new Promise((res) => (web ? web.close(res) : res()));
  await proxy?.stop();
  await gw?.stop();
});

const offsets = (page) => page.$$eval('#messages li.message', (lis) => lis.map((li) => Number(li.dataset.offset)));

test('the example page renders live messages, survives a network drop, and looks connected', async () => {
  await gw.createChannel('live');
  for (let i = 1; i <= 3; i++) await gw.publish('live', { n: i, text: `before ${i}` });

  const page = await browser.newPage({ viewport: { width: 800, height: 600 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const { port } = web.address();
  await page.goto(`http://127.0.0.1:${port}/examples/live.html?url=${encodeURIComponent(proxy.url)}&channel=live&start=oldest`);

  // The replayed backlog, then live messages.
  await page.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 3, null, { timeout: 15000 });
  await page.waitForSelector('#status[data-state="open"]');
  for (let i = 4; i <= 6; i++) await gw.publish('live', { n: i, text: `live ${i}` });
  await page.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 6, null, { timeout: 15000 });

  // The network drops (every TCP connection reset, new ones refused) while messages are published.
  proxy.drop();
  await page.waitForSelector('#status:not([data-state="open"])', { timeout: 15000 });
  for (let i = 7; i <= 10; i++) await gw.publish('live', { n: i, text: `while away ${i}` });
  await sleep(300);
  proxy.restore();
  await page.waitForFunction(() => document.querySelectorAll('#messages li.message').length >= 10, null, { timeout: 30000 });
  await page.waitForSelector('#status[data-state="open"]');
  await sleep(200);

  assert.deepEqual(await offsets(page), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'every offset exactly once, in order');
  const texts = await page.$$eval('#messages li.message', (lis) => lis.map((li) => li.textContent));
  assert.equal(texts[0], '1 {"n":1,"text":"before 1"}');
  assert.equal(texts[9], '10 {"n":10,"text":"while away 10"}');
  assert.equal(await page.$$eval('#messages li.loss', (l) => l.length), 0, 'nothing reported lost');
  assert.equal(await page.textContent('#status'), 'open');
  assert.deepEqual(pageErrors, []);

  // `online` reconnects at once: with a first reconnect delay drawn below one hour (?retry), the
  // page comes back within seconds only through the browser's `online` event.
  const slow = await browser.newContext({ viewport: { width: 800, height: 600 } });
  const slowPage = await slow.newPage();
  await slowPage.goto(`http://127.0.0.1:${port}/examples/live.html?url=${encodeURIComponent(proxy.url)}&channel=live&start=oldest&retry=3600000`);
  await slowPage.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 10, null, { timeout: 15000 });
  proxy.drop();
  await slowPage.waitForSelector('#status[data-state="waiting"]', { timeout: 15000 });
  await gw.publish('live', { n: 11, text: 'after the online event' });
  proxy.restore();
  await slow.setOffline(true);
  await slow.setOffline(false); // the browser fires `online`
  await slowPage.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 11, null, { timeout: 15000 });
  assert.deepEqual(await offsets(slowPage), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  await slow.close();
  // The first page went through that drop too.
  await page.waitForFunction(() => document.querySelectorAll('#messages li.message').length === 11, null, { timeout: 30000 });
  await page.waitForSelector('#status[data-state="open"]');
  assert.deepEqual(await offsets(page), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);

  // The screenshot, kept as an artefact, and its pixels checked: decoded by Chromium itself in a
  // second page (no image library needed).
  mkdirSync(artifacts, { recursive: true });
  const png = await page.screenshot({ fullPage: false });
  writeFileSync(join(artifacts, 'live.png'), png);
  const badge = await page.locator('#status').boundingBox();
  const list = await page.locator('#messages').boundingBox();
  const decoder = await browser.newPage();
  const stats = await decoder.evaluate(
    async ({ b64, badge, list }) => {
      const img = new Image();
      img.src = `data:image/png;base64,${b64}`;
      await img.decode();
      const canvas = document.createElement('canvas');
      canvas.width = img.width;
      canvas.height = img.height;
      const ctx = canvas.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const region = (r) => ctx.getImageData(Math.round(r.x), Math.round(r.y), Math.round(r.width), Math.round(r.height)).data;
      // The badge: share of pixels close to the "open" green #1a7f37.
      const b = region(badge);
      let green = 0;
      for (let i = 0; i < b.length; i += 4) if (Math.abs(b[i] - 0x1a) < 40 && Math.abs(b[i + 1] - 0x7f) < 40 && Math.abs(b[i + 2] - 0x37) < 40) green++;
      // The message list: share of dark (text) pixels and of the offsets' blue #0969da.
      const l = region(list);
      let dark = 0, blue = 0;
      for (let i = 0; i < l.length; i += 4) {
        if (l[i] < 100 && l[i + 1] < 100 && l[i + 2] < 100) dark++;
        if (Math.abs(l[i] - 0x09) < 50 && Math.abs(l[i + 1] - 0x69) < 50 && l[i + 2] > 170) blue++;
      }
      return { width: img.width, height: img.height, green: green / (b.length / 4), dark: dark / (l.length / 4), blue };
    },
    { b64: png.toString('base64'), badge, list },
  );
  await decoder.close();
  assert.deepEqual([stats.width, stats.height], [800, 600]);
  assert.ok(stats.green > 0.5, `the status badge is green (open) in the screenshot: ${JSON.stringify(stats)}`);
  assert.ok(stats.dark > 0.01, `the message list has rendered text: ${JSON.stringify(stats)}`);
  assert.ok(stats.blue > 50, `the offsets are drawn in blue: ${JSON.stringify(stats)}`);

  // The gateway is killed and restarted on the same ports: the page shows the lost history once
  // and carries on in the new epoch.
  const oldEpoch = await page.$eval('#messages li.message', (li) => li.dataset.epoch);
  await gw.kill();
  await page.waitForSelector('#status:not([data-state="open"])', { timeout: 15000 });
  await gw.startAgain();
  const created = await gw.createChannel('live');
  assert.notEqual(created.epoch, oldEpoch);
  for (let i = 1; i <= 3; i++) await gw.publish('live', { n: i, text: `new epoch ${i}` });
  await page.waitForFunction(
    (epoch) => [...document.querySelectorAll('#messages li.message')].filter((li) => li.dataset.epoch === epoch).length === 3,
    created.epoch,
    { timeout: 30000 },
  );
  await sleep(200);
  const rows = await page.$$eval('#messages li', (lis) => lis.map((li) => [li.className, li.dataset.epoch ?? null, Number(li.dataset.offset ?? 0), li.textContent]));
  const expectedRows = [
    ...Array.from({ length: 11 }, (_, i) => ['message', oldEpoch, i + 1]),
    ['loss', null, 0],
    ...[1, 2, 3].map((o) => ['message', created.epoch, o]),
  ];
  assert.deepEqual(rows.map(([c, e, o]) => [c, e, o]), expectedRows, 'the old epoch once, one loss row, the new epoch once');
  assert.match(rows[11][3], /epoch changed/);
  assert.deepEqual(pageErrors, []);
  await page.close();
});

test('in Chromium: an access token refreshed through the callback, past its first expiry', async () => {
  await gw.createChannel('secure.browser');
  const page = await browser.newPage();
  let minted = 0;
  await page.exposeFunction('mintToken', () => {
    minted++;
    return accessToken({ channels: ['secure.*'], ttl: 3 });
  });
  const { port } = web.address();
  await page.goto(`http://127.0.0.1:${port}/test/blank.html`); // an empty page of the origin that serves dist/
  const firstExpiry = await page.evaluate(async (url) => {
    const { TslmClient } = await import('/dist/index.js');
    const log = (window.__log = { messages: [], tokens: [], disconnects: [] });
    const client = new TslmClient({ url, token: () => window.mintToken(), refreshBeforeMs: 1000 });
    client.on('message', (m) => log.messages.push(m.data));
    client.on('token', (t) => log.tokens.push(t.expiresAt));
    client.on('disconnect', (d) => log.disconnects.push(d.code));
    await client.subscribe('secure.browser').ready;
    return log.tokens[0];
  }, proxy.url);
  await new Promise((res) => setTimeout(res, Math.max(0, (firstExpiry + 1.5) * 1000 - Date.now())));
  await gw.publish('secure.browser', 'after the first expiry');
  await page.waitForFunction(() => window.__log.messages.length === 1, null, { timeout: 15000 });
  const log = await page.evaluate(() => window.__log);
  assert.deepEqual(log.messages, ['after the first expiry']);
  assert.deepEqual(log.disconnects, [], 'no 4003, no reconnect');
  assert.ok(log.tokens.length >= 2 && log.tokens.at(-1) > firstExpiry, JSON.stringify(log.tokens));
  assert.ok(minted >= 2, `tokens minted: ${minted}`);
  await page.close();
});
