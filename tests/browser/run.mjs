// Opens one page in Debian's Chromium (headless) and prints what the page reports.
//
//   node tests/browser/run.mjs URL [TIMEOUT_MS]
//
// The page sets `window.__result` (any JSON value) and then `window.__done = true`; this prints
// `JSON.stringify(window.__result)` on one line and exits 0, or exits 1 with the reason on
// stderr (no Chromium, page error, timeout). Console lines of the page go to stderr.
// CHROMIUM overrides the browser's path (default /usr/bin/chromium).
import { chromium } from 'playwright-core';

const [url, timeoutArg] = process.argv.slice(2);
if (!url) {
  console.error('usage: node run.mjs URL [TIMEOUT_MS]');
  process.exit(2);
}
const timeout = Number(timeoutArg ?? 20000);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
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
try {
  const page = await browser.newPage();
  page.on('console', (m) => console.error(`[page] ${m.text()}`));
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.__done === true, null, { timeout });
  const result = await page.evaluate(() => window.__result);
  process.stdout.write(JSON.stringify(result) + '\n');
} catch (e) {
  console.error(`browser run failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
