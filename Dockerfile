# Ferry on the official Deno image. Not built in our CI (no Docker engine there); kept minimal.
FROM denoland/deno:2.9.6
WORKDIR /app
COPY deno.json deno.lock ./
COPY main.ts ./
COPY src ./src
COPY config ./config
# The worker and config-validator isolates are started by URL: their imports are cached too.
RUN deno cache --frozen main.ts src/workers/worker.ts src/config/validator_worker.ts
USER deno
EXPOSE 8080 9901
# Liveness on the admin listener's /healthz (open without the token). The image has no curl:
# deno's own fetch does it, with a deadline so a hung Ferry fails the check instead of stalling it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["deno", "eval", "const r = await fetch('http://127.0.0.1:9901/healthz', { signal: AbortSignal.timeout(4000) }); Deno.exit(r.ok ? 0 : 1);"]
# The admin listener needs a token: docker run -e FERRY_ADMIN_TOKEN=$(openssl rand -hex 16) ...
# A 4 MiB young generation and an old generation that may double before a full GC: 80-100 MiB
# less peak memory under load, no more CPU per request (docs/PERFORMANCE.md, "Memory: where it
# goes and what was cut"); the collector on each isolate's own thread, so V8's helper threads do
# not compete with the serving threads (same file, "V8's collector on the isolate's own thread");
# no allocation-site pretenuring, so a request's objects are not moved straight into the old
# generation (same file, "Pretenuring off").
ENTRYPOINT ["deno", "run", "--allow-net", "--allow-read", "--allow-env", "--allow-ffi", "--unstable-no-legacy-abort", "--unstable-net", "--v8-flags=--max-semi-space-size=4,--heap-growing-percent=100,--single-threaded-gc,--no-allocation-site-pretenuring", "main.ts"]
CMD ["--config", "config/container.yaml"]
