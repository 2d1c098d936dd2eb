// A private redis-server for a test file: free loopback port, append-only file in a temp folder,
// restartable on the same port and data (the foundation's supervisor does the process handling).
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Redis } from "ioredis";
import { type EmbeddedRedis, startEmbeddedRedis } from "../../src/queue/redis-server.js";

export interface TestRedis {
  readonly url: string;
  /** A fresh client (closed by stop()). */
  client(): Redis;
  /** Stops redis-server cleanly (it writes its append-only file) and starts it again on the same port and data. */
  restart(options?: { downMs?: number }): Promise<void>;
  stop(): Promise<void>;
}

export async function startTestRedis(): Promise<TestRedis> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "queue-test-redis-"));
  let server: EmbeddedRedis = await startEmbeddedRedis({ dir });
  const port = server.port;
  const clients: Redis[] = [];
  return {
    url: server.url,
    client() {
      const c = new Redis(server.url, { maxRetriesPerRequest: null });
      c.on("error", () => {}); // reconnects on its own (tests restart the server); commands wait meanwhile
      clients.push(c);
      return c;
    },
    async restart(options = {}) {
      await server.stop();
      if (options.downMs) await new Promise((r) => setTimeout(r, options.downMs));
      server = await startEmbeddedRedis({ dir, port });
    },
    async stop() {
      for (const c of clients) c.disconnect();
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
