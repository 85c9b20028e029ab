// Open-loop intake load: RATE requests per second for DURATION, whatever the answers take (k6's
// constant-arrival-rate executor), so that a slow answer does not slow the load down and latency is
// measured without coordinated omission. The requests are submit.js's.
//
// Environment (besides submit.js's BASE_URL, ITEMS_PER_REQUEST, JOB, RUN_ID, SUMMARY_PATH):
//   RATE       requests per second (required)
//   DURATION   how long, as a k6 duration (required), e.g. 30m
//   MAX_VUS    VUs k6 may use to keep the rate when answers are slow (default 200)
// k6's dropped_iterations counts the requests it could not start in time: the rate was not held.
import submit, { handleSummary } from './submit.js';

const RATE = parseInt(__ENV.RATE || '0', 10);
if (!(RATE > 0) || !__ENV.DURATION) {
  throw new Error('RATE (> 0) and DURATION are required');
}
const MAX_VUS = parseInt(__ENV.MAX_VUS || '200', 10);

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'p(50)', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION,
      preAllocatedVUs: Math.min(MAX_VUS, Math.max(10, Math.ceil(RATE / 10))),
      maxVUs: MAX_VUS,
    },
  },
};

export default submit;
export { handleSummary };
