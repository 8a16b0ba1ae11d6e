// An OpenTelemetry JS SDK client, as a Node.js service would configure it: one trace of four spans
// (typed attributes, an event, a link, an error status), a counter, a histogram and a log record
// correlated with the trace, sent over OTLP with the protocol asked for, then the providers shut down.
// Prints {"trace_id", "spans": [...]} on stdout so a test can compare what arrived.
import { diag, DiagConsoleLogger, DiagLogLevel, SpanKind, SpanStatusCode, context, trace } from "@opentelemetry/api";
import { SeverityNumber } from "@opentelemetry/api-logs";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";
import { MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { LoggerProvider, BatchLogRecordProcessor } from "@opentelemetry/sdk-logs";
import { OTLPTraceExporter as HttpJsonTraces } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as HttpProtoTraces } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPTraceExporter as GrpcTraces } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http";
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-http";

diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);  // export failures go to stderr

const protocol = process.env.CLIENT_PROTOCOL ?? "http/json";
const httpBase = process.env.CLIENT_HTTP_ENDPOINT;  // http://127.0.0.1:PORT
const grpcEndpoint = process.env.CLIENT_GRPC_ENDPOINT;  // http://127.0.0.1:PORT
const service = process.env.CLIENT_SERVICE ?? "js-client";
const headers = process.env.CLIENT_BEARER ? { Authorization: `Bearer ${process.env.CLIENT_BEARER}` } : {};

const traceExporter = {
  "http/json": () => new HttpJsonTraces({ url: `${httpBase}/v1/traces`, headers }),
  "http/protobuf": () => new HttpProtoTraces({ url: `${httpBase}/v1/traces`, headers }),
  grpc: () => new GrpcTraces({ url: grpcEndpoint }),
}[protocol]();
const resource = resourceFromAttributes({ "service.name": service, "deployment.environment.name": "interop" });

const tracerProvider = new TracerProvider({ resource, spanProcessors: [new BatchSpanProcessor({ exporter: traceExporter })] });
const meterProvider = new MeterProvider({
  resource,
  readers: [new PeriodicExportingMetricReader({
    exporter: new OTLPMetricExporter({ url: `${httpBase}/v1/metrics`, headers }),
    exportIntervalMillis: 60000,
  })],
});
const loggerProvider = new LoggerProvider({
  resource,
  processors: [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter({ url: `${httpBase}/v1/logs`, headers }) })],
});

const tracer = tracerProvider.getTracer("interop-client", "1.0.0");
const meter = meterProvider.getMeter("interop-client");
const logger = loggerProvider.getLogger("interop-client");
const requests = meter.createCounter("interop.requests", { unit: "{request}" });
const duration = meter.createHistogram("interop.duration", { unit: "ms" });

const spans = [];
const keep = (span, name) => { const c = span.spanContext(); spans.push({ name, span_id: c.spanId }); return span; };

const root = keep(tracer.startSpan("GET /checkout", { kind: SpanKind.SERVER, attributes: {
  "http.request.method": "GET", "http.route": "/checkout", "http.response.status_code": 200,
  "interop.ratio": 0.25, "interop.flag": true, "interop.tags": ["a", "b"], "interop.counts": [1, 2, 3],
} }), "GET /checkout");
// No context manager is registered (a service would add @opentelemetry/context-async-hooks): the
// parent is passed explicitly.
const rootContext = trace.setSpan(context.active(), root);
{
  const child = keep(tracer.startSpan("SELECT orders", { kind: SpanKind.CLIENT, attributes: { "db.system.name": "postgresql" } }, rootContext), "SELECT orders");
  child.addEvent("rows fetched", { "rows": 7 });
  child.end();
  const failing = keep(tracer.startSpan("POST payments", { kind: SpanKind.CLIENT, links: [{ context: child.spanContext() }] }, rootContext), "POST payments");
  failing.setStatus({ code: SpanStatusCode.ERROR, message: "card declined" });
  failing.end();
  const internal = keep(tracer.startSpan("render", {}, rootContext), "render");
  internal.end();
  requests.add(5, { "http.route": "/checkout" });
  for (const ms of [12, 30, 55]) duration.record(ms, { "http.route": "/checkout" });
  logger.emit({ severityNumber: SeverityNumber.ERROR, severityText: "ERROR", body: "payment failed: card declined",
    attributes: { "order.id": 42 }, context: rootContext });
}
root.end();

await tracerProvider.forceFlush();
await meterProvider.forceFlush();
await loggerProvider.forceFlush();
await Promise.all([tracerProvider.shutdown(), meterProvider.shutdown(), loggerProvider.shutdown()]);
process.stdout.write(JSON.stringify({ trace_id: root.spanContext().traceId, spans }) + "\n");
