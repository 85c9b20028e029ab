// Smoke: 2 VUs for 30 s, every request followed to the end and its results checked.
// Run it first, and after every deploy.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { drain, profileOptions, start, summary } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

const PROFILE = 'smoke';

export const options = profileOptions(PROFILE);

export function setup() {
  return start(PROFILE);
}

export function teardown() {
  drain();
}

export function handleSummary(data) {
  return summary(data, PROFILE);
}
