// Stress: ramp to 40 then 80 VUs over 4 min, hold 5 min, ramp down; a fifth of the requests followed.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { drain, profileOptions, start, summary } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

const PROFILE = 'stress';

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
