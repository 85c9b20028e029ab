// Spike: 2 VUs, a jump to 200 VUs within 10 s held for 1 min, back to 2 VUs (does it recover?).
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { profileScript } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

export const { options, setup, teardown, handleSummary } = profileScript('spike');
