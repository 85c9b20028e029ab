// Shared code of Squall's k6 scripts: settings from the environment, the calls of the v1 API and of the
// original /number_request contract, a client's journey (submit, then poll until processed), the load
// profiles and their thresholds, a drain check and the end-of-test summary.
//
// Every script is a thin file naming its profile (smoke.js, average.js, stress.js, spike.js, soak.js);
// loadtest/README.md lists the environment variables read here.
import http from 'k6/http';
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

// ---------------------------------------------------------------------------------------------- settings

function env(name, fallback) {
  const value = __ENV[name];
  return value === undefined || value === '' ? fallback : value;
}

function numberFromEnv(name, fallback) {
  const raw = env(name, undefined);
  if (raw === undefined) {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`${name} must be a non-negative number, not ${JSON.stringify(raw)}`);
  }
  return value;
}

function integerFromEnv(name, fallback) {
  const value = numberFromEnv(name, fallback);
  if (!Number.isInteger(value)) {
    throw new Error(`${name} must be a whole number, not ${JSON.stringify(__ENV[name])}`);
  }
  return value;
}

// What the built-in processings compute, to check results; other jobs are only checked for completion.
const EXPECTED = { sum: (n) => n + 2, mul: (n) => n * 2 };

export const settings = {
  baseUrl: env('SQUALL_URL', 'http://127.0.0.1:8888').replace(/\/+$/, ''),
  token: env('SQUALL_TOKEN', ''),
  itemsPerRequest: integerFromEnv('SQUALL_ITEMS', 3),
  jobs: env('SQUALL_JOBS', 'sum,mul')
    .split(',')
    .map((job) => job.trim())
    .filter((job) => job !== ''),
  // Every Nth iteration of a VU speaks the original contract (/number_request) instead of /v1; 0: never.
  legacyEvery: integerFromEnv('SQUALL_LEGACY_EVERY', 4),
  pollIntervalSeconds: numberFromEnv('SQUALL_POLL_INTERVAL', 0.25),
  followTimeoutSeconds: numberFromEnv('SQUALL_FOLLOW_TIMEOUT', 60),
  drainTimeoutSeconds: numberFromEnv('SQUALL_DRAIN_TIMEOUT', 120),
  summaryPath: env('SQUALL_SUMMARY', ''),
  runId: env('SQUALL_RUN_ID', ''),
};
if (settings.itemsPerRequest < 1 || settings.jobs.length === 0) {
  throw new Error('SQUALL_ITEMS must be at least 1 and SQUALL_JOBS must name at least one processing');
}

function headers(extra) {
  const result = { 'Content-Type': 'application/json', ...extra };
  if (settings.token) {
    result.Authorization = `Bearer ${settings.token}`;
  }
  return result;
}

// One set of request parameters per endpoint: the `name` tag groups URLs holding a rid into one series,
// `api` and `endpoint` let thresholds and the summary tell the contracts apart.
function params(api, endpoint, name, extra = {}) {
  return { headers: headers(), timeout: '30s', tags: { api, endpoint, name }, ...extra };
}

const P = {
  v1Submit: params('v1', 'submit', 'POST /v1/requests'),
  v1Status: params('v1', 'status', 'GET /v1/requests/{rid}'),
  legacySubmit: params('legacy', 'submit', 'POST /number_request'),
  legacyStatus: params('legacy', 'status', 'GET /number_request'),
  stats: params('v1', 'stats', 'GET /v1/stats'),
};

// ----------------------------------------------------------------------------------------------- metrics

const accepted = new Counter('squall_requests_accepted');
const refused = new Counter('squall_requests_refused');
// Submission to "processed" as a client sees it (includes up to one poll interval of slack).
const endToEnd = new Trend('squall_e2e_duration', true);
const processedInTime = new Rate('squall_processed_in_time');
const drained = new Rate('squall_backlog_drained');
const drainDuration = new Trend('squall_drain_duration', true);

// --------------------------------------------------------------------------------------------- profiles

