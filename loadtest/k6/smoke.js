// Smoke: 2 VUs for 30 s, every request followed to the end and its results checked.
// Run it first, and after every deploy.
// Thresholds and environment variables: lib/squall.js and loadtest/README.md.
import { profileScript } from './lib/squall.js';

export { client, watchStats } from './lib/squall.js';

export const { options, setup, teardown, handleSummary } = profileScript('smoke');
