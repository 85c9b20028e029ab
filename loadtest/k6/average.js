// Average load: ramp to 20 VUs over 1 min, hold 5 min, ramp down; half the requests followed to the end.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { profileScript } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

export const { options, setup, teardown, handleSummary } = profileScript('average');
