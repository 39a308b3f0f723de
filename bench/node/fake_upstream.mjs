// A fast fake OpenAI-compatible upstream for the benchmark (Node, no dependencies).
//
// The project's Python fake (services/fake_provider) costs ~55 us of CPU per request,
// which would dominate the direct runs; this one speaks the same subset of the wire
// format at a few microseconds per request:
//
//   POST <any prefix>/chat/completions   JSON, or SSE when "stream": true
//   POST /fail/.../chat/completions      always 500 with OpenAI's error body (failover)
//   POST /failN/.../chat/completions     500 N times, then one answer, cyclically
//   GET  /health                         {"status":"ok"}
//   GET  /_stats                         requests served, by path prefix
//   POST /_stats/reset                   zero the counters
//   a `Bearer gw-...` key                401, like the gateway refusing an unknown key
//
// What a request does is read from `[[fake:ttft_ms=50,chunks=20,chunk_delay_ms=5]]`
// in its last user message (the same directive syntax as the Python fake), over the
// defaults given on the command line. Content piece i is "c<i> ", so a client can
// check every chunk arrived, once, in order.
//
// Usage: node fake_upstream.mjs --port 8080 [--host 127.0.0.1] [--chunks 8]

import http from "node:http";
import crypto from "node:crypto";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const PORT = Number(args.port || 8080);
const HOST = args.host || "127.0.0.1";
const DEFAULTS = {
  ttft_ms: Number(args.ttft_ms || 0),
  chunks: Number(args.chunks || 8),
  chunk_delay_ms: Number(args.chunk_delay_ms || 0),
  status: 200,
};
const DIRECTIVE = /\[\[fake:([^\]]*)\]\]/g;
const FAIL_PREFIX = /^\/fail(\d*)\//;
const failCounts = {};
const stats = { requests: 0, ok: 0, failed: 0, unauthorized: 0, streams: 0, by_prefix: {} };

function plan(body) {
  const step = { ...DEFAULTS };
  const messages = Array.isArray(body.messages) ? body.messages : [];
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (!m || m.role !== "user") continue;
    const text = typeof m.content === "string" ? m.content : "";
    // Directives sit at the start of the message: no scan of a 100k-token prompt.
    const head = text.length > 200 ? text.slice(0, 200) : text;
    if (head.includes("[[fake:")) {
      for (const match of head.matchAll(DIRECTIVE)) {
        for (const item of match[1].split(",")) {
          const [name, value] = item.split("=").map((s) => s.trim());
          if (name in step) step[name] = Number(value);
        }
      }
    }
    break;
  }
  return step;
}

function promptTokens(body) {
  // The gateway's own estimate: ~4 characters a token plus 4 per message.
  let tokens = 0;
  for (const m of body.messages || []) {
    const text = typeof m.content === "string" ? m.content : "";
    tokens += 4 + Math.ceil(text.length / 4);
  }
  return tokens;
}

function pieces(count) {
  const out = new Array(count);
  for (let i = 0; i < count; i++) out[i] = `c${i} `;
  return out;
}

function errorBody(status) {
  return JSON.stringify({
    error: {
      message: "The server had an error while processing your request. Sorry about that!",
      type: "server_error",
      param: null,
      code: null,
    },
  });
}

