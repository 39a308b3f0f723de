// The benchmark's load generator (Node, no dependencies): one run per invocation.
//
// Reads a JSON spec on stdin, prints one JSON result on stdout. Modes:
//
//   closed  `connections` loops, each sends the next request when the last one ended
//           (`random_key`: each with a new invalid key; `expect_status`: e.g. [401, 429]).
//   open    requests start on a fixed schedule (`rate` per second) whatever the answers
//           do; latency is measured from each request's *intended* start, so a stall
//           is charged to every request it delayed (no coordinated omission). With
//           `bodies`, request i sends bodies[i % n].
//   stream  `connections` loops of streaming requests: time to first content chunk,
//           total time, gaps between content chunks, and chunk fidelity (every piece
//           "c<i> " arrives once, in order, then [DONE]).
//   hold    opens `connections` streams at once and keeps them until they end; prints
//           ALL_OPEN on stderr when every one has had its first content chunk.
//   flood   `closed` good traffic plus requests with random invalid keys, sent so that
//           bad requests stay at `bad.ratio` times the good ones completed.
//
// Progress and markers go to stderr; stdout carries only the result.

import http from "node:http";
import crypto from "node:crypto";

const now = () => performance.now(); // ms, monotonic, sub-microsecond resolution

function readStdin() {
  return new Promise((resolve) => {
    const parts = [];
    process.stdin.on("data", (c) => parts.push(c));
    process.stdin.on("end", () => resolve(JSON.parse(Buffer.concat(parts).toString())));
  });
}

class Samples {
  constructor() {
    this.buf = new Float64Array(1024);
    this.n = 0;
  }
  push(v) {
    if (this.n === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.n++] = v;
  }
  summary() {
    if (this.n === 0) return { count: 0 };
    const s = this.buf.slice(0, this.n).sort();
    const at = (q) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
    let sum = 0;
    for (let i = 0; i < s.length; i++) sum += s[i];
    const r = (v) => Math.round(v * 1000) / 1000;
    return {
      count: s.length,
      mean: r(sum / s.length),
      min: r(s[0]),
      p50: r(at(0.5)),
      p90: r(at(0.9)),
      p99: r(at(0.99)),
      p999: r(at(0.999)),
      max: r(s[s.length - 1]),
    };
  }
}

class Statuses {
  constructor() {
    this.counts = {};
  }
  add(key) {
    this.counts[key] = (this.counts[key] || 0) + 1;
  }
}

function target(spec, agent) {
  const u = new URL(spec.url);
  return {
    host: u.hostname,
    port: Number(u.port || 80),
    path: u.pathname + u.search,
    method: "POST",
    agent,
    headers: { "content-type": "application/json", ...(spec.headers || {}) },
  };
}

// One request; `onDone(status, bodyText | null, error | null)`. The body is kept only
// when `keepBody` (non-streaming checks); streams hand each data chunk to `onData`.
function request(opts, payload, timeoutMs, onDone, onData = null, keepBody = true) {
  let finished = false;
  const done = (status, body, err) => {
    if (finished) return;
    finished = true;
    onDone(status, body, err);
  };
  const req = http.request(opts, (res) => {
    const parts = [];
    res.on("data", (c) => {
      if (onData) onData(c);
      else if (keepBody) parts.push(c);
    });
    res.on("end", () => done(res.statusCode, keepBody ? Buffer.concat(parts).toString() : "", null));
    res.on("error", (e) => done(res.statusCode, null, e));
    res.on("aborted", () => done(res.statusCode, null, new Error("aborted")));
  });
  req.setHeader("content-length", Buffer.byteLength(payload));
  req.on("error", (e) => done(0, null, e));
  req.setTimeout(timeoutMs, () => {
    req.destroy(new Error("timeout"));
  });
  req.end(payload);
  return req;
}

// `expect_status`: the statuses every answer should have (default: a 200 completion).
function okAnswer(spec, status, body) {
  if (spec.expect_status) return spec.expect_status.includes(status);
  return status === 200 && body !== null && body.includes('"chat.completion"') && body.includes('"choices"');
}

