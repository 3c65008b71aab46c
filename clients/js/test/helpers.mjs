// Shared helpers of the client tests: the real `tslm` binary on loopback, a TCP proxy that can
// drop the network, HS256 access tokens, and small waiting utilities.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = resolve(here, '..', process.env.TSLM_BIN ?? '../../target/debug/tslm');

/** The shared secret of the `test` issuer: 32 bytes, base64. */
export const ISSUER_SECRET = Buffer.from('tslm-js-client-test-secret-32by!').toString('base64');
export const AUDIENCE = 'tslm-js';

/** A configuration: a public listener (Subscribe), a private one (CreateChannel, NotifyChannel),
 * an HS256 issuer, `secure.*` channels that need an access token, `rpc.*` with replies on. */
export function config({ publicPort = 0, privatePort = 0, extra = '' } = {}) {
  return `
[listener.public]
ip = '127.0.0.1'
port = ${publicPort}
default_endpoint_permissions = ['Subscribe']

[listener.private]
ip = '127.0.0.1'
port = ${privatePort}
default_endpoint_permissions = ['CreateChannel', 'NotifyChannel', 'Subscribe']

[issuer.test]
issuer = 'tslm-js-test'
secret = '${ISSUER_SECRET}'
audiences = ['${AUDIENCE}']
channels_claim = 'tslm_channels'
leeway_seconds = 0

[channel."secure.*"]
subscribers = 'authenticated'

[channel."rpc.*"]
replies = true

${extra}
`;
}

async function waitForFile(path, ms = 30000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (existsSync(path)) {
      try {
        return JSON.parse(readFileSync(path, 'utf8'));
      } catch {
        /* written aside and renamed, but be patient */
      }
    }
    if (Date.now() > deadline) throw new Error(`no ready file at ${path}`);
    await sleep(20);
  }
}

/** A running gateway. `restart()` stops it and starts a new process on the same ports. */
export class Gateway {
  static async start(options = {}) {
    const g = new Gateway(options);
    await g.#spawn(0, 0);
    return g;
  }

  constructor(options) {
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), 'tslm-js-'));
    this.child = null;
  }

  async #spawn(publicPort, privatePort) {
    const cfg = join(this.dir, 'tslm.toml');
    const ready = join(this.dir, `ready-${Date.now()}.json`);
    writeFileSync(cfg, config({ publicPort, privatePort, extra: this.options.extra ?? '' }));
    const child = spawn(BIN, ['serve', '--config', cfg, '--ready-file', ready], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-4000);
    });
    const exited = new Promise((res) => child.once('exit', (code) => res(code)));
    // Never leave a gateway behind, even when a test file dies early.
    const reap = () => child.kill('SIGKILL');
    process.once('exit', reap);
    exited.then(() => process.off('exit', reap));
    this.child = child;
    this.exited = exited;
    const doc = await Promise.race([
      waitForFile(ready),
      exited.then((code) => {
        throw new Error(`tslm exited with ${code}: ${stderr}`);
      }),
    ]);
    this.listeners = doc.listeners;
    this.public = doc.listeners.public[0];
    this.private = doc.listeners.private[0];
  }

  get publicUrl() {
    return `ws://${this.public}/`;
  }
  get privateUrl() {
    return `ws://${this.private}/`;
  }
  port(which) {
    return Number(this[which].split(':').pop());
  }

  /** Kills the process (SIGKILL: no close frames, like a crash) and waits for it to exit. */
  async kill() {
    if (!this.child) return;
    this.child.kill('SIGKILL');
    await this.exited;
    this.child = null;
  }

  /** Stops the process gracefully (SIGTERM: every session is closed with 1001 going away). */
  async terminate() {
    if (!this.child) return;
    this.child.kill('SIGTERM');
    await this.exited;
    this.child = null;
  }

  /** Starts a new process on the same ports (the old one must be gone). */
  async startAgain() {
    await this.#spawn(this.port('public'), this.port('private'));
  }

  async stop() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** An HTTP API call on the private listener. */
  async http(method, path, body) {
    const res = await fetch(`http://${this.private}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    if (!json.ok) throw new Error(`${method} ${path}: ${JSON.stringify(json)}`);
    return json;
  }

  createChannel(name) {
    return this.http('PUT', `/v1/channels/${name}`);
  }

  publish(name, data) {
    return this.http('POST', `/v1/channels/${name}/messages`, data);
  }
}

/** A TCP proxy on loopback in front of `target` ("host:port"). `drop()` resets every connection
 * and refuses new ones until `restore()`; `freeze()` keeps connections open but stops forwarding
 * (a silent network failure). */
export class Proxy {
  static async start(target) {
    const p = new Proxy(target);
    await new Promise((res) => p.server.listen(0, '127.0.0.1', res));
    p.port = p.server.address().port;
    return p;
  }

  constructor(target) {
    const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
    this.down = false;
    this.frozen = false;
    this.pairs = new Set();
    this.accepted = 0;
    this.server = net.createServer((client) => {
      if (this.down) {
        client.resetAndDestroy();
        return;
      }
      this.accepted++;
      const upstream = net.connect(port, host);
      const pair = { client, upstream };
      this.pairs.add(pair);
      const end = () => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
      client.on('data', (d) => {
        if (!this.frozen) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!this.frozen) client.write(d);
      });
    });
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/`;
  }

  drop() {
    this.down = true;
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  restore() {
    this.down = false;
    this.frozen = false;
  }

  freeze() {
    this.frozen = true;
  }

  /** Stops reading from the gateway (TCP backpressure: the gateway's writes to this client
   * stall, as with a client that does not keep up) until `resume()`; nothing is lost. */
  pause() {
    for (const { upstream } of this.pairs) upstream.pause();
  }

  resume() {
    for (const { upstream } of this.pairs) upstream.resume();
  }

  async stop() {
    this.drop();
    await new Promise((res) => this.server.close(res));
  }
}

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 access token of the test issuer granting `channels`, valid for `ttl` seconds. */
export function accessToken({ channels = ['secure.*'], ttl = 60, sub = 'alice' } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ iss: 'tslm-js-test', aud: AUDIENCE, sub, iat: now, exp: now + ttl, tslm_channels: channels });
  const sig = createHmac('sha256', Buffer.from(ISSUER_SECRET, 'base64')).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

export const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

/** Waits until `predicate()` is true, polling; fails after `ms` with `what`. */
export async function waitFor(predicate, what, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** Records everything a client reports, for assertions. */
export function record(client) {
  const log = { messages: [], losses: [], errors: [], disconnects: [], opens: [], tokens: [], ended: [], replies: [] };
  client.on('message', (m) => log.messages.push(m));
  client.on('loss', (l) => log.losses.push(l));
  client.on('error', (e) => log.errors.push(e));
  client.on('disconnect', (d) => log.disconnects.push(d));
  client.on('open', (o) => log.opens.push(o));
  client.on('token', (t) => log.tokens.push(t));
  client.on('ended', (e) => log.ended.push(e));
  client.on('reply', (r) => log.replies.push(r));
  return log;
}

/** Fast reconnects for tests. */
export const fast = { backoff: { initialMs: 50, maxMs: 400 }, penaltyMs: 200 };
