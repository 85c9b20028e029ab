// Soak: 20 VUs for 30 min (plus 2 min ramps) -- on demand only, to find leaks and slow drifts.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { profileScript } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

export const { options, setup, teardown, handleSummary } = profileScript('soak');