// A well-formed key nobody issued: what a key-guessing flood sends.
function withRandomKey(opts) {
  const key = "gw-" + crypto.randomBytes(36).toString("base64url");
  return { ...opts, headers: { ...opts.headers, authorization: "Bearer " + key } };
}

// -- closed loop ------------------------------------------------------------------------

function closedLoop(spec, { agent = null, onComplete = null, stopAt = null } = {}) {
  const conns = spec.connections;
  agent = agent || new http.Agent({ keepAlive: true, maxSockets: conns, maxFreeSockets: conns });
  const opts = target(spec, agent);
  const payload = spec.body;
  const timeoutMs = (spec.timeout_s || 30) * 1000;
  const start = now();
  const measureFrom = start + (spec.warmup_s || 0) * 1000;
  const end = stopAt || measureFrom + spec.duration_s * 1000;
  const lat = new Samples();
  const statuses = new Statuses();
  let completed = 0;
  let errors = 0;
  let all = 0; // every answer, warm-up included: what the processes' CPU time paid for
  let firstError = null;
  return new Promise((resolve) => {
    let live = conns;
    const loop = () => {
      const t0 = now();
      if (t0 >= end) {
        if (--live === 0) {
          agent.destroy();
          const secs = (end - measureFrom) / 1000;
          resolve({
            connections: conns,
            duration_s: secs,
            completed,
            errors,
            all_requests: all,
            first_error: firstError,
            statuses: statuses.counts,
            rps: Math.round((completed / secs) * 10) / 10,
            latency_ms: lat.summary(),
          });
        }
        return;
      }
      request(spec.random_key ? withRandomKey(opts) : opts, payload, timeoutMs, (status, body, err) => {
        const t1 = now();
        all++;
        if (t0 >= measureFrom && t1 <= end) {
          statuses.add(err ? "net:" + (err.code || err.message) : String(status));
          if (!err && okAnswer(spec, status, body)) {
            completed++;
            lat.push(t1 - t0);
          } else {
            errors++;
            if (!firstError) firstError = err ? String(err.message) : `${status} ${String(body).slice(0, 200)}`;
          }
        }
        if (onComplete && !err && status === 200) onComplete();
        // setImmediate: a failing target must not recurse synchronously.
        if (err) setTimeout(loop, 1);
        else loop();
      });
    };
    for (let i = 0; i < conns; i++) loop();
  });
}

// -- open loop --------------------------------------------------------------------------

function openLoop(spec) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024 });
  const opts = target(spec, agent);
  // `bodies`: request i sends bodies[i % n] (S6 spreads requests over many models).
  const payloads = spec.bodies || [spec.body];
  const timeoutMs = (spec.timeout_s || 30) * 1000;
  const intervalMs = 1000 / spec.rate;
  const warmN = Math.round((spec.warmup_s || 0) * spec.rate);
  const total = warmN + Math.round(spec.duration_s * spec.rate);
  const lat = new Samples(); // from the intended start: what a user waits
  const svc = new Samples(); // from the actual send: what the server took
  const lag = new Samples(); // how late the generator sent (its own health)
  const statuses = new Statuses();
  let sent = 0;
  let completed = 0;
  let errors = 0;
  let outstanding = 0;
  let maxOutstanding = 0;
  let firstError = null;
  const t0 = now() + 5;
  return new Promise((resolve) => {
    const finish = () => {
      agent.destroy();
      resolve({
        rate: spec.rate,
        duration_s: spec.duration_s,
        sent: sent - warmN,
        all_requests: sent,
        completed,
        errors,
        first_error: firstError,
        statuses: statuses.counts,
        max_outstanding: maxOutstanding,
        latency_ms: lat.summary(),
        service_ms: svc.summary(),
        send_lag_ms: lag.summary(),
      });
    };
    const fire = (i, intended) => {
      const actual = now();
      const measured = i >= warmN;
      if (measured) lag.push(actual - intended);
      outstanding++;
      if (outstanding > maxOutstanding) maxOutstanding = outstanding;
      request(opts, payloads[i % payloads.length], timeoutMs, (status, body, err) => {
        const t1 = now();
        outstanding--;
        if (measured) {
          statuses.add(err ? "net:" + (err.code || err.message) : String(status));
          if (!err && okAnswer(spec, status, body)) {
            completed++;
            lat.push(t1 - intended);
            svc.push(t1 - actual);
          } else {
            errors++;
            if (!firstError) firstError = err ? String(err.message) : `${status} ${String(body).slice(0, 200)}`;
          }
        }
        if (sent === total && outstanding === 0) finish();
      });
    };
    // Sleep with a timer until ~1.5 ms before the next due time, then spin on
    // setImmediate: timers alone are late by up to a millisecond.
    const tick = () => {
      let t = now();
      while (sent < total && t0 + sent * intervalMs <= t) {
        const i = sent++;
        fire(i, t0 + i * intervalMs);
        t = now();
      }
      if (sent >= total) return;
      const wait = t0 + sent * intervalMs - now();
      setTimeout(tick, Math.max(wait, 0));
    };
    tick();
  });
}

