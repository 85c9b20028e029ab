// Average load: ramp to 20 VUs over 1 min, hold 5 min, ramp down; half the requests followed to the end.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { drain, profileOptions, start, summary } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

const PROFILE = 'average';

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
