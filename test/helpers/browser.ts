import { existsSync } from 'node:fs';
import { type Browser, chromium } from 'playwright-core';

/** Debian's Chromium (`apt-get install chromium`), driven by playwright-core: no browser download. */
export const CHROMIUM = '/usr/bin/chromium';

/**
 * Flags for a headless Chromium that asks nothing of the network by itself (no background
 * networking, component updates, sync or QUIC). Playwright gives every launch a fresh profile of
 * its own (a temporary --user-data-dir), removed when the browser closes.
 */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Why the browser tests cannot run here, or false when they can. Without Chromium they are skipped
 * with the printed reason, unless STEERD_REQUIRE_BROWSER is set (CI sets it): then they fail.
 */
export function browserSkip(): string | false {
  if (existsSync(CHROMIUM)) return false;
  const reason = `no Chromium at ${CHROMIUM} (apt-get install chromium)`;
  if (process.env.STEERD_REQUIRE_BROWSER) throw new Error(`STEERD_REQUIRE_BROWSER is set but there is ${reason}`);
  console.log(`# skipping the browser tests: ${reason}`);
  return reason;
}

export const launchChromium = (): Promise<Browser> =>
  chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, timeout: 60_000 });