// -- streams ----------------------------------------------------------------------------

// Parses one SSE response as it arrives; records content chunk arrival times.
class StreamProbe {
  constructor(sentAt, expectChunks) {
    this.sentAt = sentAt;
    this.expect = expectChunks;
    this.pending = "";
    this.times = [];
    this.inOrder = true;
    this.done = false;
    this.errorEvent = null;
  }
  feed(buf) {
    const t = now();
    this.pending += buf.toString();
    let cut;
    while ((cut = this.pending.indexOf("\n\n")) >= 0) {
      const event = this.pending.slice(0, cut);
      this.pending = this.pending.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") {
        this.done = true;
        continue;
      }
      let obj;
      try {
        obj = JSON.parse(data);
      } catch {
        this.inOrder = false;
        continue;
      }
      if (obj.error) {
        this.errorEvent = JSON.stringify(obj.error).slice(0, 200);
        continue;
      }
      const content = obj.choices && obj.choices[0] && obj.choices[0].delta && obj.choices[0].delta.content;
      if (content) {
        if (content !== `c${this.times.length} `) this.inOrder = false;
        this.times.push(t);
      }
    }
  }
  get faithful() {
    return this.done && this.inOrder && !this.errorEvent && this.times.length === this.expect;
  }
}

function streamRun(spec, probes) {
  // Either a closed loop of `connections` streams for `duration_s` (stream mode),
  // or exactly `connections` streams opened at once (hold mode).
  const conns = spec.connections;
  const hold = spec.mode === "hold";
  const agent = new http.Agent({ keepAlive: true, maxSockets: conns, maxFreeSockets: conns });
  const opts = target(spec, agent);
  const payload = spec.body;
  const timeoutMs = (spec.timeout_s || 60) * 1000;
  const expect = spec.expect_chunks;
  const start = now();
  const measureFrom = start + (spec.warmup_s || 0) * 1000;
  const end = hold ? Infinity : measureFrom + spec.duration_s * 1000;
  const ttft = new Samples();
  const total = new Samples();
  const gaps = new Samples();
  const statuses = new Statuses();
  let streams = 0;
  let faithful = 0;
  let unfaithful = 0;
  let errors = 0;
  let firstError = null;
  let open = 0;
  let maxOpen = 0;
  let all = 0;
  let firstContent = 0;
  return new Promise((resolve) => {
    let live = conns;
    const report = () => {
      agent.destroy();
      resolve({
        connections: conns,
        duration_s: hold ? (now() - start) / 1000 : spec.duration_s,
        streams,
        all_requests: all,
        faithful,
        unfaithful,
        errors,
        first_error: firstError,
        statuses: statuses.counts,
        max_open: maxOpen,
        fidelity: streams ? faithful / streams : 0,
        ttft_ms: ttft.summary(),
        total_ms: total.summary(),
        gap_ms: gaps.summary(),
      });
    };
    const loop = () => {
      const t0 = now();
      if (t0 >= end || (hold && streams >= conns)) {
        if (--live === 0) report();
        return;
      }
      const probe = new StreamProbe(t0, expect);
      let firstSeen = false;
      if (hold) streams++;
      open++;
      if (open > maxOpen) maxOpen = open;
      request(
        opts,
        payload,
        timeoutMs,
        (status, _body, err) => {
          const t1 = now();
          open--;
          all++;
          const measured = hold || (t0 >= measureFrom && t1 <= end);
          if (measured) {
            if (!hold) streams++;
            statuses.add(err ? "net:" + (err.code || err.message) : String(status));
            if (!err && status === 200 && probe.faithful) {
              faithful++;
              ttft.push(probe.times[0] - t0);
              total.push(t1 - t0);
              for (let i = 1; i < probe.times.length; i++) gaps.push(probe.times[i] - probe.times[i - 1]);
            } else {
              if (!err && status === 200) unfaithful++;
              else errors++;
              if (!firstError) {
                firstError = err
                  ? String(err.message)
                  : `${status} done=${probe.done} in_order=${probe.inOrder} chunks=${probe.times.length} ${probe.errorEvent || probe.pending.slice(0, 200)}`;
              }
            }
          }
          if (err) setTimeout(loop, 1);
          else loop();
        },
        (buf) => {
          probe.feed(buf);
          if (!firstSeen && probe.times.length > 0) {
            firstSeen = true;
            if (hold && ++firstContent === conns) process.stderr.write("ALL_OPEN\n");
          }
        },
        false,
      );
    };
    for (let i = 0; i < conns; i++) loop();
  });
}

