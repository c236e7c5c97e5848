// The application agent of one agent VPC: the OpenTelemetry JavaScript SDK
// sending spans to traces.observability.internal and log records to
// logs.observability.internal over OTLP/HTTP (JSON encoding), the names
// resolving through the region's private hosted zone to its VPC endpoint.
//
// Every span and log record carries a sequence number (attribute "seq"), so
// the receiver can tell what is missing and what arrived twice. The exporters
// retry on their own (5 tries, honouring Retry-After); on top of that this
// agent keeps a batch that still failed and sends it again, up to
// AGENT_RETRIES times, the way a collector's sending queue does. A batch that
// fails after that is an unretried error and is counted as lost.
//
// It also serves its own counters as Prometheus text on 127.0.0.1:9464, the
// target the region's Prometheus agent scrapes. On SIGTERM it stops producing,
// flushes, writes its final counters to STATS_FILE and exits.
//
//   REGION=us-east-1 RATE=10 STATS_FILE=/tmp/agent.json node agent.js

"use strict";
const http = require("http");
const fs = require("fs");
const { BasicTracerProvider, BatchSpanProcessor } = require("@opentelemetry/sdk-trace-base");
const { OTLPTraceExporter } = require("@opentelemetry/exporter-trace-otlp-http");
const { LoggerProvider, BatchLogRecordProcessor } = require("@opentelemetry/sdk-logs");
const { OTLPLogExporter } = require("@opentelemetry/exporter-logs-otlp-http");
const { resourceFromAttributes } = require("@opentelemetry/resources");
const { ExportResultCode } = require("@opentelemetry/core");

const region = process.env.REGION || "eu-west-1";
const rate = Number(process.env.RATE || 10); // spans and log records per second, each
const retries = Number(process.env.AGENT_RETRIES || 5);
const statsFile = process.env.STATS_FILE || "";
const metricsPort = Number(process.env.METRICS_PORT || 9464);

const stats = {
  region,
  spans: { created: 0, exported: 0, lost: 0, failed_attempts: 0, batches: 0 },
  logs: { created: 0, exported: 0, lost: 0, failed_attempts: 0, batches: 0 },
  errors: [],
};

// Wraps an OTLP exporter: a batch whose export failed (after the exporter's
// own retries) is sent again after a pause, so a shed or a cut connection
// costs time, not data.
class KeepingExporter {
  constructor(inner, counters) {
    this.inner = inner;
    this.counters = counters;
    this.pending = new Set();
  }
  exportOnce(items) {
    return new Promise((resolve) => this.inner.export(items, resolve));
  }
  async send(items) {
    for (let attempt = 0; ; attempt++) {
      const result = await this.exportOnce(items);
      if (result.code === ExportResultCode.SUCCESS) {
        this.counters.exported += items.length;
        return result;
      }
      this.counters.failed_attempts++;
      const why = String(result.error && result.error.message || result.error);
      if (attempt >= retries) {
        this.counters.lost += items.length;
        stats.errors.push(`${new Date().toISOString()} ${items.length} items lost: ${why}`);
        return result;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  export(items, done) {
    this.counters.batches++;
    const p = this.send(items).then(done);
    this.pending.add(p);
    p.finally(() => this.pending.delete(p));
  }
  async forceFlush() {
    await Promise.all([...this.pending]);
  }
  async shutdown() {
    await this.forceFlush();
    await this.inner.shutdown();
  }
}

const resource = resourceFromAttributes({
  "service.name": `agent-${region}`,
  "agent.region": region,
});
const exporterOptions = { timeoutMillis: 30000 };
const spanExporter = new KeepingExporter(
  new OTLPTraceExporter({ url: "http://traces.observability.internal/v1/traces", ...exporterOptions }),
  stats.spans);
const logExporter = new KeepingExporter(
  new OTLPLogExporter({ url: "http://logs.observability.internal/v1/logs", ...exporterOptions }),
  stats.logs);
const batchOptions = { scheduledDelayMillis: 500, maxExportBatchSize: 64, maxQueueSize: 100000,
                       exportTimeoutMillis: 600000 };
const tracerProvider = new BasicTracerProvider({
  resource,
  spanProcessors: [new BatchSpanProcessor(spanExporter, batchOptions)],
});
const loggerProvider = new LoggerProvider({
  resource,
  // This release of sdk-logs takes its exporter inside the options.
  processors: [new BatchLogRecordProcessor({ exporter: logExporter, ...batchOptions })],
});
const tracer = tracerProvider.getTracer("ferry-topology-agent");
const logger = loggerProvider.getLogger("ferry-topology-agent");

let seq = 0;
const tick = setInterval(() => {
  const n = Math.max(1, Math.round(rate / 10));
  for (let i = 0; i < n; i++) {
    const span = tracer.startSpan("push", { attributes: { seq, "agent.region": region } });
    span.end();
    stats.spans.created++;
    logger.emit({ severityText: "INFO", body: `record ${seq} from ${region}`, attributes: { seq } });
    stats.logs.created++;
    seq++;
  }
}, 100);

function metricsText() {
  const lines = [];
  for (const kind of ["spans", "logs"]) {
    for (const [k, v] of Object.entries(stats[kind])) {
      lines.push(`# TYPE agent_${kind}_${k}_total counter`, `agent_${kind}_${k}_total ${v}`);
    }
  }
  return lines.join("\n") + "\n";
}

const server = http.createServer((req, res) => {
  if (req.url === "/metrics") {
    res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4" });
    res.end(metricsText());
  } else if (req.url === "/stats") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify(stats));
  } else {
    res.writeHead(404);
    res.end();
  }
});
server.listen(metricsPort, "127.0.0.1");

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  clearInterval(tick);
  for (const step of [() => tracerProvider.forceFlush(), () => loggerProvider.forceFlush(),
                      () => tracerProvider.shutdown(), () => loggerProvider.shutdown()]) {
    try {
      await step();
    } catch (e) {
      stats.errors.push(`${new Date().toISOString()} at shutdown: ${JSON.stringify(e)}`);
    }
  }
  if (statsFile) fs.writeFileSync(statsFile, JSON.stringify(stats, null, 1));
  server.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
