// Health, readiness and metrics over HTTP (ENGINE_HTTP_PORT): for a load balancer, an orchestrator's
// probes and a Prometheus scrape.
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

export interface Probe {
  /** Liveness: the process serves and reaches Redis. */
  healthy(): Promise<{ ok: boolean; detail: Record<string, unknown> }>;
  /** Readiness: healthy, the model is loaded and the worker takes jobs. */
  ready(): Promise<{ ok: boolean; detail: Record<string, unknown> }>;
}

export interface EngineHttp {
  port: number;
  close(): Promise<void>;
}

export async function startEngineHttp(port: number, probe: Probe, registry: Registry): Promise<EngineHttp> {
  const server = http.createServer(async (req, res) => {
    const send = (status: number, type: string, body: string) => {
      res.writeHead(status, { "content-type": type });
      res.end(body);
    };
    try {
      const url = new URL(req.url ?? "/", "http://engine");
      if (req.method !== "GET") return send(405, "text/plain", "GET only\n");
      if (url.pathname === "/healthz" || url.pathname === "/readyz") {
        const result = url.pathname === "/healthz" ? await probe.healthy() : await probe.ready();
        return send(result.ok ? 200 : 503, "application/json", `${JSON.stringify(result)}\n`);
      }
      if (url.pathname === "/metrics") return send(200, registry.contentType, await registry.metrics());
      send(404, "text/plain", "not found: try /healthz, /readyz or /metrics\n");
    } catch (error) {
      send(500, "text/plain", `${(error as Error).message}\n`);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, resolve);
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