// -- flood ------------------------------------------------------------------------------

async function flood(spec) {
  const bad = spec.bad;
  const badAgent = new http.Agent({ keepAlive: true, maxSockets: bad.max_inflight, maxFreeSockets: bad.max_inflight });
  const badOpts = target({ ...spec, headers: {} }, badAgent);
  const timeoutMs = (spec.timeout_s || 30) * 1000;
  const badStatuses = new Statuses();
  const badLat = new Samples();
  let owed = 0; // bad requests due but not yet sent
  let badSent = 0;
  let badDone = 0;
  let inflight = 0;
  let badAll = 0;
  let skipped = 0; // due while `max_inflight` were already out: the flood could not keep up
  const start = now();
  const measureFrom = start + (spec.warmup_s || 0) * 1000;
  const end = measureFrom + spec.duration_s * 1000;
  let measuring = false;
  let goodDoneInWindow = 0;
  const sendBad = () => {
    while (owed >= 1) {
      owed--;
      if (inflight >= bad.max_inflight) {
        if (measuring) skipped++;
        continue;
      }
      inflight++;
      const t0 = now();
      const counted = measuring;
      if (counted) badSent++;
      request(withRandomKey(badOpts), spec.body, timeoutMs, (status, _b, err) => {
        inflight--;
        badAll++;
        const t1 = now();
        if (counted && t1 <= end) {
          badDone++;
          badStatuses.add(err ? "net:" + (err.code || err.message) : String(status));
          badLat.push(t1 - t0);
        }
      });
    }
  };
  const good = closedLoop(spec, {
    stopAt: end,
    onComplete: () => {
      measuring = now() >= measureFrom;
      if (measuring && now() <= end) goodDoneInWindow++;
      owed += bad.ratio;
      sendBad();
    },
  });
  const goodResult = await good;
  const secs = (end - measureFrom) / 1000;
  badAgent.destroy();
  return {
    all_requests: goodResult.all_requests + badAll,
    good: goodResult,
    bad: {
      ratio_target: bad.ratio,
      sent: badSent,
      completed: badDone,
      skipped_at_inflight_cap: skipped,
      rps: Math.round((badDone / secs) * 10) / 10,
      statuses: badStatuses.counts,
      latency_ms: badLat.summary(),
    },
    ratio_achieved: goodResult.completed ? Math.round((badDone / goodResult.completed) * 100) / 100 : 0,
  };
}

const spec = await readStdin();
let result;
if (spec.mode === "closed") result = await closedLoop(spec);
else if (spec.mode === "open") result = await openLoop(spec);
else if (spec.mode === "stream" || spec.mode === "hold") result = await streamRun(spec);
else if (spec.mode === "flood") result = await flood(spec);
else throw new Error(`unknown mode ${spec.mode}`);
result.mode = spec.mode;
result.loadgen_cpu_ms = Math.round((process.cpuUsage().user + process.cpuUsage().system) / 1000);
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
