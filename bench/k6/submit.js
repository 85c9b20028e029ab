// Closed-loop intake load: each VU posts one request, waits for the answer, and posts the next.
//
// Environment:
//   BASE_URL           gateway URL, e.g. http://127.0.0.1:8888 (required)
//   ITEMS_PER_REQUEST  items in each request (default 1)
//   JOB                processing of every item (default sum)
//   RUN_ID             makes rids unique across runs (default: the start time)
//   SUMMARY_PATH       where handleSummary writes the end-of-test summary as JSON (default summary.json)
//
// VUs and duration come from the command line (--vus, --duration).
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL;
if (!BASE_URL) {
  throw new Error('BASE_URL is required');
}
const ITEMS_PER_REQUEST = parseInt(__ENV.ITEMS_PER_REQUEST || '1', 10);
const JOB = __ENV.JOB || 'sum';
const RUN_ID = __ENV.RUN_ID || String(Date.now());
const SUMMARY_PATH = __ENV.SUMMARY_PATH || 'summary.json';

const accepted = new Counter('accepted_202');
const notAccepted = new Counter('not_accepted');

// The items are the same in every request; only the rid changes. Build their JSON once per VU so the
// load generator spends its CPU on sending, not on serialising.
const ITEMS_JSON = JSON.stringify(
  Array.from({ length: ITEMS_PER_REQUEST }, (_, i) => ({ number: i + 1, job: JOB })),
);
const URL = `${BASE_URL}/v1/requests`;
const PARAMS = {
  headers: { 'Content-Type': 'application/json' },
  timeout: '10s',
  responseType: 'none',
  tags: { name: 'POST /v1/requests' },
};

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'p(50)', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const rid = `${__VU}-${__ITER}-${RUN_ID}`;
  const res = http.post(URL, `{"rid":${JSON.stringify(rid)},"items":${ITEMS_JSON}}`, PARAMS);
  const ok = check(res, { 'status is 202': (r) => r.status === 202 });
  if (ok) {
    accepted.add(1);
  } else {
    notAccepted.add(1, { status: String(res.status) });
  }
}

export function handleSummary(data) {
  return { [SUMMARY_PATH]: JSON.stringify(data, null, 2) };
}
