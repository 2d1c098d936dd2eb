// An engine worker in its own process, for the crash tests: the test SIGKILLs it mid-job.
// Each pipeline start/finish is recorded in the Redis list `test:runs` as "<event> <jobId> <worker>".
import { Redis } from "ioredis";
import { BlobStore } from "../../../src/queue/blobs.js";
import { startWorker } from "../../../src/queue/worker.js";
import { lightweightPipelines } from "./pipelines.js";
import { FAST, LIMITS } from "./setup.js";

const url = process.env.REDIS_URL as string;
const name = process.env.WORKER_NAME ?? "child";
const redis = new Redis(url, { maxRetriesPerRequest: null });
redis.on("error", () => {}); // reconnects by itself
const worker = await startWorker({
  redisUrl: url,
  blobs: new BlobStore(redis, LIMITS),
  maxActivePerUser: 2,
  ...FAST,
  name,
  pipelines: lightweightPipelines({
    steps: Number(process.env.STEPS ?? 3),
    stepMs: Number(process.env.STEP_MS ?? 10),
    onRun: async (event, _name, jobId) => void (await redis.rpush("test:runs", `${event} ${jobId} ${name}`)),
  }),
});
process.once("SIGTERM", async () => {
  await worker.close(0);
  process.exit(0);
});
process.stdout.write("ready\n");
