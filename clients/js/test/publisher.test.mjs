// A Node service publishing on a private listener with `publisher_auth`: an Ed25519 key
// (challenge, signature) and a publisher token, against the real binary.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, createPrivateKey, generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { TslmClient } from '../dist/index.js';
import { BIN, Gateway, fast, record, waitFor } from './helpers.mjs';

// The key pair made by the binary's own `tslm keygen`, loaded as the README shows.
const keyDir = mkdtempSync(join(tmpdir(), 'tslm-js-key-'));
const keygen = spawnSync(BIN, ['keygen', '--out', join(keyDir, 'billing.key')], { encoding: 'utf8' });
assert.equal(keygen.status, 0, keygen.stderr);
const keysLine = keygen.stdout.split('\n').find((l) => l.startsWith('keys = '));
const seed = Buffer.from(readFileSync(join(keyDir, 'billing.key'), 'utf8').trim().replace('ed25519-secret:', ''), 'base64');
const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), seed]);
const privateKey = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
rmSync(keyDir, { recursive: true, force: true });
const otherKey = generateKeyPairSync('ed25519').privateKey;
const TOKEN = 'tslm_js_client_test_publisher_token_0123456789';
const tokenHash = createHash('sha256').update(TOKEN).digest('hex');

let gw;
before(async () => {
  gw = await Gateway.start({
    extra: `
[listener.secured]
ip = '127.0.0.1'
port = 0
default_endpoint_permissions = ['CreateChannel', 'NotifyChannel']
publisher_auth = true

[publisher.billing]
${keysLine}
token_hashes = ['sha256:${tokenHash}']
operations = ['create', 'publish']
channels = ['billing.*']
`,
  });
});
after(async () => {
  await gw.stop();
});

test('an Ed25519 publisher authenticates on every connection and publishes', async () => {
  const url = `ws://${gw.listeners.secured[0]}/`;
  const svc = new TslmClient({ url, ...fast, publisher: { name: 'billing', sign: (bytes) => sign(null, bytes, privateKey) } });
  const svcLog = record(svc);
  await svc.create('billing.invoices');
  const reader = new TslmClient({ url: gw.publicUrl, ...fast });
  const log = record(reader);
  await reader.subscribe('billing.invoices').ready;
  const r = await svc.publish('billing.invoices', { invoice: 2291 });
  assert.equal(r.offset, 1);
  await waitFor(() => log.messages.length === 1, 'the invoice');
  assert.deepEqual(log.messages[0].data, { invoice: 2291 });
  assert.equal(svcLog.tokens[0].publisher, 'billing');
  // Held to its channels.
  await assert.rejects(svc.publish('prices.eu', 1), (e) => e.code === 'forbidden');
  svc.close();
  reader.close();
});

test('a publisher token authenticates too; a wrong key is refused with a typed error', async () => {
  const url = `ws://${gw.listeners.secured[0]}/`;
  const svc = new TslmClient({ url, ...fast, token: () => TOKEN });
  await svc.create('billing.receipts');
  assert.equal((await svc.publish('billing.receipts', 'r1')).offset, 1);
  svc.close();

  const bad = new TslmClient({ url, ...fast, publisher: { name: 'billing', sign: (bytes) => sign(null, bytes, otherKey) } });
  const log = record(bad);
  await waitFor(() => log.errors.some((e) => e.code === 'unauthorized' && e.op === 'auth'), 'the refusal');
  assert.equal(log.opens.length, 0, 'never open');
  bad.close();
});