function send(res, status, text) {
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

function chunk(id, created, model, delta, finish) {
  return (
    "data: " +
    JSON.stringify({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      system_fingerprint: "fp_bench",
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    }) +
    "\n\n"
  );
}

function answer(res, body, step) {
  const parts = pieces(step.chunks);
  const id = "chatcmpl-" + crypto.randomBytes(8).toString("hex");
  const created = Math.floor(Date.now() / 1000);
  const model = body.model || "fake";
  const prompt = promptTokens(body);
  const usage = {
    prompt_tokens: prompt,
    completion_tokens: parts.length,
    total_tokens: prompt + parts.length,
  };
  if (!body.stream) {
    const text = JSON.stringify({
      id,
      object: "chat.completion",
      created,
      model,
      system_fingerprint: "fp_bench",
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: parts.join(""), refusal: null },
          logprobs: null,
          finish_reason: "stop",
        },
      ],
      usage,
    });
    const delay = step.ttft_ms + step.chunk_delay_ms * Math.max(parts.length - 1, 0);
    if (delay > 0) setTimeout(() => send(res, 200, text), delay);
    else send(res, 200, text);
    return;
  }
  stats.streams++;
  const includeUsage = !!(body.stream_options && body.stream_options.include_usage);
  res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" });
  let i = 0;
  const tail = () => {
    let out = chunk(id, created, model, {}, "stop");
    if (includeUsage) {
      out += "data: " + JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices: [], usage }) + "\n\n";
    }
    res.end(out + "data: [DONE]\n\n");
  };
  const next = () => {
    if (res.destroyed) return;
    let out = i === 0 ? chunk(id, created, model, { role: "assistant", content: "" }, null) : "";
    // Undelayed pieces go out in one write, as a fast upstream would batch them.
    do {
      out += chunk(id, created, model, { content: parts[i] }, null);
      i++;
    } while (i < parts.length && step.chunk_delay_ms <= 0);
    if (i >= parts.length) {
      res.write(out);
      tail();
    } else {
      res.write(out);
      setTimeout(next, step.chunk_delay_ms);
    }
  };
  if (parts.length === 0) return tail();
  if (step.ttft_ms > 0) setTimeout(next, step.ttft_ms);
  else next();
}

function prefixOf(url) {
  const cut = url.indexOf("/", 1);
  return cut > 0 ? url.slice(0, cut) : url;
}

const server = http.createServer((req, res) => {
  if (req.method === "GET") {
    if (req.url === "/health") return send(res, 200, '{"status":"ok"}');
    if (req.url === "/_stats") return send(res, 200, JSON.stringify(stats));
    return send(res, 404, errorBody(404));
  }
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => {
    stats.requests++;
    const prefix = prefixOf(req.url);
    stats.by_prefix[prefix] = (stats.by_prefix[prefix] || 0) + 1;
    if (req.url === "/_stats/reset") {
      for (const k of Object.keys(stats.by_prefix)) delete stats.by_prefix[k];
      stats.requests = stats.ok = stats.failed = stats.streams = stats.unauthorized = 0;
      return send(res, 200, "{}");
    }
    if (!req.url.endsWith("/chat/completions")) return send(res, 404, errorBody(404));
    const auth = req.headers.authorization || "";
    // Gateway-style keys (gw-...) are what the bad-key flood sends: refuse them as the
    // gateway would, so the direct run of S7 has the same shape.
    if (!auth.startsWith("Bearer ") || auth.startsWith("Bearer gw-")) {
      stats.unauthorized = (stats.unauthorized || 0) + 1;
      return send(res, 401, errorBody(401));
    }
    const failing = FAIL_PREFIX.exec(req.url);
    if (failing) {
      // /fail/ always fails; /failN/ fails N times, then answers once, and so on, so that
      // a circuit breaker tripping at more than N consecutive failures never opens.
      const every = failing[1] ? Number(failing[1]) : Infinity;
      const count = (failCounts[prefix] = (failCounts[prefix] || 0) + 1);
      if (count % (every + 1) !== 0) {
        stats.failed++;
        return send(res, 500, errorBody(500));
      }
    }
    let body;
    try {
      body = JSON.parse(parts.length === 1 ? parts[0] : Buffer.concat(parts));
    } catch {
      return send(res, 400, errorBody(400));
    }
    const step = plan(body);
    if (step.status !== 200) {
      stats.failed++;
      return send(res, step.status, errorBody(step.status));
    }
    stats.ok++;
    answer(res, body, step);
  });
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 130_000;
server.requestTimeout = 0;
server.maxHeadersCount = 200;
server.listen({ port: PORT, host: HOST, backlog: 4096 }, () => {
  process.stdout.write(`fake_upstream listening on http://${HOST}:${PORT}\n`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
