// Opens the gateway's admin page in Debian's Chromium (headless), as an operator would, and
// prints what it shows.
//
//   node tests/browser/admin.mjs URL TOKEN SCREENSHOT_PATH [TIMEOUT_MS]
//
// Every request carries `Authorization: Bearer TOKEN` (the admin listener's token). Prints one
// JSON line: the HTTP status, the page's tables read as text after the first load, the same
// after the page has reloaded itself (its `<meta http-equiv="refresh">`), and how many loads
// were seen; saves a full-page screenshot of the first load at SCREENSHOT_PATH. Exits 1 with the
// reason on stderr on failure (no Chromium, timeout). CHROMIUM overrides the browser's path
// (default /usr/bin/chromium).
import { chromium } from 'playwright-core';

const [url, token, screenshot, timeoutArg] = process.argv.slice(2);
if (!url || !token || !screenshot) {
  console.error('usage: node admin.mjs URL TOKEN SCREENSHOT_PATH [TIMEOUT_MS]');
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
  const context = await browser.newContext({
    extraHTTPHeaders: { Authorization: `Bearer ${token}` },
    viewport: { width: 1100, height: 800 },
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  let loads = 0;
  page.on('load', () => { loads += 1; });
  const read = () => page.evaluate(() => {
    const table = (id) => [...document.querySelectorAll(`table#${id} tr`)]
      .map((tr) => [...tr.children].map((c) => c.textContent));
    const link = (id) => document.querySelector(`a#${id}`)?.getAttribute('href') ?? null;
    return {
      title: document.title,
      refresh: document.querySelector('meta[http-equiv="refresh"]')?.getAttribute('content') ?? null,
      scripts: document.scripts.length,
      node: table('node'),
      listeners: table('listeners'),
      counts: table('counts'),
      refusals: table('refusals'),
      channels: table('channels'),
      next: link('next'),
    };
  });
  const response = await page.goto(url);
  const first = await read();
  await page.screenshot({ path: screenshot, fullPage: true });
  // The page reloads itself: wait for the next load.
  await page.waitForEvent('load', { timeout });
  const second = await read();
  process.stdout.write(JSON.stringify({ status: response.status(), first, second, loads }) + '\n');
} catch (e) {
  console.error(`browser run failed: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
