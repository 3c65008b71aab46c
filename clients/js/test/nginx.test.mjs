// Behind a real reverse proxy: Debian's nginx, with its default proxy buffering on and no upgrade
// headers passed (so WebSocket handshakes fail), in front of the gateway. A page in headless
// Chromium falls back to Server-Sent Events by itself and renders live messages in order, each
// offset once: the gateway's `X-Accel-Buffering: no` keeps nginx from buffering the stream.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { serve } from '../examples/serve.mjs';
import { Gateway, sleep, waitFor } from './helpers.mjs';

const NGINX = process.env.NGINX ?? (existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx');

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

let gw, web, browser, nginx, dir, nginxPort;
before(async () => {
  gw = await Gateway.start();
  web = await serve(0);
  dir = mkdtempSync(join(tmpdir(), 'tslm-nginx-'));
  nginxPort = await freePort();
  // The page and the library from the static server at `/`, the gateway under `/gw/`. Nothing
  // about upgrades or buffering is configured: nginx's defaults (HTTP/1.0 upstream, no
  // `Upgrade`/`Connection` passed, `proxy_buffering on`).
  writeFileSync(
    join(dir, 'nginx.conf'),
    `
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
worker_processes 1;
events { worker_connections 64; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${nginxPort};
    location /gw/ { proxy_pass http://${gw.public}/; }
    location / { proxy_pass http://127.0.0.1:${web.address().port}; }
  }
}
`,
  );
  nginx = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  nginx.stderr.on('data', (d) => (stderr += d));
  const reap = () => nginx.kill('SIGKILL');
  process.once('exit', reap);
  nginx.once('exit', () => process.off('exit', reap));
  await waitFor(() => {
    if (nginx.exitCode !== null) throw new Error(`nginx exited: ${stderr}`);
    return existsSync(join(dir, 'nginx.pid'));
  }, 'nginx to start', 15000);
  // Ready when it answers.
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${nginxPort}/test/blank.html`);
      if (r.ok) break;
    } catch {
      /* not yet */
    }
    if (i > 100) throw new Error(`nginx does not answer: ${stderr}`);
    await sleep(50);
  }
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    // As tests/browser/run.mjs: no background networking (this machine's network is closed).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  if (nginx && nginx.exitCode === null) {
    const exited = new Promise((res) => nginx.once('exit', res));
    process.kill(nginx.pid, 'SIGQUIT');
    await exited;
  }
  await new Promise((res) => (web ? web.close(res) : res()));
  await gw?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('through nginx, a page falls back to SSE by itself and renders live messages, each once, in order', async () => {
  await gw.createChannel('proxied');
  for (let i = 1; i <= 3; i++) await gw.publish('proxied', { n: i });

  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`http://127.0.0.1:${nginxPort}/test/blank.html`);
  await page.evaluate(async (url) => {
    const { TslmClient, webSocket, serverSentEvents, longPoll } = await import('/dist/index.js');
    const list = document.createElement('ul');
    list.id = 'messages';
    document.body.append(list);
    const status = document.createElement('p');
    status.id = 'status';
    document.body.append(status);
    const log = (window.__log = { opens: [], losses: 0, disconnects: [] });
    // The page only names the order; the choice is the client's.
    const client = new TslmClient({ url, transports: [webSocket(), serverSentEvents(), longPoll()], backoff: { initialMs: 50, maxMs: 400 } });
    client.on('open', (o) => {
      log.opens.push(o.transport);
      status.dataset.transport = o.transport;
    });
    client.on('loss', () => log.losses++);
    client.on('disconnect', (d) => log.disconnects.push(`${d.code} ${d.reason}`));
    client.on('message', (m) => {
      const li = document.createElement('li');
      li.dataset.offset = String(m.offset);
      li.textContent = `${m.offset} ${JSON.stringify(m.data)}`;
      list.append(li);
    });
    window.__client = client;
    await client.subscribe('proxied', { start: 'oldest' }).ready;
  }, `ws://127.0.0.1:${nginxPort}/gw/`);

  await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 3, null, { timeout: 15000 });
  // Live messages one at a time: each must come through nginx's buffer while the stream stays open.
  for (let i = 4; i <= 8; i++) {
    await gw.publish('proxied', { n: i });
    await page.waitForFunction((n) => document.querySelectorAll('#messages li').length === n, i, { timeout: 15000 });
  }
  await sleep(300);
  const offsets = await page.$$eval('#messages li', (lis) => lis.map((li) => Number(li.dataset.offset)));
  assert.deepEqual(offsets, [1, 2, 3, 4, 5, 6, 7, 8], 'every offset once, in order');
  const texts = await page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
  assert.equal(texts[7], '8 {"n":8}');
  const state = await page.evaluate(() => ({ transport: window.__client.transport, opens: window.__log.opens, losses: window.__log.losses, disconnects: window.__log.disconnects, badge: document.querySelector('#status').dataset.transport }));
  assert.equal(state.transport, 'sse', JSON.stringify(state));
  assert.equal(state.badge, 'sse');
  assert.deepEqual(state.opens, ['sse'], 'one SSE stream for all of it: no reconnect, no long-poll');
  assert.equal(state.losses, 0);
  assert.ok(state.disconnects.length >= 1 && state.disconnects.every((d) => d.startsWith('1006')), `the WebSocket failed first: ${JSON.stringify(state)}`);
  assert.deepEqual(pageErrors, []);
  // The WebSocket handshake did reach the gateway through nginx, and failed there; the stream went
  // through nginx too (logged when it ends: after the client closes it).
  await page.evaluate(() => window.__client.close());
  let access = '';
  await waitFor(() => (access = readFileSync(join(dir, 'access.log'), 'utf8')).includes('/gw/v1/events'), 'the stream in the access log');
  assert.match(access, /"GET \/gw\/ HTTP\/1\.1" 4\d\d/, access);
  assert.match(access, /"GET \/gw\/v1\/events\?channel=proxied%40oldest/, access);
  await page.close();
});
