// Soak: 20 VUs for 30 min (plus 2 min ramps) -- on demand only, to find leaks and slow drifts.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { drain, profileOptions, start, summary } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

const PROFILE = 'soak';

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
