// Stress: ramp to 40 then 80 VUs over 4 min, hold 5 min, ramp down; a fifth of the requests followed.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { profileScript } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

export const { options, setup, teardown, handleSummary } = profileScript('stress');
