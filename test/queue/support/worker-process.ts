// An engine worker in its own process (worker-child.ts), started and ready to be SIGKILLed: the
// crash test and the chaos run both kill workers mid-job.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

const CHILD = fileURLToPath(new URL("./worker-child.ts", import.meta.url));

/** Starts worker-child.ts on `redisUrl` as `name` (env: STEPS, STEP_MS) and resolves once it is ready. */
export async function startWorkerProcess(
  redisUrl: string,
  name: string,
  env: Record<string, string> = {},
): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", CHILD], {
    env: { ...process.env, REDIS_URL: redisUrl, WORKER_NAME: name, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`worker ${name} exited with ${code} before it was ready`)));
    child.stdout?.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("ready")) resolve();
    });
  });
  return child;
}

/** SIGKILLs a worker process and resolves once it is gone. */
export async function killWorkerProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await gone;
}