// Ramp up to the peak VUs in `rampUp`, hold them, ramp down to none in `rampDown`.
function rampHoldDown(rampUp, rampDown) {
  return (vus, hold) => [
    { duration: rampUp, target: vus },
    { duration: hold, target: vus },
    { duration: rampDown, target: 0 },
  ];
}

// A profile's thresholds: `failed` for http_req_failed, the HTTP p95 and p99 and the end-to-end p95 (ms),
// and `met`, the rate both the followed requests processed in time and the checks must reach.
function profileThresholds(failed, p95, p99, e2eP95, met) {
  return { failed, p95, p99, e2eP95, processed: met, checks: met };
}

// Peak VUs and the length of the steady part: SQUALL_VUS and SQUALL_DURATION override them.
// followShare: the share of requests a VU polls until processed (the others are submitted only);
// thinkSeconds: the pause between two iterations of a VU.
const AVERAGE = {
  vus: 20,
  hold: '5m',
  stages: rampHoldDown('1m', '30s'),
  followShare: 0.5,
  thinkSeconds: 0.5,
  thresholds: profileThresholds('rate<0.01', 500, 1500, 15000, 'rate>0.99'),
};

const PROFILES = {
  smoke: {
    vus: 2,
    hold: '30s',
    stages: () => null, // constant VUs for the whole hold
    followShare: 1,
    thinkSeconds: 0.1,
    thresholds: profileThresholds('rate==0', 500, 1000, 10000, 'rate==1'),
  },
  average: AVERAGE,
  stress: {
    vus: 80,
    hold: '5m',
    stages: (vus, hold) => [
      { duration: '2m', target: Math.ceil(vus / 2) },
      { duration: '2m', target: vus },
      { duration: hold, target: vus },
      { duration: '1m', target: 0 },
    ],
    followShare: 0.2,
    thinkSeconds: 0.2,
    thresholds: profileThresholds('rate<0.02', 2000, 5000, 30000, 'rate>0.98'),
  },
  spike: {
    vus: 200,
    hold: '1m',
    stages: (vus, hold) => [
      { duration: '10s', target: 2 },
      { duration: '10s', target: vus },
      { duration: hold, target: vus },
      { duration: '10s', target: 2 },
      { duration: '30s', target: 2 },
      { duration: '5s', target: 0 },
    ],
    followShare: 0.1,
    thinkSeconds: 0.2,
    thresholds: profileThresholds('rate<0.05', 3000, 8000, 60000, 'rate>0.95'),
  },
  // The average load held for 30 minutes, with 2-minute ramps.
  soak: { ...AVERAGE, hold: '30m', stages: rampHoldDown('2m', '2m') },
};

function profile(name) {
  const found = PROFILES[name];
  if (!found) {
    throw new Error(`unknown profile ${name}; known: ${Object.keys(PROFILES).join(', ')}`);
  }
  return found;
}

const UNIT_SECONDS = { ms: 0.001, s: 1, m: 60, h: 3600 };

function seconds(duration) {
  let total = 0;
  const rest = duration.replace(/(\d+(?:\.\d+)?)(ms|s|m|h)/g, (_, n, unit) => {
    total += Number(n) * UNIT_SECONDS[unit];
    return '';
  });
  if (rest !== '' || total <= 0) {
    throw new Error(`not a k6 duration: ${JSON.stringify(duration)} (e.g. 30s, 5m, 1h30m)`);
  }
  return total;
}

