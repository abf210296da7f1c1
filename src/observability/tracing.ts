/**
 * W3C trace context through Ferry, on top of Deno's built-in OpenTelemetry (`OTEL_DENO=true`).
 *
 * With OTel on, Deno.serve opens a server span that continues the client's `traceparent`, and
 * fetch opens a client span and injects its own `traceparent`. Forwarding the client's header as
 * well would send two (an invalid, doubled header), so the incoming trace headers are dropped
 * and the runtime's are sent. Ferry's own HTTP/1.1 transport (src/h1/) gets no automatic
 * injection: it opens its own client span here and injects that.
 *
 * With OTel off (the default) there is no active span: `traceparent` and `tracestate` pass
 * through unchanged, like any other end-to-end header.
 */
import {
  context,
  propagation,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
/** The header list being sent upstream (src/upstream/headers.ts), as tracing edits it. */
interface HeaderList {
  set(name: string, value: string): void;
  delete(name: string): void;
}

const tracer = trace.getTracer("ferry");

/** The request's server span when tracing is on; undefined when it is off. */
export function activeSpan(): Span | undefined {
  return trace.getActiveSpan();
}

/** Route, cluster and endpoint on the server span, for finding a request's way in a trace. */
export function annotate(span: Span | undefined, key: string, value: string): void {
  span?.setAttribute(key, value);
}

/**
 * Removes the client's trace headers when the runtime will inject its own (tracing on), so the
 * upstream sees exactly one `traceparent`.
 */
export function dropIncomingTraceContext(headers: HeaderList, span: Span | undefined): void {
  if (span === undefined) return;
  headers.delete("traceparent");
  headers.delete("tracestate");
}

/**
 * For transports without automatic injection: opens a client span under the active span and
 * sets its `traceparent`. Returns a function ending the span with the attempt's status (0: no
 * response), or undefined when tracing is off.
 */
export function startClientSpan(
  headers: HeaderList,
  method: string,
  url: string,
  span: Span | undefined,
): ((status: number) => void) | undefined {
  if (span === undefined) return undefined;
  const client = tracer.startSpan(method, {
    kind: SpanKind.CLIENT,
    attributes: { "http.request.method": method, "url.full": url },
  });
  const sc = client.spanContext();
  headers.set("traceparent", `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags & 1}`);
  const state = sc.traceState?.serialize();
  if (state) headers.set("tracestate", state);
  return (status) => {
    if (status > 0) client.setAttribute("http.response.status_code", status);
    if (status === 0 || status >= 500) client.setStatus({ code: SpanStatusCode.ERROR });
    client.end();
  };
}

/** False once a span came back not recording: tracing is off for this process. */
let tracingOn = true;

/**
 * The server span Deno.serve opens by itself, for requests served by Ferry's own HTTP/1.1 server
 * (src/h1/server.ts): it continues the client's `traceparent`, is the active span while `run`
 * runs (so `activeSpan()` finds it), and ends with the status once the response is written.
 * undefined when tracing is off (checked once: the first span tells).
 */
export function serverSpan(
  method: string,
  headers: Headers,
): { run<T>(fn: () => T): T; end(status: number): void } | undefined {
  if (!tracingOn) return undefined;
  const traceparent = headers.get("traceparent");
  const carrier: Record<string, string> = {};
  if (traceparent !== null) {
    carrier.traceparent = traceparent;
    const state = headers.get("tracestate");
    if (state !== null) carrier.tracestate = state;
  }
  const parent = traceparent !== null
    ? propagation.extract(context.active(), carrier)
    : context.active();
  const span = tracer.startSpan(method, {
    kind: SpanKind.SERVER,
    attributes: { "http.request.method": method },
  }, parent);
  if (!span.isRecording()) {
    tracingOn = false;
    return undefined;
  }
  const active = trace.setSpan(parent, span);
  return {
    run: (fn) => context.with(active, fn),
    end: (status) => {
      if (status > 0) span.setAttribute("http.response.status_code", status);
      if (status === 0 || status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    },
  };
}
