// Spike: 2 VUs, a jump to 200 VUs within 10 s held for 1 min, back to 2 VUs (does it recover?).
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { drain, profileOptions, start, summary } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

const PROFILE = 'spike';

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