// k6 options of a profile: the clients' scenario, a one-VU scenario reading /v1/stats once a second (what a
// dashboard or `squall top` does), and the thresholds that make k6 exit non-zero (99) when crossed.
function profileOptions(name) {
  const p = profile(name);
  const vus = integerFromEnv('SQUALL_VUS', p.vus);
  const hold = env('SQUALL_DURATION', p.hold);
  const stages = p.stages(vus, hold);
  const clients = stages
    ? { executor: 'ramping-vus', startVUs: 0, stages, gracefulRampDown: '30s', exec: 'client' }
    : { executor: 'constant-vus', vus, duration: hold, exec: 'client' };
  const totalSeconds = stages ? stages.reduce((sum, s) => sum + seconds(s.duration), 0) : seconds(hold);
  const t = p.thresholds;
  const p95 = numberFromEnv('SQUALL_HTTP_P95_MS', t.p95);
  const p99 = numberFromEnv('SQUALL_HTTP_P99_MS', t.p99);
  const e2eP95 = numberFromEnv('SQUALL_E2E_P95_MS', t.e2eP95);
  return {
    scenarios: {
      clients,
      stats: {
        executor: 'constant-vus',
        vus: 1,
        duration: `${Math.max(1, Math.round(totalSeconds))}s`,
        gracefulStop: '5s',
        exec: 'watchStats',
      },
    },
    thresholds: {
      http_req_failed: [t.failed],
      http_req_duration: [`p(95)<${p95}`, `p(99)<${p99}`],
      'http_req_duration{endpoint:submit}': [`p(95)<${p95}`],
      'http_req_duration{api:legacy}': [`p(95)<${p95}`],
      checks: [t.checks],
      squall_requests_accepted: ['count>0'],
      squall_e2e_duration: [`p(95)<${e2eP95}`],
      squall_processed_in_time: [t.processed],
      squall_backlog_drained: ['rate==1'],
    },
    summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
    setupTimeout: '60s',
    teardownTimeout: `${Math.ceil(settings.drainTimeoutSeconds) + 60}s`,
  };
}

// ----------------------------------------------------------------------------------------------- the API

export function readStats() {
  const res = http.get(`${settings.baseUrl}/v1/stats`, P.stats);
  if (res.status !== 200) {
    return { res, stats: null };
  }
  try {
    return { res, stats: res.json() };
  } catch (e) {
    return { res, stats: null };
  }
}

function submitV1(rid, numbers, jobs) {
  const items = numbers.map((number, i) => ({ number, job: jobs[i] }));
  const res = http.post(`${settings.baseUrl}/v1/requests`, JSON.stringify({ rid, items }), P.v1Submit);
  const ok = check(res, {
    'POST /v1/requests is 202': (r) => r.status === 202,
    'POST /v1/requests answers the rid and a task_id': (r) =>
      r.status !== 202 || (r.json('rid') === rid && !!r.json('task_id')),
  });
  return ok ? res.json('task_id') : null;
}

// The original's POST answer is {"task_id": …} as JSON text encoded again as a JSON string: decoded twice.
function legacyTaskId(res) {
  try {
    return JSON.parse(res.json()).task_id || null;
  } catch (e) {
    return null;
  }
}

function submitLegacy(rid, numbers, jobs) {
  const body = JSON.stringify({ rid, numbers, jobtodo: jobs });
  const res = http.post(`${settings.baseUrl}/number_request`, body, P.legacySubmit);
  const ok = check(res, {
    'POST /number_request is 201': (r) => r.status === 201,
    'POST /number_request answers a task_id': (r) => r.status !== 201 || !!legacyTaskId(r),
  });
  return ok ? legacyTaskId(res) : null;
}

// The request's state as {processed, numbers, jobs, results}, or null when the answer is not a 200.
function statusV1(rid) {
  const res = http.get(`${settings.baseUrl}/v1/requests/${encodeURIComponent(rid)}`, P.v1Status);
  if (!check(res, { 'GET /v1/requests/{rid} is 200': (r) => r.status === 200 })) {
    return null;
  }
  const body = res.json();
  return {
    processed: body.processed,
    numbers: body.items.map((i) => i.number),
    jobs: body.items.map((i) => i.job),
    results: body.items.map((i) => i.result),
  };
}

// As the original clients do: a GET with a JSON body naming the task_id.
function statusLegacy(taskId) {
  const body = JSON.stringify({ task_id: taskId });
  const res = http.request('GET', `${settings.baseUrl}/number_request`, body, P.legacyStatus);
  if (!check(res, { 'GET /number_request is 201': (r) => r.status === 201 })) {
    return null;
  }
  const answer = res.json();
  return {
    processed: answer.processed,
    numbers: answer.numbers,
    jobs: answer.jobtodo,
    results: answer.results,
  };
}

