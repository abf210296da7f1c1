/**
 * `deno task demo`: three demo upstreams and Ferry in front of them, then curl lines to try.
 * Each upstream answers with its own name, the path it saw and the headers Ferry added.
 */
const UPSTREAMS = [
  { name: "alpha", port: 9101 },
  { name: "bravo", port: 9102 },
  { name: "charlie", port: 9103 },
];

const servers = UPSTREAMS.map(({ name, port }) =>
  Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    return Response.json({
      upstream: name,
      method: req.method,
      path: url.pathname + url.search,
      host: req.headers.get("host"),
      x_forwarded_for: req.headers.get("x-forwarded-for"),
      x_request_id: req.headers.get("x-request-id"),
    });
  })
);

const proxy = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-net",
    "--allow-read",
    "--allow-env",
    "--unstable-no-legacy-abort",
    "main.ts",
    "--config",
    "config/demo.yaml",
  ],
  stdout: "inherit",
  stderr: "inherit",
}).spawn();

console.log(`
Ferry demo: upstreams alpha :9101, bravo :9102, charlie :9103; Ferry on http://127.0.0.1:8080

Round robin over three upstreams (run it a few times):
  for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/users/42; echo; done
Weighted (bravo gets 3 of every 4):
  for i in 1 2 3 4 5 6 7 8; do curl -s http://127.0.0.1:8080/orders/7 | grep -o '"upstream":"[a-z]*"'; done
Header routing and prefix rewrite (canary sees /v2/orders/7):
  curl -s -H 'x-canary: 1' http://127.0.0.1:8080/orders/7
Redirect and direct response:
  curl -si http://127.0.0.1:8080/docs/old/intro | head -3
  curl -si http://127.0.0.1:8080/teapot
No route (404 with a reason and request id), dot segments normalised before routing:
  curl -si --path-as-is http://127.0.0.1:8080/users/../admin
Admin: curl -s http://127.0.0.1:9901/ready

Ctrl-C stops everything.
`);

const stop = async () => {
  try {
    proxy.kill("SIGTERM");
  } catch { /* already gone */ }
  await proxy.status;
  await Promise.all(servers.map((s) => s.shutdown()));
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
await proxy.status;
await Promise.all(servers.map((s) => s.shutdown()));
