// Validates docs/asyncapi.yaml with @asyncapi/parser (no error diagnostics), then every golden
// fixture of crates/tslm-protocol/fixtures/v1/ against the document's schemas: each request,
// reply, error and event must match, and each invalid request must not. Exits 1 on any failure.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parser, fromFile } from '@asyncapi/parser';
import Ajv from 'ajv';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixtures = join(root, 'crates', 'tslm-protocol', 'fixtures', 'v1');
const load = (name) => JSON.parse(readFileSync(join(fixtures, `${name}.json`), 'utf8'));

const { document, diagnostics } = await fromFile(new Parser(), join(root, 'docs', 'asyncapi.yaml')).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length > 0) {
  console.error('docs/asyncapi.yaml does not validate:');
  for (const d of errors) console.error(`  ${d.path.join('.')}: ${d.message}`);
  process.exit(1);
}

const ajv = new Ajv({ strict: false, allErrors: true });
const schema = (name) => {
  const s = document.components().schemas().get(name);
  if (!s) throw new Error(`no schema ${name} in docs/asyncapi.yaml`);
  return ajv.compile(s.json());
};
const checks = {
  Request: schema('Request'),
  Reply: schema('Reply'),
  ErrorReply: schema('ErrorReply'),
  Event: schema('Event'),
  StreamEvent: schema('StreamEvent'),
};

let failed = 0;
let checked = 0;
const expect = (what, name, value, valid, want) => {
  checked++;
  const ok = valid(value);
  if (ok !== want) {
    failed++;
    console.error(`${what} ${name}: ${want ? 'refused' : 'accepted'} by the schema` + (ok ? '' : `: ${ajv.errorsText(valid.errors)}`));
  }
};
for (const f of load('requests')) expect('request', f.name, f.frame, checks.Request, true);
for (const f of load('replies')) expect('reply', f.name, f.json, checks.Reply, true);
for (const f of load('errors')) expect('error', f.name, f.json, checks.ErrorReply, true);
for (const f of load('events')) expect('event', f.name, f.json, checks.Event, true);
// The stream's own events, as docs/protocol.md shows them.
const stream = [
  ['subscribed', { event: 'subscribed', channel: 'prices', epoch: '5946aebb07cfbd49', offset: 8, from: 9 }],
  ['subscribed lost', { event: 'subscribed', channel: 'p', epoch: '5946aebb07cfbd49', offset: 8, from: 6, recovered: false, lost: { reason: 'expired', from: 1, to: 5 } }],
  ['message', { event: 'message', channel: 'prices', offset: 9, data: { bid: 101.5 } }],
  ['end', { event: 'end', reason: 'shutdown; retry_after_ms=2500' }],
];
for (const [name, json] of stream) expect('stream event', name, json, checks.StreamEvent, true);
for (const f of load('invalid_requests')) {
  let value;
  try {
    value = JSON.parse(f.frame);
  } catch {
    checked++;
    continue; // not JSON at all: nothing for a schema to accept
  }
  expect('invalid request', f.name, value, checks.Request, false);
}
// Shapes the protocol never sends are refused (the schemas are not vacuous).
expect('reply', 'unknown field', { ok: true, nonsense: 1 }, checks.Reply, false);
expect('event', 'unknown event', { event: 'teleport', channel: 'a' }, checks.Event, false);
expect('error', 'unknown code', { ok: false, error: { code: 'oops', message: '' } }, checks.ErrorReply, false);

if (failed > 0) {
  console.error(`${failed} of ${checked} checks failed`);
  process.exit(1);
}
console.log(`docs/asyncapi.yaml is valid AsyncAPI ${document.version()}; ${checked} fixtures and shapes checked against it`);