// ------------------------------------------------------------------------------------------ the journey

// setup(): a health gate (the gateway answers /v1/stats with this token: right URL, token valid with the
// read scope) and a run id that keeps rids unique across runs and across k6 instances.
function start(profileName) {
  const p = profile(profileName);
  const { res, stats } = readStats();
  if (stats === null) {
    const hint =
      res.status === 401 || res.status === 403
        ? ' (set SQUALL_TOKEN to a token with the submit and read scopes)'
        : res.status === 0
          ? ` (${res.error}; is SQUALL_URL right?)`
          : '';
    throw new Error(`GET ${settings.baseUrl}/v1/stats answered ${res.status}${hint}`);
  }
  const random = Math.floor(Math.random() * 36 ** 6).toString(36);
  return {
    profile: profileName,
    runId: settings.runId || `k6-${Date.now().toString(36)}-${random}`,
    followShare: numberFromEnv('SQUALL_FOLLOW_SHARE', p.followShare),
    thinkSeconds: numberFromEnv('SQUALL_THINK_TIME', p.thinkSeconds),
    startStats: stats,
  };
}

// One iteration of a client VU: submit a request with a unique rid (v1, or every Nth time the original
// contract), then, for a share of them, poll its state until processed and check the results.
export function client(data) {
  const vu = exec.vu.idInTest;
  const iteration = exec.vu.iterationInScenario;
  const rid = `${data.runId}-${vu}-${iteration}`;
  const legacy = settings.legacyEvery > 0 && iteration % settings.legacyEvery === settings.legacyEvery - 1;
  const numbers = [];
  const jobs = [];
  for (let i = 0; i < settings.itemsPerRequest; i++) {
    numbers.push(vu * 1000 + iteration * settings.itemsPerRequest + i);
    jobs.push(settings.jobs[(iteration + i) % settings.jobs.length]);
  }
  const startedAt = Date.now();
  const taskId = legacy ? submitLegacy(rid, numbers, jobs) : submitV1(rid, numbers, jobs);
  if (taskId === null) {
    refused.add(1);
    sleep(data.thinkSeconds);
    return;
  }
  accepted.add(1);
  if (Math.random() < data.followShare) {
    follow(legacy ? () => statusLegacy(taskId) : () => statusV1(rid), startedAt, numbers, jobs, legacy);
  }
  sleep(data.thinkSeconds);
}

function follow(readState, startedAt, numbers, jobs, legacy) {
  const deadline = startedAt + settings.followTimeoutSeconds * 1000;
  const tags = { api: legacy ? 'legacy' : 'v1' };
  for (;;) {
    const state = readState();
    if (state !== null && state.processed) {
      endToEnd.add(Date.now() - startedAt, tags);
      processedInTime.add(true, tags);
      check(state, {
        'processed request holds its items': (s) =>
          JSON.stringify(s.numbers) === JSON.stringify(numbers) &&
          JSON.stringify(s.jobs) === JSON.stringify(jobs),
        'processed request has the right results': (s) =>
          s.results.every((result, i) => !(jobs[i] in EXPECTED) || result === EXPECTED[jobs[i]](numbers[i])),
      });
      return;
    }
    if (Date.now() + settings.pollIntervalSeconds * 1000 > deadline) {
      processedInTime.add(false, tags);
      return;
    }
    sleep(settings.pollIntervalSeconds);
  }
}

// The stats scenario: one read a second, its shape checked.
export function watchStats() {
  const { stats } = readStats();
  check(stats, {
    'GET /v1/stats has request totals': (s) =>
      s !== null && Number.isInteger(s.requests.accepted) && Number.isInteger(s.requests.processed),
  });
  sleep(1);
}

