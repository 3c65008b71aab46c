// The library stays small and has no runtime dependency.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { measure } from '../scripts/size.mjs';

test('no runtime dependencies, and under 8 KiB minified and gzipped', async () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  assert.equal(pkg.dependencies, undefined, 'devDependencies only');
  const { minified, gzipped } = await measure();
  assert.ok(minified > 1000, `the bundle has the library in it: ${minified}`);
  assert.ok(gzipped < 8192, `minified + gzipped: ${gzipped} bytes`);
  console.log(`# size: minified ${minified} bytes, minified + gzipped ${gzipped} bytes`);
});
