/** The admin listener: liveness and readiness for now; metrics and inspection plug in here. */

export interface AdminView {
  /** "ready" while serving, "draining" once shutdown has begun. */
  state(): "ready" | "draining";
  configVersion(): number;
}

export function adminHandler(view: AdminView): (req: Request) => Response {
  const json = (status: number, body: unknown) =>
    new Response(JSON.stringify(body) + "\n", {
      status,
      headers: { "content-type": "application/json", "cache-control": "no-store" },
    });
  return function admin(req: Request): Response {
    const path = new URL(req.url).pathname;
    if (req.method !== "GET" && req.method !== "HEAD") {
      return json(405, { error: "method not allowed" });
    }
    switch (path) {
      case "/healthz":
        return json(200, { status: "live" });
      case "/ready": {
        const state = view.state();
        return json(state === "ready" ? 200 : 503, {
          status: state,
          config_version: view.configVersion(),
        });
      }
      default:
        return json(404, { error: "not found", endpoints: ["/healthz", "/ready"] });
    }
  };
}
