// Prometheus metrics of one engine process (prom-client, on its own registry).
import type { Queue } from "bullmq";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { JobName } from "../../queue/jobs.js";
import type { JobOutcome, WorkerObserver } from "../../queue/worker.js";

const QUEUE_STATES = ["waiting", "prioritized", "delayed", "active", "waiting-children", "failed"] as const;

export interface EngineMetrics {
  registry: Registry;
  observer: WorkerObserver;
  /** Set once the model is loaded and the worker takes jobs. */
  setReady(ready: boolean): void;
}

/** `queue` is read on each scrape for the depth gauge (shared by every worker on the queue). */
export function engineMetrics(queue: Queue): EngineMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "engine_process_" });
  new Gauge({
    name: "engine_queue_depth",
    help: "Jobs in the shared queue by state (prioritized = waiting in priority order)",
    labelNames: ["state"],
    registers: [registry],
    async collect() {
      const counts = await queue.getJobCounts(...QUEUE_STATES);
      for (const state of QUEUE_STATES) this.set({ state }, counts[state] ?? 0);
    },
  });
  const durations = new Histogram({
    name: "engine_job_duration_seconds",
    help: "Time this engine spent on a job, by job type and outcome",
    labelNames: ["type", "outcome"],
    buckets: [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 2400],
    registers: [registry],
  });
  const steps = new Histogram({
    name: "engine_step_seconds",
    help: "Time per pipeline step (optimizer or sampling step), by job type and stage",
    labelNames: ["type", "stage"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  const active = new Gauge({
    name: "engine_jobs_active",
    help: "Jobs this engine is running (0 or 1: one job at a time per GPU)",
    registers: [registry],
  });
  const started = new Counter({
    name: "engine_jobs_started_total",
    help: "Jobs this engine started, by type",
    labelNames: ["type"],
    registers: [registry],
  });
  const ready = new Gauge({
    name: "engine_ready",
    help: "1 when the model is loaded and the worker takes jobs",
    registers: [registry],
  });
  return {
    registry,
    setReady: (value) => ready.set(value ? 1 : 0),
    observer: {
      jobStarted(name: JobName) {
        started.inc({ type: name });
      },
      running(count: number) {
        active.set(count);
      },
      jobFinished(name: JobName, outcome: JobOutcome, seconds: number) {
        durations.observe({ type: name, outcome }, seconds);
      },
      step(name: JobName, stage: string, seconds: number) {
        steps.observe({ type: name, stage }, seconds);
      },
    },
  };
}
