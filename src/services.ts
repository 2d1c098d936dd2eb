import net from "node:net";
import type { Config } from "./config.js";
import { redactUrl } from "./config.js";
import { UserFacingError } from "./errors.js";
import { childLogger, type Logger } from "./log.js";
import { resolveRedis } from "./queue/redis-server.js";

/** What a service gets when it starts: the validated config and the Redis every part shares. */
export interface ServiceContext {
  config: Config;
  redisUrl: string;
  log: Logger;
  /** Aborted on SIGINT/SIGTERM: a start still in progress (a model download) gives up at once. */
  signal?: AbortSignal;
}

export interface RunningService {
  /** Finishes or hands back in-flight work and releases everything the service holds. */
  stop(): Promise<void>;
  /**
   * Settles when the service has stopped working for good and cannot recover by itself (a Discord
   * shard closed with 4011, an engine process that died): everything stops and the process exits
   * non-zero, so that its supervisor starts it again.
   */
  failed?: Promise<Error>;
}

/** A long-running part of the system (engine worker, Discord bot, Slack bot) that `start` runs. */
export interface Service {
  name: string;
  start(context: ServiceContext): Promise<RunningService>;
}

async function assertPortFree(port: number, setting: string): Promise<void> {
  const server = net.createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, resolve);
    });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why = code === "EADDRINUSE" ? "is already in use" : `cannot be opened (${code})`;
    throw new UserFacingError(
      `${setting}=${port}: port ${port} ${why}; stop what holds it or choose another port (0 disables it)`,
    );
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

const DUPLICATE_SIGNAL_MS = 1000;

function shutdownSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      // A second signal while stopping means "now" (the exit hooks still stop an embedded Redis) —
      // unless it is the same Ctrl-C delivered twice: a terminal signals the whole process group, and
      // wrappers such as tsx relay it to us as well, within milliseconds.
      const first = Date.now();
      const force = (again: NodeJS.Signals) => {
        if (Date.now() - first < DUPLICATE_SIGNAL_MS) {
          process.once(again, force);
          return;
        }
        childLogger("services").warn({ signal: again }, "second signal: exiting without a clean stop");
        process.exit(1);
      };
      process.once("SIGINT", force);
      process.once("SIGTERM", force);
      resolve(signal);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
  });
}

export interface RunOptions {
  /** Ports the services will listen on, checked before anything starts: [port, its setting's name]. */
  ports?: Array<[number, string]>;
  /** Called once every service has started. */
  onReady?: () => void;
}

/**
 * Runs services against one Redis (REDIS_URL or an embedded one) until SIGINT/SIGTERM, then stops
 * them in reverse order and Redis last. If anything fails to start, what did start is stopped again
 * before the error propagates: nothing is left half-running.
 */
export async function runServices(
  config: Config,
  services: Service[],
  options: RunOptions = {},
): Promise<void> {
  const log = childLogger("services");
  for (const [port, setting] of options.ports ?? []) if (port !== 0) await assertPortFree(port, setting);

  const stop = new AbortController();
  const stopping = shutdownSignal().then((signal) => {
    stop.abort(new Error(`${signal} received`));
    return signal;
  });
  const redis = await resolveRedis(config);
  const running: Array<{ name: string; service: RunningService }> = [];
  const stopAll = async () => {
    for (const { name, service } of running.reverse()) {
      try {
        await service.stop();
        log.info({ service: name }, "stopped");
      } catch (error) {
        log.error({ service: name, err: error }, "failed to stop cleanly");
      }
    }
    await redis.stop();
  };

  let failure: Error | undefined;
  const failedWith = (reason: string) => (error: Error) => {
    failure ??= error;
    return reason;
  };
  const redisFailed = new Promise<string>((resolve) =>
    redis.server?.once("failed", (error) =>
      resolve(failedWith("redis-failed")(new UserFacingError(`Embedded Redis is down: ${error.message}`))),
    ),
  );
  const servicesFailed: Array<Promise<string>> = [];
  try {
    for (const service of services) {
      const context = { config, redisUrl: redis.url, log: childLogger(service.name), signal: stop.signal };
      const started = await service.start(context);
      running.push({ name: service.name, service: started });
      if (started.failed) servicesFailed.push(started.failed.then(failedWith(`${service.name}-failed`)));
      log.info({ service: service.name }, "started");
    }
  } catch (error) {
    await stopAll();
    // Told to stop while starting (e.g. during a model download): a clean stop, not a failure.
    if (stop.signal.aborted) {
      log.info({ reason: (error as Error).message }, "stopped during start-up");
      return;
    }
    throw error;
  }

  log.info({ redis: redactUrl(redis.url), services: services.map((s) => s.name) }, "ready");
  options.onReady?.();
  const reason = await Promise.race([stopping, redisFailed, ...servicesFailed]);
  log.info({ reason }, "stopping");
  await stopAll();
  if (failure) throw failure;
  log.info("stopped cleanly");
}