// teardown(): wait (up to SQUALL_DRAIN_TIMEOUT seconds; 0 skips the check) until /v1/stats shows no
// pending request, i.e. everything accepted was persisted and processed. Against a system that others
// keep loading, set SQUALL_DRAIN_TIMEOUT=0.
function drain() {
  if (settings.drainTimeoutSeconds <= 0) {
    return;
  }
  const started = Date.now();
  const deadline = started + settings.drainTimeoutSeconds * 1000;
  let last = null;
  for (;;) {
    const { stats } = readStats();
    if (stats !== null) {
      last = stats;
      if (stats.requests.pending === 0 && stats.requests.processed === stats.requests.accepted) {
        drained.add(true);
        drainDuration.add(Date.now() - started);
        return;
      }
    }
    if (Date.now() >= deadline) {
      drained.add(false);
      const totals = JSON.stringify(last && last.requests);
      console.error(`backlog not drained after ${settings.drainTimeoutSeconds} s: ${totals}`);
      return;
    }
    sleep(1);
  }
}

// ----------------------------------------------------------------------------------------------- summary

function formatValue(metric, value) {
  if (metric.contains === 'time') {
    return value >= 1000 ? `${(value / 1000).toFixed(2)}s` : `${value.toFixed(2)}ms`;
  }
  if (metric.type === 'rate') {
    return `${(value * 100).toFixed(2)}%`;
  }
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

const SHOWN = [
  'http_reqs',
  'http_req_failed',
  'http_req_duration',
  'http_req_duration{endpoint:submit}',
  'http_req_duration{api:legacy}',
  'checks',
  'squall_requests_accepted',
  'squall_requests_refused',
  'squall_e2e_duration',
  'squall_processed_in_time',
  'squall_backlog_drained',
  'squall_drain_duration',
  'iterations',
  'vus_max',
];

// A short text summary (thresholds first, then the metrics that matter here) for stdout.
export function textSummary(data, profileName) {
  const lines = [];
  const seconds = (data.state.testRunDurationMs / 1000).toFixed(1);
  lines.push(`squall k6 ${profileName} against ${settings.baseUrl}: ${seconds} s`);
  let crossed = 0;
  lines.push('thresholds:');
  for (const name of Object.keys(data.metrics).sort()) {
    for (const [expression, result] of Object.entries(data.metrics[name].thresholds || {})) {
      if (!result.ok) {
        crossed++;
      }
      lines.push(`  ${result.ok ? 'ok     ' : 'CROSSED'} ${name} ${expression}`);
    }
  }
  lines.push('metrics:');
  for (const name of SHOWN) {
    const metric = data.metrics[name];
    if (!metric) {
      continue;
    }
    const v = metric.values;
    let text;
    if (metric.type === 'trend') {
      text = ['med', 'p(95)', 'p(99)', 'max'].map((k) => `${k}=${formatValue(metric, v[k])}`).join(' ');
    } else if (metric.type === 'rate') {
      text = `${formatValue(metric, v.rate)} (${v.passes} of ${v.passes + v.fails})`;
    } else if (metric.type === 'counter') {
      text = `${v.count} (${v.rate.toFixed(1)}/s)`;
    } else {
      text = formatValue(metric, v.value !== undefined ? v.value : v.max);
    }
    lines.push(`  ${name.padEnd(36, '.')} ${text}`);
  }
  lines.push(crossed === 0 ? 'result: every threshold held' : `result: ${crossed} threshold(s) CROSSED`);
  return `${lines.join('\n')}\n`;
}

// handleSummary(): the text summary to stdout and the full summary as JSON to SQUALL_SUMMARY
// (default summary-<profile>.json in the working directory).
function summary(data, profileName) {
  const path = settings.summaryPath || `summary-${profileName}.json`;
  return { stdout: textSummary(data, profileName), [path]: JSON.stringify(data, null, 2) };
}

// Everything a profile's entry script exports besides `client` and `watchStats` (which it re-exports):
//   export const { options, setup, teardown, handleSummary } = profileScript('smoke');
export function profileScript(name) {
  return {
    options: profileOptions(name),
    setup: () => start(name),
    teardown: () => drain(),
    handleSummary: (data) => summary(data, name),
  };
}
