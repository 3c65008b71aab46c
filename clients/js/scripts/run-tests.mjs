// Runs test/*.test.mjs with node's test runner, one file at a time, with
// --unhandled-rejections=strict; adds --experimental-websocket where the global WebSocket needs it
// (Node 20).
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const files = readdirSync(join(root, 'test'))
  .filter((f) => f.endsWith('.test.mjs'))
  .sort()
  .map((f) => join('test', f));
const flags = ['--unhandled-rejections=strict'];
if (typeof WebSocket === 'undefined' && process.allowedNodeEnvironmentFlags.has('--experimental-websocket')) flags.push('--experimental-websocket');
const r = spawnSync(process.execPath, [...flags, '--test', '--test-concurrency=1', ...process.argv.slice(2), ...files], { cwd: root, stdio: 'inherit' });
process.exit(r.status ?? 1);
